"""What a reviewer sends with a decision, checked the same way for the page's forms and the JSON API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pipeline.review.desk import Desk
from schemas.decisions import DECISION_KINDS, DecisionKind

MAX_NOTE: Final = 4000


class InputError(ValueError):
    """A field of a decision that cannot be used (400), with a message naming it."""


@dataclass(frozen=True)
class DecisionInput:
    decision: DecisionKind
    reason: str | None
    note: str | None


def decision_kind(value: object) -> DecisionKind:
    for kind in DECISION_KINDS:
        if value == kind:
            return kind
    raise InputError(f"decision: expected one of {', '.join(DECISION_KINDS)}")


def decision_reason(desk: Desk, value: object) -> str | None:
    """One of the desk's configured reasons, or none (free text belongs in the note)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in desk.decision_reasons:
        known = ", ".join(desk.decision_reasons) or "(none configured)"
        raise InputError(f"reason: expected one of {known}; say anything else in the note")
    return value


def note_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError("note: expected text")
    text = value.strip()
    if len(text) > MAX_NOTE:
        raise InputError(f"note: longer than {MAX_NOTE} characters")
    return text or None


def read_decision(desk: Desk, decision: object, reason: object, note: object) -> DecisionInput:
    return DecisionInput(decision=decision_kind(decision), reason=decision_reason(desk, reason), note=note_text(note))

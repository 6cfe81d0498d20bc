"""Query strings and JSON bodies to :class:`ItemFilter`, and back (links keep the reviewer's view).

The same names serve the pages and the JSON API::

    state=open|escalated|decided|any  reason=flagged  side=input|output  category=violence
    score_min=0.5  score_max=1  model=gpt-4o  meta=tenant=acme (repeatable)
    min_age=10m  max_age=2d  (seconds, or with s/m/h/d)   sort=oldest|newest|score

A value that cannot be read is a :class:`FilterError` (400), never silently dropped: a bulk decision over a
filter that was not the one meant would decide the wrong items.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Final, Literal, TypeVar
from urllib.parse import urlencode

import msgspec
from multidict import MultiMapping

from pipeline.review.desk import ItemFilter, ItemState, SortOrder
from schemas.topics import REASON_KINDS, ReasonKind, Side

StateChoice = ItemState | Literal["any"]
STATES: Final[tuple[StateChoice, ...]] = ("open", "escalated", "decided", "any")
SORTS: Final[tuple[SortOrder, ...]] = ("oldest", "newest", "score")
SIDES: Final[tuple[Side, ...]] = ("input", "output")
C = TypeVar("C", bound=str)
#: The query names a filter uses (everything else in a query string is left to the handler).
FILTER_NAMES: Final = frozenset(
    {"state", "reason", "side", "category", "score_min", "score_max", "model", "meta", "min_age", "max_age", "sort"}
)
_MAX_TEXT: Final = 200
_AGE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class FilterError(ValueError):
    """A filter value that cannot be read; the message names the parameter and what it accepts."""


def parse_age(name: str, text: str) -> float:
    match = _AGE.match(text)
    if match is None:
        raise FilterError(f"{name}={text!r}: expected seconds, or a number with s, m, h or d (e.g. 10m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _score(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FilterError(f"{name}={text!r}: expected a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise FilterError(f"{name}={text!r}: expected a number from 0 to 1")
    return value


def _choice(name: str, text: str, choices: tuple[C, ...]) -> C:
    for choice in choices:
        if text == choice:
            return choice
    raise FilterError(f"{name}={text!r}: expected one of {', '.join(choices)}")


def _text(name: str, text: str) -> str:
    if len(text) > _MAX_TEXT:
        raise FilterError(f"{name}: longer than {_MAX_TEXT} characters")
    return text


def _meta(text: str) -> tuple[str, str]:
    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise FilterError(f"meta={text!r}: expected FIELD=VALUE, e.g. tenant=acme")
    return _text("meta", field.strip()), _text("meta", value.strip())


def parse_filter(query: MultiMapping[str]) -> ItemFilter:
    """An :class:`ItemFilter` from a query string or a form; empty values mean "any"."""

    def one(name: str) -> str | None:
        value = query.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    state = _choice("state", one("state") or "open", STATES)
    reason, side, sort = one("reason"), one("side"), one("sort") or "oldest"
    score_min, score_max = one("score_min"), one("score_max")
    min_age, max_age = one("min_age"), one("max_age")
    category, model = one("category"), one("model")
    where = ItemFilter(
        state=None if state == "any" else state,
        reason=_choice("reason", reason, REASON_KINDS) if reason else None,
        side=_choice("side", side, SIDES) if side else None,
        category=_text("category", category) if category else None,
        score_min=_score("score_min", score_min) if score_min else None,
        score_max=_score("score_max", score_max) if score_max else None,
        model=_text("model", model) if model else None,
        metadata=tuple(_meta(text) for text in query.getall("meta", []) if isinstance(text, str) and text.strip()),
        min_age_s=parse_age("min_age", min_age) if min_age else None,
        max_age_s=parse_age("max_age", max_age) if max_age else None,
        sort=_choice("sort", sort, SORTS),
    )
    if where.score_min is not None and where.score_max is not None and where.score_min > where.score_max:
        raise FilterError(f"score_min={where.score_min:g} is above score_max={where.score_max:g}")
    return where


def _age_text(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}"


def filter_pairs(where: ItemFilter) -> list[tuple[str, str]]:
    """The query pairs that :func:`parse_filter` reads back as ``where`` (defaults left out)."""
    pairs: list[tuple[str, str]] = []
    if where.state != "open":
        pairs.append(("state", where.state or "any"))
    for name in ("reason", "side", "category", "model"):
        value = getattr(where, name)
        if value is not None:
            pairs.append((name, value))
    for name in ("score_min", "score_max"):
        value = getattr(where, name)
        if value is not None:
            pairs.append((name, f"{value:g}"))
    pairs.extend(("meta", f"{field}={value}") for field, value in where.metadata)
    if where.min_age_s is not None:
        pairs.append(("min_age", _age_text(where.min_age_s)))
    if where.max_age_s is not None:
        pairs.append(("max_age", _age_text(where.max_age_s)))
    if where.sort != "oldest":
        pairs.append(("sort", where.sort))
    return pairs


def filter_query(where: ItemFilter) -> str:
    return urlencode(filter_pairs(where))


def describe_filter(where: ItemFilter) -> str:
    """In words, for a confirmation: ``state open, reason flagged, meta tenant=acme``."""
    shown = [(name, value) for name, value in filter_pairs(where) if name != "sort"]
    if where.state == "open":
        shown.insert(0, ("state", "open"))
    return ", ".join(f"{name} {value}" for name, value in shown)


# --------------------------------------------------------------------------------------------------
# The JSON form (the bulk API's "filter")
# --------------------------------------------------------------------------------------------------

Score = Annotated[float, msgspec.Meta(ge=0, le=1)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_TEXT)]
Age = Annotated[float, msgspec.Meta(ge=0)]


class FilterBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``{"state": "open", "reason": "flagged", "metadata": {"tenant": "acme"}, "min_age_s": 600, …}``."""

    state: ItemState | None = "open"
    reason: ReasonKind | None = None
    side: Side | None = None
    category: Text | None = None
    score_min: Score | None = None
    score_max: Score | None = None
    model: Text | None = None
    metadata: dict[Text, Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]] = msgspec.field(default_factory=dict)
    min_age_s: Age | None = None
    max_age_s: Age | None = None
    sort: SortOrder = "oldest"


def filter_from_body(body: FilterBody) -> ItemFilter:
    if body.score_min is not None and body.score_max is not None and body.score_min > body.score_max:
        raise FilterError(f"score_min={body.score_min:g} is above score_max={body.score_max:g}")
    return ItemFilter(
        state=body.state,
        reason=body.reason,
        side=body.side,
        category=body.category,
        score_min=body.score_min,
        score_max=body.score_max,
        model=body.model,
        metadata=tuple(sorted(body.metadata.items())),
        min_age_s=body.min_age_s,
        max_age_s=body.max_age_s,
        sort=body.sort,
    )


def pinned(where: ItemFilter, as_of_ms: int, now_ms: int) -> ItemFilter:
    """``where`` limited to items that had arrived by ``as_of_ms``: a confirmed bulk decision covers what was
    counted, not what arrived while the reviewer read the confirmation."""
    at_least = max(0.0, (now_ms - as_of_ms) / 1000)
    if where.min_age_s is not None and where.min_age_s >= at_least:
        return where
    return dataclasses.replace(where, min_age_s=at_least)

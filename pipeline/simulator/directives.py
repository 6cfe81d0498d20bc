"""Per-request instructions to the simulator: which faults to inject and how to shape the answer.

One grammar, three places (a pipeline job cannot set HTTP headers, so the prompt text is one of them):

- the ``x-sim-fault`` request header: ``x-sim-fault: 500*2, moderation_error_output``
- the request's ``metadata["sim_fault"]``: the same text
- inside any message text: ``[[sim: 500*2, flag_output=violence]]`` (removed before the text is scored or
  used to generate, so the directive itself never affects moderation)

A directive is a comma-separated list of items:

- ``FAULT``: inject the fault on every attempt; ``FAULT*N``: only on the first N attempts of this job
  (counted per job id, see :mod:`pipeline.simulator.faults`); ``FAULT@P``: with probability P per attempt.
- ``latency=MS``: answer after a fixed MS milliseconds instead of the server's latency distribution.
- ``flag_input[=CATEGORY]`` / ``flag_output[=CATEGORY]``: add that category's marker word to the scored
  input, or to the generated output (so output moderation flags it honestly). Default ``violence``.
- ``finish_reason=VALUE``, ``service_tier=VALUE``, ``annotation=TYPE``: answer with values the API may add
  tomorrow (or known ones): every choice finishes with ``VALUE`` (content kept); the answer (and every chunk)
  names ``service_tier`` ``VALUE``; the first choice's message carries one annotation of ``TYPE`` (JSON
  answers only: streamed deltas carry no annotations). A value is letters, digits, ``_``, ``.`` or ``-``.

The same fault items (``500@0.01``, ``429*1``) configure server-wide faults (``--faults``).
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

import msgspec

from schemas.moderations import OMNI_CATEGORIES

HEADER: Final = "x-sim-fault"
METADATA_KEY: Final = "sim_fault"
PROMPT_PATTERN: Final = re.compile(r"\[\[sim:([^\]]*)\]\]")
PROMPT_OPENER: Final = "[[sim:"

#: Faults that replace the answer; when several apply to one attempt, the first listed wins.
FailureFault = Literal[
    "429",
    "insufficient_quota",
    "500",
    "502",
    "503",
    "context_length_exceeded",
    "hang",
    "reset",
    "malformed_json",
    "truncated",
    "stream_error",
]
#: Faults that change the shape of a successful answer; any number of them combine.
ShapeFault = Literal[
    "moderation_error_input",
    "moderation_error_output",
    "moderation_missing",
    "moderation_unknown_type",
    "moderation_before_content",
    "moderation_again_clean",
    "moderation_again_error",
    "moderation_results_short",
]
Fault = FailureFault | ShapeFault

FAILURE_FAULTS: Final[frozenset[str]] = frozenset(get_args(FailureFault))
SHAPE_FAULTS: Final[frozenset[str]] = frozenset(get_args(ShapeFault))
ALL_FAULTS: Final[tuple[str, ...]] = (*get_args(FailureFault), *get_args(ShapeFault))
#: Other spellings accepted for a fault name.
FAULT_ALIASES: Final[dict[str, str]] = {"timeout": "hang", "malformed": "malformed_json"}
DEFAULT_FLAG_CATEGORY: Final = "violence"


class DirectiveError(ValueError):
    """A directive that does not parse; the simulator answers 400 so a typo is never silently ignored."""


class FaultRule(msgspec.Struct, frozen=True, kw_only=True):
    """Inject ``fault``: always, on the first ``times`` attempts of a job, and/or with probability ``rate``."""

    fault: Fault
    times: int | None = None
    rate: float | None = None

    def __str__(self) -> str:
        times = "" if self.times is None else f"*{self.times}"
        rate = "" if self.rate is None else f"@{self.rate:g}"
        return f"{self.fault}{times}{rate}"


class Directives(msgspec.Struct, frozen=True, kw_only=True):
    rules: tuple[FaultRule, ...] = ()
    latency_ms: float | None = None
    flag_input: str | None = None
    flag_output: str | None = None
    finish_reason: str | None = None
    service_tier: str | None = None
    annotation: str | None = None

    def merged_with(self, later: Directives) -> Directives:
        """Rules of both, this one's first; for options, this one's value wins when both set one."""
        if later is NO_DIRECTIVES:
            return self
        if self is NO_DIRECTIVES:
            return later
        return Directives(
            rules=self.rules + later.rules,
            latency_ms=self.latency_ms if self.latency_ms is not None else later.latency_ms,
            flag_input=self.flag_input or later.flag_input,
            flag_output=self.flag_output or later.flag_output,
            finish_reason=self.finish_reason or later.finish_reason,
            service_tier=self.service_tier or later.service_tier,
            annotation=self.annotation or later.annotation,
        )


NO_DIRECTIVES: Final = Directives()
_RULE = re.compile(r"(?P<name>[a-z0-9_]+)(?:\*(?P<times>\d+))?(?:@(?P<rate>[0-9.]+))?")
_VALUE = re.compile(r"[A-Za-z0-9_.-]+")
#: Options that put a value of the directive's choosing into the answer (see the module doc).
VALUE_OPTIONS: Final = ("finish_reason", "service_tier", "annotation")


def parse_rule(item: str) -> FaultRule:
    match = _RULE.fullmatch(item.strip().lower())
    if match is None:
        raise DirectiveError(f"simulator directive {item!r}: expected FAULT, FAULT*N or FAULT@P")
    name = FAULT_ALIASES.get(match["name"], match["name"])
    if name not in FAILURE_FAULTS and name not in SHAPE_FAULTS:
        raise DirectiveError(f"unknown simulator fault {name!r}; known: {', '.join(ALL_FAULTS)}")
    rate = None if match["rate"] is None else float(match["rate"])
    if rate is not None and not 0 <= rate <= 1:
        raise DirectiveError(f"simulator directive {item!r}: rate must be within [0, 1]")
    times = None if match["times"] is None else int(match["times"])
    return msgspec.convert({"fault": name, "times": times, "rate": rate}, FaultRule)


def parse_rules(text: str) -> tuple[FaultRule, ...]:
    """Fault items only (the server's ``--faults``)."""
    return tuple(parse_rule(item) for item in text.split(",") if item.strip())


def _category(item: str, value: str) -> str:
    category = value.strip() or DEFAULT_FLAG_CATEGORY
    if category not in OMNI_CATEGORIES:
        raise DirectiveError(f"simulator directive {item!r}: unknown moderation category {category!r}")
    return category


def _value(item: str, value: str) -> str:
    value = value.strip()
    if not _VALUE.fullmatch(value):
        raise DirectiveError(f"simulator directive {item!r}: expected a value of letters, digits, '_', '.' or '-'")
    return value


def parse_directives(text: str) -> Directives:
    rules: list[FaultRule] = []
    latency_ms: float | None = None
    flag_input: str | None = None
    flag_output: str | None = None
    values: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, has_value, value = item.partition("=")
        key = key.strip().lower()
        if key == "latency" and has_value:
            try:
                latency_ms = float(value)
            except ValueError:
                raise DirectiveError(f"simulator directive {item!r}: latency is a number of ms") from None
            if latency_ms < 0:
                raise DirectiveError(f"simulator directive {item!r}: latency must not be negative")
        elif key == "flag_input":
            flag_input = _category(item, value)
        elif key == "flag_output":
            flag_output = _category(item, value)
        elif key in VALUE_OPTIONS and has_value:
            values[key] = _value(item, value)
        else:
            rules.append(parse_rule(item))
    return Directives(
        rules=tuple(rules),
        latency_ms=latency_ms,
        flag_input=flag_input,
        flag_output=flag_output,
        finish_reason=values.get("finish_reason"),
        service_tier=values.get("service_tier"),
        annotation=values.get("annotation"),
    )


def extract_from_text(text: str) -> tuple[str, Directives]:
    """The text without its ``[[sim:…]]`` tokens, and the directives they held (merged in order)."""
    if PROMPT_OPENER not in text:
        return text, NO_DIRECTIVES
    found = NO_DIRECTIVES
    for match in PROMPT_PATTERN.finditer(text):
        found = found.merged_with(parse_directives(match[1]))
    return PROMPT_PATTERN.sub("", text), found

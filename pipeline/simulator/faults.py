"""Deciding which faults hit one attempt.

Rules come from the request's directives first, then the server's ``--faults``. A rule with ``*N`` applies
to attempts 1..N of a *job*: attempts are counted per job id (``X-Client-Request-Id``, else
``metadata["job_id"]``, else a hash of the request body, which a client's retry repeats byte for byte), so a
retried job sees the fault N times and then succeeds. A rule with ``@P`` applies with probability P, drawn
from the server's seeded generator. Of the failure faults that apply, the first listed wins; shape faults
all apply.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from pipeline.simulator.directives import FAILURE_FAULTS, FailureFault, FaultRule, ShapeFault


@dataclass(frozen=True, slots=True)
class FaultPlan:
    failure: FailureFault | None = None
    shape: frozenset[ShapeFault] = field(default_factory=frozenset)

    @property
    def names(self) -> list[str]:
        return ([self.failure] if self.failure else []) + sorted(self.shape)


NO_FAULTS = FaultPlan()


class FaultInjector:
    """Holds the server's rules, the attempt counts per job and the generator behind ``@P`` rules."""

    def __init__(self, server_rules: Iterable[FaultRule], rng: random.Random) -> None:
        self._server_rules = tuple(server_rules)
        self._rng = rng
        self._attempts: dict[str, int] = {}

    def reset(self) -> None:
        self._attempts.clear()

    def plan(self, request_rules: tuple[FaultRule, ...], attempt_key: Callable[[], str]) -> FaultPlan:
        """The faults for this attempt; ``attempt_key`` is called only when a ``*N`` rule needs it."""
        rules = request_rules + self._server_rules if request_rules else self._server_rules
        if not rules:
            return NO_FAULTS
        attempt = 0
        if any(rule.times is not None for rule in rules):
            key = attempt_key()
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
        failure: FailureFault | None = None
        shape: set[ShapeFault] = set()
        for rule in rules:
            if rule.times is not None and attempt > rule.times:
                continue
            if rule.rate is not None and self._rng.random() >= rule.rate:
                continue
            if rule.fault in FAILURE_FAULTS:
                failure = failure or cast(FailureFault, rule.fault)
            else:
                shape.add(cast(ShapeFault, rule.fault))
        return FaultPlan(failure, frozenset(shape))

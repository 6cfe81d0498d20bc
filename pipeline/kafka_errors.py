"""What a Kafka error means for the worker: wait and try again, refit the record, or stop.

aiokafka marks each error class ``retriable``, but not in the way a long-running consumer needs: a produce
that timed out while a broker was away (``KafkaTimeoutError``), a broker that is not available yet, and the
commit refusals that only mean "the group rebalanced" are marked not retriable, while they pass by themselves.
So the verdict is: the record-size refusals are ``TOO_LARGE`` (the sink refits the record and routes it);
what is retriable, or one of :data:`PASSING`, is ``RETRY`` (with backoff); everything else — authorization,
authentication, an unsupported version, an invalid topic, a coordinator that died — is ``FATAL``: retrying
it forever would leave a worker that looks alive and does nothing, so the worker stops with one clear line
and a non-zero exit instead.
"""

from __future__ import annotations

import enum
from typing import Final

from aiokafka import errors

#: Errors aiokafka marks not retriable that pass by themselves.
PASSING: Final[tuple[type[errors.KafkaError], ...]] = (
    errors.KafkaTimeoutError,
    errors.BrokerNotAvailableError,
    errors.ReplicaNotAvailableError,
    errors.CommitFailedError,
    errors.RebalanceInProgressError,
    errors.IllegalGenerationError,
    errors.UnknownMemberIdError,
)
TOO_LARGE_ERRORS: Final[tuple[type[errors.KafkaError], ...]] = (
    errors.MessageSizeTooLargeError,
    errors.RecordListTooLargeError,
    errors.RecordTooLargeError,
)


class Verdict(enum.Enum):
    RETRY = "retry"
    TOO_LARGE = "too_large"
    FATAL = "fatal"


def verdict(exc: errors.KafkaError) -> Verdict:
    if isinstance(exc, TOO_LARGE_ERRORS):
        return Verdict.TOO_LARGE
    if exc.retriable or isinstance(exc, PASSING):
        return Verdict.RETRY
    return Verdict.FATAL


class FatalKafkaError(Exception):
    """A Kafka error the worker cannot get past by waiting: it stops (exit code 1)."""

    def __init__(self, where: str, error: errors.KafkaError) -> None:
        super().__init__(f"{where}: {type(error).__name__}: {error}")
        self.where = where
        self.error = error

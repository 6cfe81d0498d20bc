"""Structured JSON logs, one object per line, on stderr.

Fields beyond the message come from ``extra=``; only the names in ``FIELDS`` are written, so a stray
object (a request, a job with its prompt) can never leak into a log line by accident.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Final

import orjson

FIELDS: Final = (
    "job_id",
    "topic",
    "partition",
    "offset",
    "route",
    "reason",
    "attempts",
    "latency_ms",
    "status",
    "error",
    "partitions",
    "count",
    "detail",
    "prompt",
)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the ``pipeline`` loggers; third-party libraries only at WARNING and up.

    A line carries none of the caller's file, thread or process, so the logging module is told not to look
    them up for every record (the switches of the logging HOWTO's "Optimization" section).
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(level)

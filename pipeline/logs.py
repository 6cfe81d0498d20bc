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
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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
    """JSON lines on stderr for the ``pipeline`` loggers; third-party libraries only at WARNING and up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(level)

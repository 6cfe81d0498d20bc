"""The time every pacing and retry part is given rather than reads: a clock and a sleep.

Injected (``time.monotonic`` and ``asyncio.sleep`` in production), so tests run on virtual time and a
retry's waits can be recorded instead of slept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

"""Signed-in browsers and the sign-in rate limit: in-memory state of one console process.

Sessions live in memory only: a restart signs everyone out (they sign in again with their token), and
nothing about a session is written anywhere. A session's id is 256 random bits, new at every sign-in
(so a session id planted before sign-in is worthless), and ends at a fixed time after it.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: More sessions than this and the oldest are dropped (sign-ins are rate-limited and need a valid token).
MAX_SESSIONS: Final = 10_000
#: More tracked client addresses than this and the idle ones are forgotten.
MAX_TRACKED_ADDRESSES: Final = 10_000


@dataclass
class Session:
    """A signed-in browser: who, its CSRF token, until when (epoch seconds), messages for its next page."""

    id: str
    reviewer: str
    csrf_token: str
    expires_at: float
    flashes: list[str] = field(default_factory=list)


class SessionStore:
    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, reviewer: str) -> Session:
        self._purge()
        session = Session(
            id=secrets.token_urlsafe(32),
            reviewer=reviewer,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self._ttl_s,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _purge(self) -> None:
        now = self._clock()
        for session_id in [key for key, session in self._sessions.items() if session.expires_at <= now]:
            del self._sessions[session_id]


class SignInLimiter:
    """At most ``attempts`` sign-ins per client address in any ``window_s`` (a sliding window)."""

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float]) -> None:
        self._attempts = attempts
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def attempt(self, address: str) -> int | None:
        """Count an attempt; ``None`` when allowed, else the whole seconds until one would be."""
        now = self._clock()
        times = self._seen.setdefault(address, deque())
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if len(times) >= self._attempts:
            return max(1, math.ceil(times[0] + self._window_s - now))
        times.append(now)
        if len(self._seen) > MAX_TRACKED_ADDRESSES:
            self._forget_idle(now)
        return None

    def _forget_idle(self, now: float) -> None:
        for address in [a for a, times in self._seen.items() if not times or times[-1] <= now - self._window_s]:
            del self._seen[address]

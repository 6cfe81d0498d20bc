"""One limit of one model: the provider's bucket as its answers describe it, and our :class:`Lane` under it.

What the provider states on every answer (``x-ratelimit-{limit,remaining,reset}-*``, read by
:mod:`~pipeline.client.ratelimit`): the ``limit`` per minute, so a refill rate ``r = limit / 60``, and the
``remaining`` level of the bucket that enforces it with the ``reset`` time until that bucket is full again.
That bucket's capacity is therefore ``remaining + reset x r``: the whole minute's limit when the provider
enforces per minute, a second's worth when it enforces "60,000 requests/minute as 1,000 requests/second"
(OpenAI's words). Its *window* is that capacity over ``r``; a lane learns it from every answer (and halves
it when a 429 comes while the headers still showed room: then they do not describe the bucket enforced).

How a lane paces, and why:

- **Smooth, bursts no larger than the window.** A lane is a :class:`TokenBucket` refilled at
  ``share x (1 - MARGIN) x r`` holding at most what the provider's window admits at that rate, so a
  per-second window never receives a minute of requests at once.
- **A gentle start.** Until the window is known a lane assumes a short one (:data:`START_WINDOW_S`); then its
  burst starts at an eighth of the window and doubles per round trip (an answer to a call sent after the
  last change) up to the window.
- **Spending what the provider banked.** Once per round trip (an answer to a call sent once the previous
  raise was spent), a lane raises its level to its part of what the provider reports remaining beyond a
  reserve, less the calls it sent since that call (the answer cannot count them yet): so a per-minute
  window's full bucket is used within a few round trips, and alone a lane also uses the refill its margin
  leaves over. The reserve is half the provider's bucket alone, all of it with others, at most
  :data:`RESERVE_S` of the rate.
- **Several workers on one key.** Between two answers the provider's ``remaining`` falls by what *every*
  client of the key took, less the refill. When the bucket cannot have been full in between the lane
  measures that total (and, knowing its own takes, the others' part) and scales its share by target / total:
  each worker scales by the same factor, so together they converge on the target however many they are.
  Every answer showing the bucket low cuts a little (a busier worker sees more of them, so shares even out)
  before any 429. While the bucket shows room the share grows back: additively with others, at once alone.
  A lane is alone once its measures, over :data:`ALONE_EVIDENCE_S` at least, put the others' use under
  :data:`ALONE_SHARE` of the rate (room seen while it uses its whole pace bounds what the others can use).
  Each answer lowers the lane to its share of what the provider reports remaining.
- **429s.** One halves the share, once per round (the 429s of calls sent before the cut do not cut again).

Everything is computed on the caller's clock readings, so tests are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

SECONDS_PER_MINUTE: Final = 60.0
#: Paced this far below the limit (timing noise, estimates the provider does not share).
MARGIN: Final = 0.01
#: The window assumed until the provider's answers tell it.
START_WINDOW_S: Final = 0.05
#: Once the window is known, the burst starts at this part of it and doubles per round trip: a few round
#: trips to a per-minute window's full bucket, and workers meeting on one key never take it all at once.
FIRST_BURST: Final = 1 / 8
#: The reserve a lane leaves in the provider's bucket is at most this many seconds of the rate.
RESERVE_S: Final = 0.25
#: The key's total use is measured over at least this long and this many units (or a span that long at the
#: rate): the provider's ``remaining`` is a whole number, so a short measure is mostly rounding.
MEASURE_SPAN_S: Final = 0.1
MEASURE_UNITS: Final = 10.0
#: A measure below the target moves the share by its full ratio once it spans this long (less if shorter).
SHARE_TAU_S: Final = 0.5
#: With others on the key, while the provider's bucket shows room, the share grows this much per second.
SHARE_GROWTH_PER_S: Final = 0.1
#: A 429 (once per round), or a measure over the target (at most), cuts the share to this much of it.
SHARE_CUT: Final = 0.5
#: An answer whose remaining is below this part of the (alone) reserve cuts the share by :data:`MARK_CUT`.
MARK_LEVEL: Final = 0.5
MARK_CUT: Final = 0.05
#: Others using less than this share of the rate, averaged over measures spanning this long at least, count
#: as no one.
ALONE_SHARE: Final = 0.05
ALONE_EVIDENCE_S: Final = 2.0
#: The smallest share: enough that a starved worker still sends, and so still hears the provider.
MIN_SHARE: Final = 0.05


class TokenBucket:
    """A bucket of at most ``capacity`` units, refilled continuously at ``rate_per_s``.

    The level may go negative: a take larger than the capacity waits for a full bucket and leaves a debt,
    and a usage correction may charge more than was reserved. Callers wait while the level is short.
    """

    def __init__(self, capacity: float, rate_per_s: float, now: float, *, level: float | None = None) -> None:
        if capacity <= 0 or rate_per_s <= 0:
            raise ValueError("capacity and rate must be positive")
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self._level = capacity if level is None else min(level, capacity)
        self._updated = now

    def level(self, now: float) -> float:
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate_per_s)
            self._updated = now
        return self._level

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available; 0 when it is now."""
        short = min(amount, self.capacity) - self.level(now)
        return 0.0 if short <= 0 else short / self.rate_per_s

    def take(self, amount: float, now: float) -> None:
        self._level = self.level(now) - amount

    def give_back(self, amount: float, now: float) -> None:
        self._level = min(self.capacity, self.level(now) + amount)

    def lower_to(self, level: float, now: float) -> None:
        self._level = min(self.level(now), level)

    def raise_to(self, level: float, now: float) -> None:
        self._level = min(self.capacity, max(self.level(now), level))

    def reshape(self, capacity: float, rate_per_s: float, now: float) -> None:
        self.level(now)
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self._level = min(self._level, capacity)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """One limit as an answer states it: per minute, what is left, and seconds until its bucket is full."""

    limit: float | None
    remaining: float
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a lane knew when a call took from it: its generation, and how much it had taken by then."""

    generation: int
    taken: float


@dataclass(slots=True)
class _Reading:
    at: float
    remaining: float


class Lane:
    """One limit (requests or tokens) of one model: the provider's bucket as learnt, and our pace under it.

    See the module docstring for the rules. ``generation`` counts changes of pace (a 429's cut, a round of
    burst growth, a raise): an answer to a call sent under the current generation is fresh evidence, and
    the :class:`Ticket` of a call says whether it was sent after a raise's credit was spent.
    """

    def __init__(self, now: float, *, configured: float | None, reported: RateLimitHeaders | None) -> None:
        self.configured = configured
        self.reported = None if reported is None else reported.limit
        self.window_s = START_WINDOW_S
        self.share = 1.0
        self.generation = 0
        self._window_ceiling_s = SECONDS_PER_MINUTE
        self._burst_window_s = START_WINDOW_S
        self._reading: _Reading | None = None
        self._consumed = 0.0
        self._span = 0.0
        self._taken = 0.0
        self._taken_total = 0.0
        self._raised_until = 0.0
        self._own = 0.0
        self._others: float | None = None
        self._own_rate = 0.0
        self._evidence_s = 0.0
        self._room_own = 0.0
        self._room_span = 0.0
        self.bucket = TokenBucket(self._burst(), self._pace(), now)
        if reported is not None:
            self._learn_window(reported)
            self.bucket.reshape(self._burst(), self._pace(), now)
            self.bucket.lower_to(reported.remaining, now)
            self._reading = _Reading(now, reported.remaining)

    @property
    def per_minute(self) -> float:
        """The limit paced under: the provider's, or the operator's when that is lower."""
        limits = [limit for limit in (self.configured, self.reported) if limit is not None]
        return min(limits)

    @property
    def _operator_capped(self) -> bool:
        """A configured limit below the provider's: the rest of the provider's bucket is someone else's."""
        return self.configured is not None and self.reported is not None and self.configured < self.reported

    def _provider_rate(self) -> float:
        return (self.reported if self.reported is not None else self.per_minute) / SECONDS_PER_MINUTE

    def _pace(self) -> float:
        own = math.inf if self.configured is None else self.configured / SECONDS_PER_MINUTE
        return min(self.share * self._provider_rate(), own) * (1 - MARGIN)

    def _burst(self) -> float:
        return self._pace() * min(self._burst_window_s, self.window_s)

    def _reshape(self, now: float) -> None:
        self.bucket.reshape(self._burst(), self._pace(), now)

    def _learn_window(self, reported: RateLimitHeaders) -> None:
        rate = self._provider_rate()
        # Without a reset, the bucket holds at least what it reports remaining.
        capacity = reported.remaining + (reported.reset_s or 0.0) * rate
        self.window_s = min(self._window_ceiling_s, max(self.window_s, capacity / rate))
        self._burst_window_s = max(self._burst_window_s, self.window_s * FIRST_BURST)

    def take(self, amount: float, now: float) -> None:
        """Charge ``amount`` (negative: give it back) to the bucket and to what this lane is known to use."""
        if amount >= 0:
            self.bucket.take(amount, now)
        else:
            self.bucket.give_back(-amount, now)
        self._taken += amount
        self._taken_total += amount

    def ticket(self) -> Ticket:
        return Ticket(self.generation, self._taken_total)

    @property
    def alone(self) -> bool:
        """Whether the measures, over :data:`ALONE_EVIDENCE_S` at least, say no one else uses this limit of
        the key. A short window rarely lets the key's use be measured (its bucket is mostly full), and a few
        measures are mostly rounding: a worker that took a peer's silence for solitude would crowd it out."""
        return (
            self._others is not None
            and self._evidence_s >= ALONE_EVIDENCE_S
            and self._others < ALONE_SHARE * self._provider_rate()
        )

    def _fraction(self) -> float:
        """This lane's part of the key's measured use (all of it until measured): its part of a bank."""
        if self._others is None:
            return 1.0
        return min(1.0, max(0.0, self._own_rate) / max(1e-9, self._own_rate + max(0.0, self._others)))

    def _reserve(self, *, alone: bool) -> float:
        """What a lane leaves in the provider's bucket: half of it alone, all of it with others (at most
        :data:`RESERVE_S` of the rate: a per-minute window's bank beyond that is spent)."""
        rate = self._provider_rate()
        return min(RESERVE_S * rate, self.window_s * rate / (2 if alone else 1))

    def on_reading(self, reported: RateLimitHeaders, ticket: Ticket, now: float) -> None:
        """An answer's headers: learn the limit and window, measure the key's total use, sync the level."""
        self._follow(reported, ticket, now, refused=False)

    def _follow(self, reported: RateLimitHeaders, ticket: Ticket, now: float, *, refused: bool) -> None:
        fresh = ticket.generation == self.generation and not refused
        if reported.limit is not None:
            self.reported = reported.limit
        self._learn_window(reported)
        self._measure(reported.remaining, now)
        if not refused and reported.remaining < MARK_LEVEL * self._reserve(alone=True):
            # The provider's bucket runs low: cut a little on every such answer (a busier client gets more
            # of them, so shares converge), before any 429.
            self.share = max(MIN_SHARE, self.share * (1 - MARK_CUT))
        grew = fresh and self._burst_window_s < self.window_s
        if grew:
            self._burst_window_s = min(self.window_s, 2 * self._burst_window_s)
        self._reshape(now)
        if fresh and ticket.taken >= self._raised_until and not self._operator_capped:
            # Only an answer to a call sent once an earlier raise was spent counts all that raise let go, and
            # none of the calls sent after it may have reached the provider yet.
            unseen = self._taken_total - ticket.taken
            reserve = self._reserve(alone=self.alone)
            level = self.bucket.level(now)
            self.bucket.raise_to(self._fraction() * (reported.remaining - reserve) - unseen, now)
            if self.bucket.level(now) > level:
                self._raised_until = self._taken_total + max(0.0, self.bucket.level(now))
                grew = True
        if grew:
            self.generation += 1
        self.bucket.lower_to(self.share * reported.remaining, now)

    def _measure(self, remaining: float, now: float) -> None:
        """What every client of the key used since the last answer, when the provider's bucket cannot have
        been full in between (refill lost at the cap would hide use). Else, if it shows room, the share grows
        back, and while this lane uses its whole pace that room bounds what the others can be using."""
        last, self._reading = self._reading, _Reading(now, remaining)
        taken, self._taken = self._taken, 0.0
        if last is None:
            return
        rate = self._provider_rate()
        capacity = self.window_s * rate
        elapsed = max(0.0, now - last.at)
        if last.remaining + rate * elapsed <= capacity - 1:
            self._consumed += last.remaining + rate * elapsed - remaining
            self._own += taken
            self._span += elapsed
            if self._span >= MEASURE_SPAN_S and max(self._consumed, self._span * rate) >= MEASURE_UNITS:
                own, others = self._own / self._span, (self._consumed - self._own) / self._span
                self._note(own, others, self._span)
                self._rescale(own, others, rate, banked=remaining >= self._reserve(alone=True))
                self._consumed = self._own = self._span = 0.0
        elif remaining >= capacity / 2:
            self._room_own += taken
            self._room_span += elapsed
            if self._room_span >= MEASURE_SPAN_S and self._room_span * rate >= MEASURE_UNITS:
                own = self._room_own / self._room_span
                if self.share == 1.0 and own >= (1 - MARGIN) * self.bucket.rate_per_s:
                    self._note(own, max(0.0, rate - own), self._room_span)
                self._room_own = self._room_span = 0.0
            # Alone, take it all back; with others, grow additively, so shares converge on fair ones.
            self.share = 1.0 if self.alone else min(1.0, self.share + SHARE_GROWTH_PER_S * elapsed)

    def _note(self, own: float, others: float, span: float) -> None:
        """Average a measure of this lane's and the others' use (the others' is how :attr:`alone` decides)."""
        self._evidence_s += span
        if self._others is None:
            self._own_rate, self._others = own, others
        else:
            averaging = min(1.0, span / ALONE_EVIDENCE_S)
            self._own_rate += averaging * (own - self._own_rate)
            self._others += averaging * (others - self._others)

    def _rescale(self, own: float, others: float, rate: float, *, banked: bool) -> None:
        """Scale the share by target / the key's total use: every client by the same factor, so together
        they converge on the target however many they are. This lane's use beyond its pace is spending, on
        purpose, what the provider banked: not counted. Use above the target while the provider's bucket
        still holds more than a reserve is spending that bank too (a per-minute window's full bucket)."""
        used = max(0.0, others) + min(own, self.bucket.rate_per_s)
        target = (1 - MARGIN) * rate
        if used <= target:
            weight = min(1.0, self._span / SHARE_TAU_S)
            self.share = min(1.0, self.share * (target / max(used, target / 4)) ** weight)
        elif not banked:
            # Over the limit together: at once, but by half at most (a measure may include a bank's spending).
            self.share = max(MIN_SHARE, self.share * max(SHARE_CUT, target / used))

    def on_refused(self, reported: RateLimitHeaders | None, ticket: Ticket, requested: float, now: float) -> None:
        """A 429 from this limit: cut the share once per round, and learn the window if the headers lied."""
        if ticket.generation == self.generation:
            self.share = max(MIN_SHARE, self.share * SHARE_CUT)
            self.generation += 1
        if reported is None:
            self._reshape(now)
            self.bucket.lower_to(0.0, now)
            return
        if reported.remaining >= 2 * requested:  # twice: our token estimate is not the provider's count
            self._window_ceiling_s = max(START_WINDOW_S, self.window_s / 2)
            self.window_s = self._window_ceiling_s
        self._follow(reported, ticket, now, refused=True)

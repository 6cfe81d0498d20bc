"""Per-tenant rate shares: a tenant capped at a fraction of a model's requests and tokens per minute.

``PIPELINE_TENANT_RATE_SHARES=acme=0.5`` keeps the tenant ``acme`` (the job metadata field
``PIPELINE_TENANT_FIELD``) to half of what this worker may send to each model: before its model's lanes
(:mod:`~pipeline.client.ratelimit`), an attempt of a capped tenant takes one request and its estimated
tokens from the tenant's own buckets, refilled at ``share x`` the pace of the model's lanes and holding
``share x`` their burst. A lane's pace is this worker's part of the key's limit (the lanes of a group's
workers share the key between them), so the cap holds across the group too: ``share`` of the key. Tenants
not named are not capped; they, and the tenant's unused share, use the rest.

A model whose limits are not known yet (none configured, none learnt from ``x-ratelimit-*``) has no lanes:
there is nothing to take a share of, and its calls are not capped until the first answer tells the limits.
A capped tenant waits before it holds a concurrency slot, so its queue holds no slot another tenant could
use. The tokens taken are settled with ``usage`` like the lanes' (:meth:`TenantShares.on_charged`), and a
429 gives the refused call's share back (:meth:`TenantShares.on_refused`). Pure apart from its sleeps: the
caller's clock decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pipeline.client.lanes import TokenBucket
from pipeline.client.ratelimit import MAX_WAIT_S, MIN_WAIT_S, Dimension, ModelLimits
from pipeline.client.timing import Clock, Sleep

#: The smallest burst of a tenant's bucket: one request (a bucket must hold what one call takes).
MIN_REQUEST_BURST: Final = 1.0


@dataclass(frozen=True, slots=True)
class TenantPermit:
    """What one attempt of a capped tenant took from its buckets."""

    tenant: str
    model: str
    tokens: int


@dataclass(slots=True)
class _TenantModel:
    buckets: dict[Dimension, TokenBucket] = field(default_factory=dict)
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)


class TenantShares:
    """The capped tenants' buckets per model; see the module docstring."""

    def __init__(self, shares: Mapping[str, float], *, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        for tenant, share in shares.items():
            if not 0 < share <= 1:
                raise ValueError(f"the rate share of {tenant!r} must be in (0, 1], not {share}")
        self.shares = dict(shares)
        self._clock = clock
        self._sleep = sleep
        self._books: dict[tuple[str, str], _TenantModel] = {}

    def capped(self, tenant: str) -> bool:
        return tenant in self.shares

    def wait_s(self, tenant: str, model: str, limits: ModelLimits, tokens: int) -> float:
        """Seconds until the tenant may send ``tokens`` to ``model`` (0: now; always 0 when not capped)."""
        if tenant not in self.shares or not limits.lanes:
            return 0.0
        now = self._clock()
        wait = 0.0
        for dimension, bucket in self._buckets(tenant, model, limits, now).items():
            wait = max(wait, bucket.wait_s(1 if dimension == "requests" else tokens, now))
        return wait

    async def acquire(self, tenant: str, model: str, limits: ModelLimits, tokens: int) -> TenantPermit | None:
        """Wait for the tenant's share, then take one request and ``tokens``; ``None`` when not capped (or
        the model's limits are not known yet: then nothing was taken)."""
        if tenant not in self.shares or not limits.lanes:
            return None
        book = self._books.setdefault((tenant, model), _TenantModel())
        async with book.queue:  # FIFO per tenant and model: only the head of the queue sleeps
            while (wait := self.wait_s(tenant, model, limits, tokens)) > 0:
                await self._sleep(min(max(wait, MIN_WAIT_S), MAX_WAIT_S))
            now = self._clock()
            for dimension, bucket in self._buckets(tenant, model, limits, now).items():
                bucket.take(1 if dimension == "requests" else tokens, now)
        return TenantPermit(tenant, model, tokens)

    def on_charged(self, permit: TenantPermit | None, tokens: int) -> None:
        """The call really cost ``tokens``: settle the difference with what the tenant took."""
        if permit is None:
            return
        bucket = self._books[(permit.tenant, permit.model)].buckets.get("tokens")
        if bucket is not None:
            bucket.take(tokens - permit.tokens, self._clock())

    def on_refused(self, permit: TenantPermit | None) -> None:
        """A 429: the refused call was not charged, so the tenant gets its request and tokens back."""
        if permit is None:
            return
        now = self._clock()
        buckets = self._books[(permit.tenant, permit.model)].buckets
        if (requests := buckets.get("requests")) is not None:
            requests.give_back(1, now)
        if (token_bucket := buckets.get("tokens")) is not None:
            token_bucket.give_back(permit.tokens, now)

    def _buckets(self, tenant: str, model: str, limits: ModelLimits, now: float) -> dict[Dimension, TokenBucket]:
        """The tenant's buckets for ``model``, shaped after the model's lanes as they are now (a lane's pace
        moves with what the provider says)."""
        share = self.shares[tenant]
        buckets = self._books.setdefault((tenant, model), _TenantModel()).buckets
        for dimension, lane in limits.lanes.items():
            rate = share * lane.bucket.rate_per_s
            floor = MIN_REQUEST_BURST if dimension == "requests" else 1.0
            capacity = max(floor, share * lane.bucket.capacity)
            bucket = buckets.get(dimension)
            if bucket is None:
                buckets[dimension] = TokenBucket(capacity, rate, now)
            elif (bucket.capacity, bucket.rate_per_s) != (capacity, rate):
                bucket.reshape(capacity, rate, now)
        return buckets

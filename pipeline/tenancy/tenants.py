"""Which tenant a job belongs to, and the bounded set of tenant names metrics are labelled with.

A job names its tenant in ``metadata`` under the field ``PIPELINE_TENANT_FIELD`` (``tenant`` by default). A
job without one (or with an empty value) belongs to the tenant ``""``: it is still priced and counted, under
the label ``none``, and a budget for ``*`` applies to it like to any tenant without a budget of its own.
"""

from __future__ import annotations

from typing import Final

from schemas.chat import Metadata

#: The metrics label of jobs that name no tenant.
NO_TENANT_LABEL: Final = "none"
#: The metrics label of every tenant beyond the first ``max_tenants`` seen.
OTHER_TENANTS_LABEL: Final = "other"
DEFAULT_TENANT_FIELD: Final = "tenant"


def tenant_of(metadata: Metadata | None, field: str = DEFAULT_TENANT_FIELD) -> str:
    """The job's tenant: ``metadata[field]``, or ``""`` when the job names none."""
    if not metadata:
        return ""
    return metadata.get(field, "")


class TenantLabels:
    """Bounds the label values a tenant dimension can take: the first ``max_tenants`` distinct tenants a
    worker sees keep their own label, every later one is ``other`` (a metric series per tenant costs the
    metrics backend; a flood of one-off tenant names must not grow it without bound)."""

    def __init__(self, max_tenants: int) -> None:
        self._max = max_tenants
        self._named: set[str] = set()

    def label(self, tenant: str) -> str:
        if not tenant:
            return NO_TENANT_LABEL
        if tenant in self._named:
            return tenant
        if len(self._named) < self._max and tenant not in (NO_TENANT_LABEL, OTHER_TENANTS_LABEL):
            self._named.add(tenant)
            return tenant
        return OTHER_TENANTS_LABEL

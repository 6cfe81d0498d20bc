"""Tenants: what each job costs, what each tenant may spend, and how the call slots are shared.

- :mod:`~pipeline.tenancy.pricing`: the price table per model (``prices.toml``, ``PIPELINE_PRICES_FILE``) and
  the cost of a job's billed tokens;
- :mod:`~pipeline.tenancy.tenants`: a job's tenant (``PIPELINE_TENANT_FIELD`` of its metadata) and bounded
  metric labels;
- :mod:`~pipeline.tenancy.budgets`: pure budget accounting per UTC day and month, and the overshoot bound;
- :mod:`~pipeline.tenancy.spending`: the check before a call and the charge after it, as the processor uses them;
- :mod:`~pipeline.tenancy.spend_topic`: the spend shared by every worker of a group through a Kafka topic;
- :mod:`~pipeline.tenancy.wiring`: a worker's pricing and budgets, built from its settings;
- :mod:`~pipeline.tenancy.fair` and :mod:`~pipeline.tenancy.lanes`: fair shares of the call slots across
  partitions, and priority lanes (input topics with weights).
"""

from pipeline.tenancy.budgets import Budgets, SpendBook, over_budget, overshoot_bound
from pipeline.tenancy.pricing import Price, PricesError, PriceTable, default_prices, load_prices
from pipeline.tenancy.spending import TenantSpending, route_over_budget, with_cost
from pipeline.tenancy.tenants import TenantLabels, tenant_of

__all__ = [
    "Budgets",
    "Price",
    "PriceTable",
    "PricesError",
    "SpendBook",
    "TenantLabels",
    "TenantSpending",
    "default_prices",
    "load_prices",
    "over_budget",
    "overshoot_bound",
    "route_over_budget",
    "tenant_of",
    "with_cost",
]

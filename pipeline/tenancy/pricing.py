"""What a job's tokens cost: a price table per model, read from TOML, and the cost of a :class:`Spend`.

The table ships as ``pipeline/tenancy/prices.toml`` (OpenAI's public list prices when it was written: a
default to check, documented in the file); ``PIPELINE_PRICES_FILE`` names a file of the same shape that
replaces it. A model is found by its name as the provider reports it, else by that name without a snapshot
date (``gpt-4o-mini-2024-07-18`` and ``gpt-4-0613`` are priced as ``gpt-4o-mini`` and ``gpt-4``). Nothing
fuzzier: ``gpt-4o-mini-search-preview`` is not ``gpt-4o-mini``, and a wrong price is worse than none. A model
the table does not know has an unknown cost (``None``), never zero and never an error: the job goes on, its
records carry ``cost_usd: null``, and the caller counts and logs the model once.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Final

import msgspec

from pipeline.outcomes import Spend

PerMillion = Annotated[float, msgspec.Meta(ge=0)]
#: A snapshot date at the end of a model name: ``-2024-07-18`` or ``-0613``.
_SNAPSHOT: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


class Price(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens. ``cached_input`` unset: cached prompt tokens are billed as input."""

    input: PerMillion
    output: PerMillion
    cached_input: PerMillion | None = None

    def cost(self, spend: Spend) -> float:
        cached = min(spend.cached_tokens, spend.prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        micro = (
            (spend.prompt_tokens - cached) * self.input + cached * cached_price + spend.completion_tokens * self.output
        )
        return micro / 1_000_000


class PricesError(ValueError):
    """A price file that does not read as a table of :class:`Price` per model."""


class PriceTable:
    """Prices per model name; see the module docstring for how a name is matched."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    @property
    def models(self) -> list[str]:
        return sorted(self._prices)

    def price(self, model: str) -> Price | None:
        found = self._prices.get(model)
        if found is None:
            found = self._prices.get(_SNAPSHOT.sub("", model))
        return found

    def cost(self, spend: Spend) -> float | None:
        """USD for ``spend``, or None when its model has no price."""
        price = self.price(spend.model)
        return None if price is None else price.cost(spend)


def parse_prices(text: str, *, source: str) -> PriceTable:
    """A table from TOML text: one table per model with ``input``, ``output`` and optional ``cached_input``."""
    try:
        raw = tomllib.loads(text)
        prices = msgspec.convert(raw, dict[str, Price])
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PricesError(f"{source}: {exc}") from None
    return PriceTable(prices)


def default_prices() -> PriceTable:
    """The table shipped with the package (``pipeline/tenancy/prices.toml``)."""
    text = resources.files("pipeline.tenancy").joinpath("prices.toml").read_text(encoding="utf-8")
    return parse_prices(text, source="pipeline/tenancy/prices.toml")


def load_prices(path: str | None) -> PriceTable:
    """The table in ``path`` (``PIPELINE_PRICES_FILE``), or the shipped default when no path is given."""
    if not path:
        return default_prices()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PricesError(f"PIPELINE_PRICES_FILE={path}: {exc.strerror or exc}") from None
    return parse_prices(text, source=f"PIPELINE_PRICES_FILE={path}")

"""The price table: shipped defaults, dated snapshots, cached input, unknown models, a file of one's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.outcomes import Spend
from pipeline.tenancy.pricing import Price, PricesError, PriceTable, default_prices, load_prices, parse_prices
from schemas.chat import Usage
from schemas.response import PromptTokensDetails

MILLION = 1_000_000


def spend(model: str, prompt: int = 0, completion: int = 0, cached: int = 0) -> Spend:
    return Spend(model=model, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def test_the_shipped_table_prices_the_common_models() -> None:
    table = default_prices()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "gpt-5"):
        assert table.price(model) is not None, model
    mini = table.price("gpt-4o-mini")
    assert mini == Price(input=0.15, cached_input=0.075, output=0.60)


def test_a_million_tokens_each_way_cost_the_list_prices() -> None:
    table = default_prices()
    assert table.cost(spend("gpt-4o", prompt=MILLION, completion=MILLION)) == pytest.approx(2.50 + 10.00)


def test_a_dated_snapshot_is_priced_as_its_base_model() -> None:
    table = default_prices()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("o3-2025-04-16") == table.price("o3")
    # the base name is matched exactly: a snapshot of gpt-4o is not gpt-4o-mini, and vice versa
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o") != table.price("gpt-4o-mini")


def test_a_four_digit_snapshot_suffix_is_matched_too() -> None:
    table = PriceTable({"gpt-4": Price(input=30, output=60)})
    assert table.price("gpt-4-0613") == Price(input=30, output=60)


def test_a_variant_is_not_mistaken_for_its_family() -> None:
    table = default_prices()
    assert table.price("gpt-4o-mini-search-preview") is None
    assert table.price("ft:gpt-4o-mini:acme::abc123") is None


def test_cached_prompt_tokens_are_billed_at_the_cached_price() -> None:
    price = Price(input=2.0, cached_input=0.5, output=8.0)
    cost = price.cost(spend("m", prompt=1000, cached=400, completion=100))
    assert cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 8.0) / MILLION)


def test_without_a_cached_price_cached_tokens_are_billed_as_input() -> None:
    price = Price(input=10.0, output=30.0)
    assert price.cost(spend("m", prompt=1000, cached=1000)) == pytest.approx(1000 * 10.0 / MILLION)


def test_cached_tokens_come_from_the_usage_prompt_details_and_add_up_over_attempts() -> None:
    usage = Usage(
        prompt_tokens=1200,
        completion_tokens=50,
        total_tokens=1250,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1024),
    )
    total = Spend(model="gpt-4o").plus("gpt-4o", usage).plus("gpt-4o-2024-08-06", usage)
    assert (total.prompt_tokens, total.cached_tokens, total.completion_tokens) == (2400, 2048, 100)
    assert total.paid_attempts == 2
    assert default_prices().cost(total) == pytest.approx((352 * 2.5 + 2048 * 1.25 + 100 * 10.0) / MILLION)


def test_an_unknown_model_has_an_unknown_cost_not_zero() -> None:
    assert default_prices().cost(spend("gpt-99-ultra", prompt=10, completion=10)) is None


def test_a_prices_file_replaces_the_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('["my-model"]\ninput = 1.0\noutput = 2.0\n')
    table = load_prices(str(path))
    assert table.models == ["my-model"]
    assert table.cost(spend("my-model", prompt=MILLION)) == pytest.approx(1.0)
    assert load_prices(None).models == default_prices().models


@pytest.mark.parametrize(
    "text",
    ['["m"]\ninput = 1.0\n', '["m"]\ninput = -1\noutput = 1\n', '["m"]\ninput = 1\noutput = 1\nspare = 2\n', "[m"],
)
def test_a_bad_prices_file_is_one_error_naming_it(text: str) -> None:
    with pytest.raises(PricesError, match=r"prices\.toml"):
        parse_prices(text, source="prices.toml")


def test_a_missing_prices_file_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PricesError, match="PIPELINE_PRICES_FILE"):
        load_prices(str(tmp_path / "absent.toml"))

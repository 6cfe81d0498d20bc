import pytest

from pipeline.simulator.directives import (
    ALL_FAULTS,
    NO_DIRECTIVES,
    DirectiveError,
    Directives,
    FaultRule,
    extract_from_text,
    parse_directives,
    parse_rules,
)


def test_fault_items_take_times_and_rates() -> None:
    assert parse_rules("500, 429*2, 503@0.25, reset*1@0.5") == (
        FaultRule(fault="500"),
        FaultRule(fault="429", times=2),
        FaultRule(fault="503", rate=0.25),
        FaultRule(fault="reset", times=1, rate=0.5),
    )


def test_every_fault_name_parses_and_prints_back() -> None:
    for name in ALL_FAULTS:
        rule = parse_rules(f"{name}*3")[0]
        assert str(rule) == f"{name}*3"


def test_aliases_map_to_the_canonical_fault() -> None:
    assert parse_rules("timeout, malformed") == (FaultRule(fault="hang"), FaultRule(fault="malformed_json"))


@pytest.mark.parametrize("text", ["bogus", "500*", "500@2", "500@x", "latency=fast", "flag_output=nasty", "latency=-1"])
def test_bad_directives_raise(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directives(text)


def test_options_parse_next_to_faults() -> None:
    assert parse_directives("latency=250, flag_input, flag_output=hate, moderation_missing") == Directives(
        rules=(FaultRule(fault="moderation_missing"),),
        latency_ms=250.0,
        flag_input="violence",
        flag_output="hate",
    )


def test_prompt_directives_are_found_and_removed() -> None:
    text, found = extract_from_text("Tell me a story [[sim: 500*2]] about [[sim:flag_output=sexual]]boats.")
    assert text == "Tell me a story  about boats."
    assert found.rules == (FaultRule(fault="500", times=2),)
    assert found.flag_output == "sexual"


def test_text_without_directives_is_returned_as_is() -> None:
    assert extract_from_text("plain [[not a directive]]") == ("plain [[not a directive]]", NO_DIRECTIVES)


def test_merging_keeps_both_rule_lists_and_the_first_option() -> None:
    header = parse_directives("500*1, latency=10")
    prompt = parse_directives("429, latency=99, flag_output")
    merged = header.merged_with(prompt)
    assert [rule.fault for rule in merged.rules] == ["500", "429"]
    assert merged.latency_ms == 10
    assert merged.flag_output == "violence"


def test_values_the_api_may_add_parse_as_given() -> None:
    found = parse_directives("finish_reason=safety_stop, service_tier=priority_plus, annotation=file_citation")
    assert (found.finish_reason, found.service_tier, found.annotation) == (
        "safety_stop",
        "priority_plus",
        "file_citation",
    )
    assert found.rules == ()


@pytest.mark.parametrize("text", ["finish_reason=", "service_tier=two words", "annotation=a/b", "finish_reason"])
def test_a_value_option_without_a_plain_value_is_refused(text: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directives(text)


def test_value_options_merge_like_the_others() -> None:
    merged = parse_directives("service_tier=flex").merged_with(parse_directives("service_tier=scale, finish_reason=x"))
    assert (merged.service_tier, merged.finish_reason) == ("flex", "x")

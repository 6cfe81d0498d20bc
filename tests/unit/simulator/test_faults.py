import random

from pipeline.simulator.directives import parse_rules
from pipeline.simulator.faults import NO_FAULTS, FaultInjector


def plan_for(injector: FaultInjector, rules: str, key: str) -> list[str]:
    return injector.plan(parse_rules(rules), lambda: key).names


def test_no_rules_no_faults() -> None:
    assert FaultInjector((), random.Random(0)).plan((), lambda: "job") is NO_FAULTS


def test_times_counts_attempts_per_job() -> None:
    injector = FaultInjector((), random.Random(0))
    assert [plan_for(injector, "500*2", "a") for _ in range(3)] == [["500"], ["500"], []]
    assert plan_for(injector, "500*2", "b") == ["500"]


def test_the_first_failure_wins_and_shape_faults_add_up() -> None:
    injector = FaultInjector((), random.Random(0))
    plan = injector.plan(parse_rules("503, 429, moderation_missing, moderation_error_input"), lambda: "job")
    assert plan.failure == "503"
    assert plan.shape == {"moderation_missing", "moderation_error_input"}


def test_later_rules_take_over_when_earlier_ones_are_used_up() -> None:
    injector = FaultInjector((), random.Random(0))
    assert [plan_for(injector, "500*1, 429*2", "job") for _ in range(3)] == [["500"], ["429"], []]


def test_server_rules_follow_request_rules() -> None:
    injector = FaultInjector(parse_rules("502"), random.Random(0))
    assert injector.plan(parse_rules("429"), lambda: "job").failure == "429"
    assert injector.plan((), lambda: "job").failure == "502"


def test_rates_are_reproducible_for_a_seed() -> None:
    def run(seed: int) -> list[bool]:
        injector = FaultInjector(parse_rules("500@0.3"), random.Random(seed))
        return [injector.plan((), lambda: "k").failure == "500" for _ in range(1000)]

    first = run(11)
    assert first == run(11)
    assert 240 < sum(first) < 360


def test_reset_forgets_attempt_counts() -> None:
    injector = FaultInjector((), random.Random(0))
    plan_for(injector, "500*1", "job")
    injector.reset()
    assert plan_for(injector, "500*1", "job") == ["500"]


def test_the_key_is_only_computed_when_a_times_rule_needs_it() -> None:
    def explode() -> str:
        raise AssertionError("key computed")

    injector = FaultInjector(parse_rules("500@0.5"), random.Random(0))
    injector.plan(parse_rules("429"), explode)

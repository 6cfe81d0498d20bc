"""Priority lanes from the settings: the input topics a worker reads and their weights."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_worker_settings
from pipeline.tenancy.lanes import input_lanes


def test_the_input_topic_alone_is_one_lane_of_weight_one() -> None:
    assert input_lanes(load_worker_settings({})) == {"prompts": 1}


def test_more_lanes_with_their_weights_and_the_input_topic_still_read() -> None:
    settings = load_worker_settings({"PIPELINE_INPUT_TOPICS": "prompts.interactive=8,prompts.bulk=1"})
    assert input_lanes(settings) == {"prompts": 1, "prompts.interactive": 8, "prompts.bulk": 1}


def test_the_input_topic_takes_the_weight_it_is_listed_with() -> None:
    settings = load_worker_settings({"PIPELINE_INPUT_TOPIC": "bulk", "PIPELINE_INPUT_TOPICS": "fast=4,bulk=2"})
    assert input_lanes(settings) == {"bulk": 2, "fast": 4}


@pytest.mark.parametrize(
    ("value", "problem"),
    [("fast=0", "PIPELINE_INPUT_TOPICS='fast=0'"), ("completions=2", "must not name PIPELINE_OUTPUT_TOPIC")],
)
def test_a_weight_below_one_or_an_output_topic_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_worker_settings({"PIPELINE_INPUT_TOPICS": value})
    assert problem in str(raised.value)

import argparse
import json
from pathlib import Path

import pytest

from pipeline.simulator import cli
from pipeline.simulator.config import OPTIONS, SimulatorConfig, config_from_env, config_to_json, with_values
from pipeline.simulator.directives import FaultRule
from pipeline.simulator.latency import FixedLatency, LognormalLatency


def test_every_option_is_a_config_field() -> None:
    fields = set(SimulatorConfig.__struct_fields__)
    assert {option.field for option in OPTIONS} <= fields


def test_environment_variables_set_options() -> None:
    config = config_from_env(
        {
            "PIPELINE_SIM_RPM": "600",
            "PIPELINE_SIM_LATENCY": "lognormal:20,200",
            "PIPELINE_SIM_FAULTS": "500@0.01,429*1",
            "PIPELINE_SIM_THRESHOLDS": "violence=0.3",
            "PIPELINE_SIM_ACCESS_LOG": "true",
        }
    )
    assert config.rpm == 600
    assert config.latency == LognormalLatency(p50_ms=20, p99_ms=200)
    assert config.faults == (FaultRule(fault="500", rate=0.01), FaultRule(fault="429", times=1))
    assert config.thresholds == {"violence": 0.3}
    assert config.access_log


def test_json_config_round_trips_and_single_variables_win() -> None:
    original = SimulatorConfig(api_key="sk-x", latency=FixedLatency(ms=5), faults=(FaultRule(fault="503"),))
    env = {"PIPELINE_SIM_CONFIG": config_to_json(original), "PIPELINE_SIM_TPM": "1000"}
    assert config_from_env(env) == with_values(original, {"tpm": 1000})


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="PIPELINE_SIM_RPM"):
        config_from_env({"PIPELINE_SIM_RPM": "many"})
    with pytest.raises(ValueError):
        with_values(SimulatorConfig(), {"rpm": -5})
    with pytest.raises(ValueError):
        with_values(SimulatorConfig(), {"thresholds": {"nonsense": 0.5}})
    with pytest.raises(ValueError):
        config_from_env({"PIPELINE_SIM_CONFIG": json.dumps({"unknown_option": 1})})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_SIM_RPM", "600")
    monkeypatch.setenv("PIPELINE_SIM_TPM", "9000")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--rpm", "60", "--faults", "reset*1", "--stream-moderation", "before_content"]
    )
    config = cli.config_from_args(args)
    assert (config.rpm, config.tpm) == (60, 9000)
    assert config.faults == (FaultRule(fault="reset", times=1),)
    assert config.stream_moderation == "before_content"
    assert args.handler is cli.run


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "pipeline simulate --port 8089" in out
    assert "--faults" in out and "--rpm" in out


def test_a_toml_file_sets_options_under_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config_file = tmp_path / "pipeline.toml"
    config_file.write_text('[pipeline_sim]\nlatency = "fixed:20"\nrpm = 600\ntpm = 9000\n')
    monkeypatch.setenv("PIPELINE_SIM_RPM", "120")
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    config = cli.config_from_args(parser.parse_args(["--config", str(config_file), "--tpm", "5000"]))
    assert (config.latency, config.rpm, config.tpm) == (FixedLatency(ms=20.0), 120, 5000)
    config_file.write_text('[pipeline_sim]\nlatenc = "fixed:20"\n')
    with pytest.raises(ValueError, match=r"unknown setting pipeline_sim\.latenc"):
        cli.config_from_args(parser.parse_args(["--config", str(config_file)]))


def test_the_rate_window_is_an_option_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_from_env({"PIPELINE_SIM_RATE_WINDOW": "0.1"}).rate_window == 0.1
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--rpm", "3000", "--rate-window", "1"])
    assert cli.config_from_args(args).rate_window == 1.0
    for bad in (0, -1, 61):
        with pytest.raises(ValueError, match="rate_window"):
            with_values(SimulatorConfig(), {"rate_window": bad})

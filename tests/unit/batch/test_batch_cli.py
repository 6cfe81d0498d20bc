"""`pipeline batch`: help with an example for every action, and failures as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main


@pytest.mark.parametrize("action", [[], ["submit"], ["status"], ["results"], ["list"], ["cancel"]])
def test_every_batch_action_has_help_with_an_example(action: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["batch", *action, "--help"])
    assert exited.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_submitting_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "submit", "no-such-file.jsonl"]) == 1
    assert capsys.readouterr().err == "pipeline batch: no such file: no-such-file.jsonl\n"


def test_metadata_must_be_key_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "f.jsonl"
    source.write_text("{}\n")
    assert main(["batch", "submit", str(source), "--metadata", "nope"]) == 1
    assert capsys.readouterr().err == "pipeline batch: --metadata 'nope': expected KEY=VALUE\n"


def test_an_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "list", "--kafka-bootstrap-servers", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pipeline batch: cannot reach Kafka at 127.0.0.1:1") and "Traceback" not in err


def test_results_files_must_differ(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "results", "b", "--output", "same.jsonl", "--errors", "same.jsonl"]) == 1
    assert "must name different files" in capsys.readouterr().err

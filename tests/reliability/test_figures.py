"""Where the reliability figures go: ``make test`` leaves the tracked ``results.json`` alone; a soak run or an
explicit ``PIPELINE_RECORD_RELIABILITY=1`` records them there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.env import child_env
from tests.reliability.support import LATEST_RESULTS, RESULTS, ROOT


@pytest.mark.parametrize(
    ("run_settings", "written_to"),
    [
        pytest.param({}, LATEST_RESULTS, id="make-test"),
        pytest.param({"PIPELINE_SOAK": "1"}, RESULTS, id="make-soak"),
        pytest.param({"PIPELINE_RECORD_RELIABILITY": "1"}, RESULTS, id="recorded"),
        pytest.param({"PIPELINE_RECORD_RELIABILITY": "0"}, LATEST_RESULTS, id="not-recorded"),
    ],
)
def test_a_run_writes_its_figures_where_its_settings_say(run_settings: dict[str, str], written_to: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-c", "from tests.reliability.support import FIGURES_FILE; print(FIGURES_FILE)"],
        env=child_env(run_settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(printed.stdout.strip()) == written_to


def test_the_latest_figures_are_not_tracked() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        [git, "check-ignore", "--quiet", str(LATEST_RESULTS)], cwd=ROOT, env=child_env(), timeout=60
    )
    assert ignored.returncode == 0, f"{LATEST_RESULTS.relative_to(ROOT)} must be gitignored"

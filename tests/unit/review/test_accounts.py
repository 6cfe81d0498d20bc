"""Reviewer accounts: a token is shown once and only its hash is kept, in a file only its owner can read."""

from __future__ import annotations

import argparse
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.commands import review as review_command
from pipeline.commands.common import CliError
from pipeline.review.accounts import Accounts, AccountsError, add_reviewer, hash_token, remove_reviewer
from pipeline.review.desk import Reviewer


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "reviewers.json"


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_reviewers_token_signs_them_in_with_their_role(path: Path) -> None:
    ana = add_reviewer(path, "ana", admin=True)
    bo = add_reviewer(path, "bo")
    accounts = Accounts(path)
    assert accounts.authenticate(ana) == Reviewer(name="ana", admin=True)
    assert accounts.authenticate(bo) == Reviewer(name="bo", admin=False)
    assert len(ana) >= 43 and ana != bo, "256 random bits, url-safe"


def test_only_a_hash_of_the_token_is_stored(path: Path) -> None:
    token = add_reviewer(path, "ana")
    text = path.read_text()
    assert token not in text
    (account,) = json.loads(text)["reviewers"]
    assert account["token_sha256"] == hash_token(token)
    assert account["role"] == "reviewer"


@pytest.mark.usefixtures("permissive_umask")
def test_the_file_is_readable_by_its_owner_only_and_replaced_whole(path: Path) -> None:
    add_reviewer(path, "ana")
    add_reviewer(path, "bo")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [".reviewers.json.lock", "reviewers.json"], "no temp left"


@pytest.mark.parametrize("presented", ["", "wrong", "x" * 10_000, " "])
def test_a_wrong_token_signs_in_nobody(path: Path, presented: str) -> None:
    add_reviewer(path, "ana")
    assert Accounts(path).authenticate(presented) is None


def test_a_name_is_taken_once_and_must_be_plain(path: Path) -> None:
    add_reviewer(path, "ana")
    with pytest.raises(AccountsError, match="already exists"):
        add_reviewer(path, "ana", admin=True)
    for bad in ("", "a b", "<script>", "-x", "x" * 65):
        with pytest.raises(AccountsError, match="reviewer name"):
            add_reviewer(path, bad)
    assert [a["name"] for a in json.loads(path.read_text())["reviewers"]] == ["ana"]


def test_a_running_console_sees_accounts_added_and_removed(path: Path) -> None:
    add_reviewer(path, "ana")
    accounts = Accounts(path)
    bo = add_reviewer(path, "bo")
    assert accounts.authenticate(bo) == Reviewer(name="bo")
    remove_reviewer(path, "bo")
    assert accounts.authenticate(bo) is None
    assert accounts.reviewer("bo") is None
    assert accounts.reviewer("ana") == Reviewer(name="ana")
    with pytest.raises(AccountsError, match="no reviewer"):
        remove_reviewer(path, "bo")


def test_a_missing_file_holds_nobody_and_a_broken_one_is_refused(path: Path) -> None:
    assert len(Accounts(path)) == 0
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(AccountsError, match="not a reviewers file"):
        Accounts(path)


def test_a_broken_rewrite_keeps_the_accounts_read_before(path: Path) -> None:
    token = add_reviewer(path, "ana")
    accounts = Accounts(path)
    path.write_text('{"reviewers": "oops"}')
    assert accounts.authenticate(token) == Reviewer(name="ana")


# --------------------------------------------------------------------------------------------------
# pipeline review add-reviewer / remove-reviewer
# --------------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="pipeline")
    review_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_add_reviewer_prints_the_token_once(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("review", "add-reviewer", "ana", "--admin", "--reviewers-file", str(path)) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert Accounts(path).authenticate(token) == Reviewer(name="ana", admin=True)


def test_add_reviewer_json(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_REVIEWERS_FILE", str(path))
    assert run_cli("review", "add-reviewer", "bo", "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"name", "token"} and printed["name"] == "bo"
    assert Accounts(path).authenticate(printed["token"]) == Reviewer(name="bo")


def test_add_reviewer_refuses_a_taken_name_and_needs_a_file(path: Path) -> None:
    run_cli("review", "add-reviewer", "ana", "--reviewers-file", str(path))
    with pytest.raises(CliError, match="already exists"):
        run_cli("review", "add-reviewer", "ana", "--reviewers-file", str(path))
    with pytest.raises(CliError, match="PIPELINE_REVIEWERS_FILE"):
        run_cli("review", "add-reviewer", "bo")


def test_remove_reviewer(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = add_reviewer(path, "ana")
    assert run_cli("review", "remove-reviewer", "ana", "--reviewers-file", str(path)) == 0
    assert Accounts(path).authenticate(token) is None


def test_serve_defaults_to_loopback_and_refuses_an_empty_accounts_file(path: Path) -> None:
    parser = argparse.ArgumentParser(prog="pipeline")
    review_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["review", "serve", "--reviewers-file", str(path)])
    assert (args.host, args.port) == ("127.0.0.1", 8090)
    with pytest.raises(CliError, match="no reviewers"):
        review_command.load_console(args)

"""Reviewer accounts: a name, a role and the hash of a token, in the file named by ``PIPELINE_REVIEWERS_FILE``.

The file is JSON, written atomically (a temporary file beside it, fsynced, renamed over it) with mode 0600::

    {"version": 1, "reviewers": [{"name": "ana", "role": "admin", "token_sha256": "…", "created_at": 1764…}]}

A token is made once by :func:`add_reviewer` (``secrets.token_urlsafe(32)``: 256 random bits), shown to the
person once, and only its SHA-256 is kept. A plain fast hash is the right tool here, unlike for passwords:
slow, salted hashes (bcrypt, scrypt, Argon2) exist to make guessing *low-entropy* secrets expensive, and
nobody can enumerate 2**256 candidates however fast each guess is; with every token random and unique there
is no dictionary to precompute and nothing for a salt to protect. So a stolen file reveals no token, and a
check costs microseconds on every API request instead of a deliberate hundred milliseconds.

:class:`Accounts` reads the file and re-reads it when it changes, so a reviewer added (or removed) while the
console runs takes effect on the next request without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from pipeline.review.desk import Reviewer
from schemas.decisions import ReviewerName

log = logging.getLogger(__name__)

#: The environment variable (and ``[pipeline] reviewers_file`` in a TOML file) naming the accounts file.
REVIEWERS_FILE_ENV: Final = "PIPELINE_REVIEWERS_FILE"
#: Presented tokens longer than this are refused before hashing (ours are 43 characters).
MAX_TOKEN_LENGTH: Final = 256

Role = Literal["reviewer", "admin"]
TokenHash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class AccountsError(Exception):
    """The accounts file cannot be read or written, or a change to it is refused (one line, for the user)."""


class Account(msgspec.Struct, frozen=True, kw_only=True):
    name: ReviewerName
    role: Role
    token_sha256: TokenHash
    #: Epoch milliseconds.
    created_at: int


class AccountsFile(msgspec.Struct, frozen=True, kw_only=True):
    version: Literal[1] = 1
    reviewers: list[Account] = msgspec.field(default_factory=list)


_decoder: Final = msgspec.json.Decoder(AccountsFile)
_encoder: Final = msgspec.json.Encoder()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_accounts(path: Path) -> AccountsFile:
    """The file's accounts; a missing file holds none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AccountsFile()
    except OSError as exc:
        raise AccountsError(f"{REVIEWERS_FILE_ENV}={path}: cannot read it ({exc.strerror})") from None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise AccountsError(f"{REVIEWERS_FILE_ENV}={path}: not a reviewers file ({exc})") from None


def write_accounts(path: Path, accounts: AccountsFile) -> None:
    """Replace the file atomically: readers see the old or the new content, never a part; mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    data = msgspec.json.format(_encoder.encode(accounts), indent=2) + b"\n"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the file between processes (two ``add-reviewer`` at once)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_name(name: str) -> str:
    try:
        return msgspec.convert(name, ReviewerName)
    except msgspec.ValidationError:
        raise AccountsError(
            f"reviewer name {name!r}: use 1 to 64 letters, digits and . _ @ - (starting with a letter or digit)"
        ) from None


def add_reviewer(path: Path, name: str, admin: bool = False) -> str:
    """Create an account and return its token (the only time it exists outside the person's hands)."""
    name = _check_name(name)
    try:
        with _locked(path):
            current = read_accounts(path)
            if any(account.name == name for account in current.reviewers):
                raise AccountsError(f"reviewer {name!r} already exists in {path}")
            token = secrets.token_urlsafe(32)
            account = Account(
                name=name,
                role="admin" if admin else "reviewer",
                token_sha256=hash_token(token),
                created_at=int(time.time() * 1000),
            )
            write_accounts(path, AccountsFile(reviewers=[*current.reviewers, account]))
    except OSError as exc:
        raise AccountsError(f"{REVIEWERS_FILE_ENV}={path}: cannot write it ({exc.strerror})") from None
    return token


def remove_reviewer(path: Path, name: str) -> None:
    """Delete an account: its token stops working, and its open sessions end on their next request."""
    try:
        with _locked(path):
            current = read_accounts(path)
            kept = [account for account in current.reviewers if account.name != name]
            if len(kept) == len(current.reviewers):
                raise AccountsError(f"no reviewer {name!r} in {path}")
            write_accounts(path, AccountsFile(reviewers=kept))
    except OSError as exc:
        raise AccountsError(f"{REVIEWERS_FILE_ENV}={path}: cannot write it ({exc.strerror})") from None


class Accounts:
    """Who may sign in: the accounts file, re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._accounts: tuple[Account, ...] = ()
        self._reload(strict=True)

    def _reload(self, *, strict: bool = False) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._accounts = None, ()
            return
        except OSError as exc:
            if strict:
                raise AccountsError(f"{REVIEWERS_FILE_ENV}={self.path}: cannot read it ({exc.strerror})") from None
            return
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            self._accounts = tuple(read_accounts(self.path).reviewers)
        except AccountsError:
            if strict:
                raise
            log.exception("keeping the reviewers read before: the file changed and cannot be read now")
            return
        self._stamp = stamp
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users: chmod 600 it", self.path)

    def __len__(self) -> int:
        self._reload()
        return len(self._accounts)

    def authenticate(self, token: str) -> Reviewer | None:
        """The reviewer whose token this is, or ``None``. Compares every stored hash in constant time."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        self._reload()
        presented = hash_token(token)
        found: Account | None = None
        for account in self._accounts:
            if hmac.compare_digest(presented, account.token_sha256):
                found = account
        return None if found is None else Reviewer(name=found.name, admin=found.role == "admin")

    def reviewer(self, name: str) -> Reviewer | None:
        """The account named ``name`` as it is now (a signed-in session re-checks it on every request)."""
        self._reload()
        for account in self._accounts:
            if account.name == name:
                return Reviewer(name=account.name, admin=account.role == "admin")
        return None

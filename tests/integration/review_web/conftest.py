"""The console on a loopback test server over the in-memory desk, with a clock the tests move, and two accounts:
``ana`` (reviewer) and ``root`` (admin)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline.review.accounts import Accounts, add_reviewer
from pipeline.review.web import WebSettings, make_app
from tests.unit.review.memory_desk import MemoryDesk

START = 1_800_000_000.0


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Console:
    client: TestClient[web.Request, web.Application]
    desk: MemoryDesk
    clock: Clock
    accounts_file: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def bearer(self, who: str = "ana") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def sign_in(self, who: str = "ana") -> str:
        """Sign the client's cookie jar in as ``who``, like a browser; returns the session's CSRF token."""
        form_token = await self.sign_in_form_token()
        response = await self.client.post(
            "/sign-in",
            data={"token": self.tokens[who], "csrf_token": form_token, "next": "/"},
            headers={"Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        return await self.csrf_token()

    async def sign_in_form_token(self) -> str:
        page = await (await self.client.get("/sign-in")).text()
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        return found.group(1)

    async def csrf_token(self) -> str:
        page = await (await self.client.get("/")).text()
        found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
        assert found is not None, page
        return found.group(1)


@pytest.fixture
def settings() -> WebSettings:
    """Overridden per test with ``@pytest.mark.parametrize("settings", [WebSettings(...)])``."""
    return WebSettings()


@pytest.fixture
async def console(tmp_path: Path, settings: WebSettings) -> AsyncIterator[Console]:
    accounts_file = tmp_path / "reviewers.json"
    tokens = {"ana": add_reviewer(accounts_file, "ana"), "root": add_reviewer(accounts_file, "root", admin=True)}
    clock = Clock()
    desk = MemoryDesk(clock=clock)
    app = make_app(desk, Accounts(accounts_file), settings, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Console(client=client, desk=desk, clock=clock, accounts_file=accounts_file, tokens=tokens)

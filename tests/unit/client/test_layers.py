"""The client package's module map holds: every module imports only from layers below its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline.client

PACKAGE = Path(pipeline.client.__file__).parent

#: Top to bottom, as drawn in ``pipeline/client/__init__.py``.
LAYERS: list[set[str]] = [
    {"chat"},
    {"request", "moderation_modes"},
    {"config", "exchange", "pacing"},
    {"tenant_shares"},
    {"retries", "breaker", "streaming", "moderation", "concurrency", "ratelimit", "tokens"},
    {"failures", "transport", "timing", "lanes"},
    {"responses"},
]


def _layer(module: str) -> int:
    return next(depth for depth, layer in enumerate(LAYERS) if module in layer)


def _client_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith("pipeline.client."):
                found.add(node.module.removeprefix("pipeline.client."))
            elif node.module == "pipeline.client":
                found.update(alias.name for alias in node.names)
    return found


def test_every_module_has_a_place_on_the_map() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS)


def test_imports_point_down_only() -> None:
    upward = {
        (module, imported)
        for layer in LAYERS
        for module in layer
        for imported in _client_imports(module)
        if _layer(imported) <= _layer(module)
    }
    assert upward == set()

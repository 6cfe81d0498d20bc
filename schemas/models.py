"""``GET /v1/models``: the model list."""

from __future__ import annotations

from typing import Literal

from schemas.wire import Wire


class Model(Wire, frozen=True):
    id: str
    created: int
    object: Literal["model"]
    owned_by: str


class ModelList(Wire, frozen=True):
    object: Literal["list"]
    data: list[Model]

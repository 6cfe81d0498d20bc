"""The standalone moderation endpoint, ``POST /v1/moderations``, and the omni-moderation categories.

The pipeline uses it in the ``separate`` and ``auto`` moderation modes (for providers without inline
moderation) and converts its results to the inline :class:`schemas.chat.ModerationResults`.
"""

from __future__ import annotations

# typing.Sequence rather than collections.abc's: schemas/ imports only msgspec and typing (see the tests).
from typing import Final, Sequence  # noqa: UP035

from schemas.response import InputType
from schemas.wire import Wire

#: The 13 categories ``omni-moderation-latest`` scores, in the API's order.
OMNI_CATEGORIES: Final[tuple[str, ...]] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class ModerationTextInput(Wire, frozen=True, tag_field="type", tag="text"):
    text: str


class ModerationImageUrl(Wire, frozen=True):
    url: str


class ModerationImageInput(Wire, frozen=True, tag_field="type", tag="image_url"):
    image_url: ModerationImageUrl


ModerationInputPart = ModerationTextInput | ModerationImageInput


class ModerationCreateRequest(Wire, frozen=True):
    # One array-like in the union (msgspec cannot decode ``list[str] | list[Part]``); ``Sequence`` keeps both
    # ``list[str]`` and ``list[ModerationInputPart]`` assignable. The API takes strings or parts, not a mix.
    input: str | Sequence[str | ModerationInputPart]
    model: str | None = None


class ModerationCategoriesResult(Wire, frozen=True):
    """One result of the standalone endpoint (it carries no ``type`` or ``model``, unlike the inline one)."""

    categories: dict[str, bool]
    category_applied_input_types: dict[str, list[InputType]]
    category_scores: dict[str, float]
    flagged: bool


class ModerationCreateResponse(Wire, frozen=True):
    id: str
    model: str
    results: list[ModerationCategoriesResult]

"""The standalone moderation endpoint, ``POST /v1/moderations``, and the omni-moderation categories.

The pipeline uses it in the ``separate`` and ``auto`` moderation modes (for providers without inline
moderation) and converts its results to the inline :class:`schemas.chat.ModerationResults`.
"""

from __future__ import annotations

from typing import Final

from schemas.chat import InputType, Wire

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


class ModerationTextInput(Wire, tag_field="type", tag="text"):
    text: str


class ModerationImageUrl(Wire):
    url: str


class ModerationImageInput(Wire, tag_field="type", tag="image_url"):
    image_url: ModerationImageUrl


ModerationInputPart = ModerationTextInput | ModerationImageInput


class ModerationCreateRequest(Wire):
    input: str | list[str] | list[ModerationInputPart]
    model: str | None = None


class ModerationCategoriesResult(Wire):
    """One result of the standalone endpoint (it carries no ``type`` or ``model``, unlike the inline one)."""

    categories: dict[str, bool]
    category_applied_input_types: dict[str, list[InputType]]
    category_scores: dict[str, float]
    flagged: bool


class ModerationCreateResponse(Wire):
    id: str
    model: str
    results: list[ModerationCategoriesResult]

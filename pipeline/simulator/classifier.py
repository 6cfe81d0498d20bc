"""A deterministic stand-in for ``omni-moderation-latest``: a lexicon scorer over text and image URLs.

Each of the 13 omni categories has a few marker words (:data:`LEXICON`). A category's score is
``1 - Π(1 - weight)`` over the distinct markers found, plus a tiny noise floor derived from a hash of the
text, so clean content scores like the real model (between ``1e-6`` and ``1e-4``, never exactly 0) and
identical text always scores the same. A subcategory's score lifts its parent (``violence/graphic`` → ``violence``) to
:data:`PARENT_SHARE` of its own. ``flagged`` is per category ``score >= threshold``
(:data:`DEFAULT_THRESHOLDS`, overridable per server).

Images: the model scores images for the violence, self-harm and sexual (not minors) families only
(:data:`IMAGE_CATEGORIES`). The simulator cannot look at pixels, so it scores the words in an image's URL
(``https://img.example/gore.png`` scores ``violence/graphic``); a ``data:`` URL carries no words and scores
clean. ``category_applied_input_types`` lists ``"text"`` when text was present and ``"image"`` for the image
categories when an image was present.
"""

from __future__ import annotations

import operator
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Final

from schemas.chat import InputType, ModerationResult
from schemas.moderations import OMNI_CATEGORIES

#: Marker words per category, with the weight one occurrence adds (``1.0`` flags on its own).
LEXICON: Final[dict[str, dict[str, float]]] = {
    "harassment": {"idiot": 0.8, "moron": 0.8, "loser": 0.7, "pathetic": 0.6, "worthless": 0.6},
    "harassment/threatening": {"threaten": 0.8, "stalk": 0.8, "stalking": 0.8, "intimidate": 0.7},
    "hate": {"subhuman": 0.9, "vermin": 0.8, "bigot": 0.6, "xenophobe": 0.7},
    "hate/threatening": {"exterminate": 0.9, "ethniccleansing": 0.95, "genocide": 0.8},
    "illicit": {"counterfeit": 0.8, "launder": 0.8, "smuggle": 0.8, "shoplift": 0.8, "lockpick": 0.6},
    "illicit/violent": {"bomb": 0.8, "detonator": 0.9, "explosive": 0.7, "ghostgun": 0.9},
    "self-harm": {"selfharm": 0.9, "suicide": 0.8, "cutting": 0.5},
    "self-harm/intent": {"suicidal": 0.9, "hopeless": 0.5},
    "self-harm/instructions": {"overdose": 0.8, "noose": 0.8},
    "sexual": {"nsfw": 0.8, "erotic": 0.8, "porn": 0.9, "nude": 0.6},
    "sexual/minors": {"csam": 1.0},
    "violence": {"kill": 0.8, "murder": 0.9, "stab": 0.8, "shoot": 0.7, "assault": 0.6},
    "violence/graphic": {"gore": 0.9, "dismember": 0.9, "mutilate": 0.9, "bloodbath": 0.8},
}
#: The first marker of each category: what ``flag_input``/``flag_output`` directives insert.
MARKERS: Final[dict[str, str]] = {category: next(iter(words)) for category, words in LEXICON.items()}

DEFAULT_THRESHOLDS: Final[dict[str, float]] = {
    **dict.fromkeys(OMNI_CATEGORIES, 0.5),
    "sexual/minors": 0.3,
    "self-harm/intent": 0.4,
    "self-harm/instructions": 0.4,
}
IMAGE_CATEGORIES: Final[frozenset[str]] = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence", "violence/graphic"}
)
PARENT_SHARE: Final = 0.85

_WORD_TO_CATEGORIES: Final[dict[str, tuple[tuple[str, float], ...]]] = {}
for _category, _words in LEXICON.items():
    for _word, _weight in _words.items():
        _WORD_TO_CATEGORIES[_word] = (*_WORD_TO_CATEGORIES.get(_word, ()), (_category, _weight))
_WORD = re.compile(r"[a-z]+")

#: 256 noise vectors (one score per category, each in ``[1e-6, 1e-4)``), picked by a crc32 of the text:
#: stable across processes (``hash()`` is salted, crc32 isn't) and cheap on the hot path.
NOISE_CEILING: Final = 1e-4
_NOISE: Final[tuple[tuple[float, ...], ...]] = tuple(
    tuple(round(1e-6 + (NOISE_CEILING - 1e-6) * ((row * 97 + column * 61) % 256) / 256, 8) for column in range(13))
    for row in range(256)
)
_TEXT_ONLY: Final[dict[str, list[InputType]]] = {category: ["text"] for category in OMNI_CATEGORIES}


def score_words(words: list[str]) -> dict[str, float]:
    """Lexicon scores (without noise) of the distinct markers among ``words`` and their adjacent pairs.

    Pairs are joined, so ``self-harm``, ``self harm`` and ``selfharm`` all match the marker ``selfharm``.
    """
    candidates = set(words)
    candidates.update(map(operator.add, words, words[1:]))
    keep: dict[str, float] = {}
    for word in candidates.intersection(_WORD_TO_CATEGORIES):
        for category, weight in _WORD_TO_CATEGORIES[word]:
            keep[category] = 1 - (1 - keep.get(category, 0.0)) * (1 - weight)
    for category in list(keep):
        parent, slash, _ = category.partition("/")
        if slash:
            keep[parent] = max(keep.get(parent, 0.0), keep[category] * PARENT_SHARE)
    return keep


def thresholds_with(overrides: Mapping[str, float]) -> dict[str, float]:
    """The default thresholds with some replaced; an unknown category or a value the noise floor could reach
    (at or below ``NOISE_CEILING``) or above 1 is an error."""
    unknown = set(overrides) - set(OMNI_CATEGORIES)
    if unknown:
        raise ValueError(f"unknown moderation categories: {', '.join(sorted(unknown))}")
    for category, value in overrides.items():
        if not NOISE_CEILING < value <= 1:
            raise ValueError(f"threshold of {category} must be within ({NOISE_CEILING}, 1]")
    return {**DEFAULT_THRESHOLDS, **overrides}


def words_of(text: str) -> list[str]:
    """Lower-case alphabetic runs; ``self-harm`` reads as ``self``, ``harm`` (markers are single words)."""
    return _WORD.findall(text.lower())


def classify(
    texts: Iterable[str],
    image_urls: Iterable[str] = (),
    *,
    model: str,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    extra_categories: Iterable[str] = (),
) -> ModerationResult:
    """One moderation result over all ``texts`` and images together.

    ``thresholds`` must name every category (see :func:`thresholds_with`). ``extra_categories`` adds those
    categories' marker words to the text (the ``flag_input`` directive).
    """
    text = "\n".join(texts)
    words = words_of(text)
    words.extend(MARKERS[category] for category in extra_categories)
    urls = list(image_urls)
    found = score_words(words)
    if urls:
        image_words = [word for url in urls if not url.startswith("data:") for word in words_of(url)]
        for category, score in score_words(image_words).items():
            if category in IMAGE_CATEGORIES:
                found[category] = max(found.get(category, 0.0), score)
    noise = _NOISE[zlib.crc32(text.encode()) & 0xFF]
    scores = dict(zip(OMNI_CATEGORIES, noise, strict=True))
    categories = dict.fromkeys(OMNI_CATEGORIES, False)
    for category, score in found.items():
        scores[category] = round(min(1.0, score + scores[category]), 8)
        categories[category] = scores[category] >= thresholds[category]
    return ModerationResult(
        categories=categories,
        category_applied_input_types=_applied_input_types(has_text=bool(text) or not urls, has_image=bool(urls)),
        category_scores=scores,
        flagged=any(categories.values()),
        model=model,
    )


def _applied_input_types(*, has_text: bool, has_image: bool) -> dict[str, list[InputType]]:
    if has_text and not has_image:
        return _TEXT_ONLY  # shared: results are encoded, never mutated
    text: list[InputType] = ["text"] if has_text else []
    return {category: [*text, "image"] if category in IMAGE_CATEGORIES else list(text) for category in OMNI_CATEGORIES}

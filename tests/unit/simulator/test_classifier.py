import pytest

from pipeline.simulator.classifier import (
    DEFAULT_THRESHOLDS,
    IMAGE_CATEGORIES,
    LEXICON,
    MARKERS,
    NOISE_CEILING,
    classify,
    thresholds_with,
    words_of,
)
from pipeline.simulator.generation import VOCABULARY
from schemas.moderations import OMNI_CATEGORIES

MODEL = "omni-moderation-latest"


def test_the_lexicon_covers_exactly_the_13_omni_categories() -> None:
    assert tuple(LEXICON) == OMNI_CATEGORIES
    assert set(DEFAULT_THRESHOLDS) == set(OMNI_CATEGORIES)


@pytest.mark.parametrize("category", OMNI_CATEGORIES)
def test_each_categorys_marker_flags_that_category(category: str) -> None:
    result = classify([f"a sentence with {MARKERS[category]} in it"], model=MODEL)
    assert result.flagged
    assert result.categories[category]
    assert result.category_scores[category] >= DEFAULT_THRESHOLDS[category]


def test_clean_text_scores_a_small_nonzero_floor_and_is_not_flagged() -> None:
    result = classify(["Please summarise the quarterly garden report."], model=MODEL)
    assert not result.flagged
    assert not any(result.categories.values())
    assert all(0 < score < NOISE_CEILING for score in result.category_scores.values())
    assert result.model == MODEL
    assert list(result.category_scores) == list(OMNI_CATEGORIES)


def test_scores_are_deterministic_and_depend_on_the_text() -> None:
    first = classify(["the same words"], model=MODEL)
    assert classify(["the same words"], model=MODEL) == first
    assert classify(["other words entirely"], model=MODEL).category_scores != first.category_scores


def test_a_subcategory_lifts_its_parent() -> None:
    result = classify(["scenes of gore"], model=MODEL)
    assert result.categories["violence/graphic"]
    assert result.categories["violence"]
    assert result.category_scores["violence"] < result.category_scores["violence/graphic"]


def test_markers_match_across_hyphens_and_spaces() -> None:
    for text in ("self-harm", "self harm", "SELFHARM"):
        assert classify([text], model=MODEL).categories["self-harm"], text


def test_markers_match_whole_words_only() -> None:
    assert not classify(["skill and skillet"], model=MODEL).flagged  # contains "kill"


def test_no_generated_word_or_word_pair_is_a_marker() -> None:
    words = [word.lower() for word in VOCABULARY]
    pairs = [first + second for first in words for second in words]
    text = " ".join(words)
    assert not classify([text], model=MODEL).flagged
    assert not classify([" ".join(pairs)], model=MODEL).flagged


def test_thresholds_can_be_overridden_per_category() -> None:
    strict = thresholds_with({"harassment": 0.95})
    assert classify(["you loser"], model=MODEL).categories["harassment"]
    assert not classify(["you loser"], model=MODEL, thresholds=strict).categories["harassment"]


@pytest.mark.parametrize("bad", [{"nonsense": 0.5}, {"hate": 0.0}, {"hate": 1.5}])
def test_bad_threshold_overrides_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        thresholds_with(bad)


def test_text_only_input_applies_text_to_every_category() -> None:
    result = classify(["hello"], model=MODEL)
    assert all(types == ["text"] for types in result.category_applied_input_types.values())


def test_images_apply_only_to_the_image_categories() -> None:
    result = classify(["hello"], ["https://img.example/cat.png"], model=MODEL)
    for category, types in result.category_applied_input_types.items():
        assert types == (["text", "image"] if category in IMAGE_CATEGORIES else ["text"])


def test_an_image_alone_has_no_text_modality() -> None:
    result = classify([], ["https://img.example/cat.png"], model=MODEL)
    assert result.category_applied_input_types["violence"] == ["image"]
    assert result.category_applied_input_types["hate"] == []


def test_image_url_words_score_the_image_categories_only() -> None:
    assert classify([], ["https://img.example/gore.png"], model=MODEL).categories["violence/graphic"]
    assert not classify([], ["https://img.example/subhuman.png"], model=MODEL).categories["hate"]
    assert not classify([], ["data:image/png;base64,Z29yZQ=="], model=MODEL).flagged


def test_extra_categories_add_their_markers() -> None:
    result = classify(["hello"], model=MODEL, extra_categories=["hate"])
    assert result.categories["hate"]


def test_words_are_lower_case_alphabetic_runs() -> None:
    assert words_of("Self-Harm, 42 KILL!") == ["self", "harm", "kill"]

from pipeline.simulator.classifier import MARKERS
from pipeline.simulator.generation import VOCABULARY, estimate_tokens, generate, prompt_tokens, split_tokens


def gen(prompt: str = "Write a haiku", **kwargs: object) -> object:
    options: dict[str, object] = {"seed": 0, "index": 0, "max_tokens": None, "stop": []}
    options.update(kwargs)
    return generate(prompt, **options)  # type: ignore[arg-type]


def test_vocabulary_has_128_distinct_words() -> None:
    assert len(VOCABULARY) == 128 == len(set(VOCABULARY))


def test_same_prompt_and_seed_give_the_same_text() -> None:
    assert gen() == gen()


def test_seed_prompt_and_choice_index_each_change_the_text() -> None:
    base = generate("Write a haiku", seed=0, index=0, max_tokens=None, stop=[])
    assert generate("Write a haiku", seed=1, index=0, max_tokens=None, stop=[]).text != base.text
    assert generate("Write a limerick", seed=0, index=0, max_tokens=None, stop=[]).text != base.text
    assert generate("Write a haiku", seed=0, index=1, max_tokens=None, stop=[]).text != base.text


def test_tokens_concatenate_to_the_text() -> None:
    for seed in range(50):
        result = generate("prompt", seed=seed, index=0, max_tokens=None, stop=[])
        assert "".join(result.tokens) == result.text
        assert 8 <= len(result.tokens) <= 32
        assert result.finish_reason == "stop"
        assert result.text.endswith(".")


def test_max_tokens_cuts_with_finish_reason_length() -> None:
    result = generate("prompt", seed=3, index=0, max_tokens=4, stop=[])
    assert len(result.tokens) == 4
    assert result.finish_reason == "length"
    assert result.text == "".join(result.tokens)


def test_stop_sequence_ends_the_text_before_it() -> None:
    full = generate("prompt", seed=5, index=0, max_tokens=None, stop=[])
    stop_word = full.tokens[3]
    result = generate("prompt", seed=5, index=0, max_tokens=None, stop=["zzz", stop_word])
    assert result.finish_reason == "stop"
    assert result.text == "".join(full.tokens[:3])
    assert stop_word not in result.text


def test_marker_starts_the_output() -> None:
    result = generate("prompt", seed=0, index=0, max_tokens=None, stop=[], marker=MARKERS["violence"])
    assert result.tokens[0] == MARKERS["violence"].capitalize()


def test_token_estimates() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert prompt_tokens(["abcd", "abcdefgh"], image_count=1) == 3 * 2 + 3 + 1 + 2 + 85
    assert split_tokens("One two  three.") == ["One", " two", "  three."]

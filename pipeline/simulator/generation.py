"""Deterministic "model output": text derived from the prompt and ``seed``, and a simple token count.

Tokens are whitespace-led words (``"Hello"``, ``" world"``, ``" again."``): a streamed content chunk is one
token, and ``completion_tokens`` is how many were generated, so the stream and the non-streaming body always
agree. Prompt tokens are estimated like the API's rule of thumb: about four characters per token, plus a few
tokens of framing per message and per reply.

A choice is 8 to 32 words from a neutral vocabulary (no lexicon marker can appear by chance), picked by
the bytes of a hash of the prompt, the request's ``seed`` and the choice index. Generation stops at
the first ``stop`` sequence (``finish_reason: "stop"``, the sequence itself left out) or after
``max_completion_tokens`` tokens (``"length"``). A ``flag_output`` directive starts every choice with its
category's marker word, so the output moderation flags it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

import msgspec

from schemas.chat import FinishReason

_WORDS: Final = """
    the a an of to and in on for with as by at from about into over after before under between through
    river mountain garden window morning evening letter lantern harbor meadow bridge market library signal
    quiet bright gentle steady curious patient careful simple clear warm distant early late silver green
    walks carries builds finds keeps opens writes reads follows gathers answers watches remembers shares
    today tomorrow slowly softly together again often rarely nearly always here there perhaps certainly
    idea story journey question pattern message answer detail picture moment season voice engine circle
    orchard valley candle compass ribbon pebble feather meadowlark teapot notebook kettle blanket puzzle
    harvest sunrise thunder rainbow whisper melody canvas pencil marble velvet cedar maple willow copper
    amber island forest glacier prairie sparrow heron otter
"""
#: 128 neutral words (a digest byte picks one with ``& 127``); none is, or pairs into, a lexicon marker.
VOCABULARY: Final[tuple[str, ...]] = tuple(_WORDS.split())
PER_MESSAGE_TOKENS: Final = 3
PER_REPLY_TOKENS: Final = 3
PER_IMAGE_TOKENS: Final = 85
MIN_WORDS: Final = 8
MAX_WORDS: Final = 32
_TOKEN: Final = re.compile(r"\s*\S+")


class Generated(msgspec.Struct, frozen=True):
    text: str
    tokens: list[str]
    finish_reason: FinishReason


def estimate_tokens(text: str) -> int:
    """About four characters per token, rounded up; at least one token for non-empty text."""
    return (len(text) + 3) // 4


def prompt_tokens(message_texts: Sequence[str], image_count: int) -> int:
    framing = PER_MESSAGE_TOKENS * len(message_texts) + PER_REPLY_TOKENS
    return framing + sum(estimate_tokens(text) for text in message_texts) + PER_IMAGE_TOKENS * image_count


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


_BY_BYTE: Final = VOCABULARY * 2
_FIRST_BY_BYTE: Final = tuple(word.capitalize() for word in _BY_BYTE)
_LATER_BY_BYTE: Final = tuple(" " + word for word in _BY_BYTE)


def _tokens(prompt: str, seed: int, index: int, marker: str | None) -> list[str]:
    """One digest byte per word (and one for the length): fast, and the same on every machine."""
    digest = hashlib.blake2b(f"{seed}:{index}:{prompt}".encode(), digest_size=MAX_WORDS + 1).digest()
    end = 1 + MIN_WORDS + digest[0] % (MAX_WORDS - MIN_WORDS + 1)
    if marker is None:
        tokens = [_FIRST_BY_BYTE[digest[1]], *map(_LATER_BY_BYTE.__getitem__, digest[2:end])]
    else:
        tokens = [marker.capitalize(), *map(_LATER_BY_BYTE.__getitem__, digest[1:end])]
    tokens[-1] += "."
    return tokens


def generate(
    prompt: str,
    *,
    seed: int,
    index: int,
    max_tokens: int | None,
    stop: Sequence[str],
    marker: str | None = None,
) -> Generated:
    """Choice ``index`` of the answer to ``prompt``."""
    tokens = _tokens(prompt, seed, index, marker)
    finish_reason: FinishReason = "stop"
    if stop:
        text = "".join(tokens)
        cut = min((found for found in (text.find(s) for s in stop if s) if found >= 0), default=-1)
        if cut >= 0:
            tokens = split_tokens(text[:cut])
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens = tokens[:max_tokens]
        finish_reason = "length"
    return Generated(text="".join(tokens), tokens=tokens, finish_reason=finish_reason)

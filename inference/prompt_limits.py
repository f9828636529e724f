"""Prompt size limits checked before any tokenising: a prompt that cannot fit the context is refused by its length.

A token covers at most `longest_token_chars(tokenizer)` characters (byte-level
BPE vocabularies store one character per byte, and a text character is at
least one byte), so a prompt of more than `max_context * longest` characters
has more than `max_context` tokens whatever its content: it is refused (400
context_length_exceeded) without rendering or tokenising it. Prompts under
that bound are tokenised off the event loop and checked exactly.

Library only.
"""
from __future__ import annotations

import weakref

_longest: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()


def longest_token_chars(tokenizer) -> int:
    """The longest vocabulary entry in characters (computed once per tokenizer)."""
    try:
        return _longest[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    try:
        _longest[tokenizer] = max(longest, 1)
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return max(longest, 1)


def max_prompt_chars(engine) -> int:
    """Characters beyond which a prompt surely has more tokens than the engine's context."""
    with engine.tokenizer_lock:
        return engine.max_context * longest_token_chars(engine.tokenizer)

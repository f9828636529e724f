"""Turn dataset rows into token ids and labels, with loss only where the model should learn.

Rows are rendered with the model's own chat template, then tokenised once with
character offsets; a token is supervised when it starts inside an assistant
span of the rendered text. Assistant spans are found structurally:

* ChatML-style templates (plain ChatML and the stock Qwen3 template, neither of
  which has `{% generation %}` markers): every `<|im_start|>assistant\\n ...
  <|im_end|>` region of the *final* rendered text, so whatever the template
  rewrote (Qwen3 strips `<think>` from earlier turns and injects an empty
  think block into the last one) is exactly what is supervised, in every turn;
* other templates: each assistant turn is located by rendering the prefix up to
  it with the generation prompt and checking that it is a prefix of the full
  render (an error otherwise, never a silent mask).

completion_v1 rows supervise the completion (`prompt`/`completion`) or all of
`text`, each followed by the EOS token. Truncation is on the right at
max_length; the number of supervised tokens left is reported per example.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

IGNORE_INDEX = -100
SCHEMAS = ("chat_sft_v1", "completion_v1", "syllo_v1")
CHATML_ASSISTANT = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.S)


class DataError(ValueError):
    """A row that cannot be turned into a training example (message says why)."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    original_length: int
    truncated: bool = False
    index: int = -1
    error: str | None = None
    meta: dict = field(default_factory=dict)
    _n_supervised: int | None = field(default=None, repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        if self._n_supervised is None:
            self._n_supervised = sum(1 for x in self.labels if x != IGNORE_INDEX)
        return self._n_supervised


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise DataError(f"{model_dir}: a fast tokenizer (tokenizer.json) is required for exact label masks")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; blank lines skipped; a bad line raises DataError naming file and line."""
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            rows.append(row)
    return rows


def _is_chatml(tokenizer) -> bool:
    template = tokenizer.chat_template or ""
    return "<|im_start|>" in template and "<|im_end|>" in template


def _chat_messages(row: dict) -> list[dict]:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list")
    out = []
    system_prompt = row.get("system_prompt")
    if isinstance(system_prompt, str) and system_prompt and not (
            isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        out.append({"role": "system", "content": system_prompt})  # the row-level field of chat_sft_v1
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"messages[{i}]: needs role system|user|assistant and string content")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError("no assistant turn: nothing to learn")
    return out


def _spans_chatml(text: str) -> list[tuple[int, int]]:
    return [(m.start(1), m.end(1)) for m in CHATML_ASSISTANT.finditer(text)]


def _spans_by_prefix(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(prefix) or not text.startswith(upto):
            raise DataError("chat template rewrites earlier turns and has no {% generation %} markers: cannot mask safely")
        spans.append((len(prefix), len(upto)))
    return spans


def _mask_from_spans(offsets, spans, input_ids) -> tuple[list[int], list[tuple[int, int]]]:
    """Labels with the tokens that start inside a span supervised, and those token ranges.
    Token start offsets are non-decreasing, so each span maps to one contiguous token range."""
    starts = [o[0] for o in offsets]
    labels = [IGNORE_INDEX] * len(input_ids)
    ranges = []
    for a, b in spans:
        lo, hi = bisect_left(starts, a), bisect_left(starts, b)
        if hi > lo:
            labels[lo:hi] = input_ids[lo:hi]
            ranges.append((lo, hi))
    return labels, ranges


def _first_token_at_or_after(encoding, char: int) -> int | None:
    """Index of the first token starting at or after `char` (None when the encoding cannot say)."""
    t = encoding.char_to_token(char)
    if t is None:
        return None
    return t + 1 if encoding.token_to_chars(t)[0] < char else t


def _encode_and_mask(tokenizer, rendered: list[tuple[str, list[tuple[int, int]]]]):
    """(ids, labels, supervised token ranges) per rendered text.

    Uses the Rust backend directly when it carries no truncation/padding state, locating each span's token range
    with two char->token lookups instead of materialising every token's offsets (the bulk of the cost otherwise);
    the Python wrapper with full offsets elsewhere."""
    texts = [text for text, _ in rendered]
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or getattr(backend, "truncation", None) is not None or getattr(backend, "padding", None) is not None:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(ids,) + _mask_from_spans(offsets, spans, ids)
                for ids, offsets, (_, spans) in zip(enc["input_ids"], enc["offset_mapping"], rendered)]
    out = []
    for e, (text, spans) in zip(backend.encode_batch(texts, add_special_tokens=False), rendered):
        ids = e.ids
        n = len(ids)
        labels = [IGNORE_INDEX] * n
        ranges = []
        for a, b in spans:
            lo = _first_token_at_or_after(e, a) if a < len(text) else n
            hi = _first_token_at_or_after(e, b) if b < len(text) else n
            if lo is None or hi is None:  # an uncovered character: fall back to full offsets for this text
                labels, ranges = _mask_from_spans(e.offsets, spans, ids)
                break
            if hi > lo:
                labels[lo:hi] = ids[lo:hi]
                ranges.append((lo, hi))
        out.append((ids, labels, ranges))
    return out


def render_rows(rows: list[dict], tokenizer, schema_id: str) -> list[tuple[str, list[tuple[int, int]]] | DataError]:
    """Rendered text and supervised character spans per row (or the DataError for that row)."""
    if schema_id not in SCHEMAS:
        raise DataError(f"unknown schema_id {schema_id!r} (known: {', '.join(SCHEMAS)})")
    out: list = []
    if schema_id == "completion_v1":
        eos = tokenizer.eos_token or ""
        for row in rows:
            if isinstance(row.get("text"), str) and "prompt" not in row:
                out.append((row["text"] + eos, [(0, len(row["text"]) + len(eos))]))
            elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
                p, c = row["prompt"], row["completion"]
                out.append((p + c + eos, [(len(p), len(p) + len(c) + len(eos))]))
            else:
                out.append(DataError("completion_v1 needs string 'text', or string 'prompt' and 'completion'"))
        return out
    chatml = _is_chatml(tokenizer)
    convs, where = [], []
    for i, row in enumerate(rows):
        try:
            convs.append(_chat_messages(row))
            where.append(i)
        except DataError as exc:
            out.append(exc)
        else:
            out.append(None)
    texts = tokenizer.apply_chat_template(convs, tokenize=False) if convs else []
    for i, messages, text in zip(where, convs, texts):
        try:
            spans = _spans_chatml(text) if chatml else _spans_by_prefix(tokenizer, messages, text)
            if not spans:
                raise DataError("the chat template rendered no assistant span")
            out[i] = (text, spans)
        except DataError as exc:
            out[i] = exc
    return out


def encode_examples(rows: list[dict], tokenizer, schema_id: str, max_length: int) -> list[EncodedExample]:
    """Encode every row (batched tokenisation). Rows that cannot be encoded carry `.error`; nothing is skipped silently."""
    rendered = render_rows(rows, tokenizer, schema_id)
    ok = [(i, r) for i, r in enumerate(rendered) if not isinstance(r, DataError)]
    results: list[EncodedExample | None] = [None] * len(rows)
    for i, r in enumerate(rendered):
        if isinstance(r, DataError):
            results[i] = EncodedExample([], [], 0, index=i, error=str(r))
    if ok:
        encoded = _encode_and_mask(tokenizer, [r for _, r in ok])
        for (i, _), (ids, labels, ranges) in zip(ok, encoded):
            n = len(ids)
            ex = EncodedExample(list(ids[:max_length]), labels[:max_length], n, truncated=n > max_length, index=i,
                                _n_supervised=sum(max(0, min(hi, max_length) - lo) for lo, hi in ranges))
            if ex.n_supervised == 0:
                ex.error = ("no supervised tokens left after truncation to max_length "
                            f"{max_length} (example has {n} tokens)") if ex.truncated else "no supervised tokens"
            results[i] = ex
    return results  # type: ignore[return-value]


def supervised_text(tokenizer, example: EncodedExample) -> str:
    """The supervised tokens decoded back to text (for tests and previews)."""
    return tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE_INDEX])


def chat_prompt_and_answer(row: dict) -> tuple[list[dict], str] | None:
    """Messages up to the last assistant turn, and that turn's content (for generation previews and evals)."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            return messages[:i], str(messages[i].get("content", ""))
    return None


def iter_rows(paths: Iterable[str | Path]):
    for p in paths:
        yield from read_jsonl(p)

"""One loaded model version and its running batch: prefill, batched decode, sampling, detokenisation.

A `ModelEngine` holds a model, its tokenizer and the KV cache of every
sequence currently decoding on it. Sequences of different lengths share one
left-padded `DynamicCache`; the engine builds the 4-D attention mask and the
per-row position ids itself, so a new sequence can join the batch (its
prefill is merged in) and a finished one can leave (its row is dropped)
between any two decode steps: continuous batching without paged attention,
which suits CPU and small models. Only the scheduler thread calls `prefill`,
`decode_step` and `drop`; `generate_sync` is the smoke test, run before a
version is allowed to serve.

Sampling and logprobs live in inference/sampling.py. Library only; see inference/scheduler.py for the loop
that drives it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from inference.logits import build_processors
from inference.sampling import TokenLogprob, byte_level_bytes, logprob_entries, sample

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.9
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    think_penalty: bool = False
    post_stop_penalty: bool = False
    ignore_eos: bool = False
    top_k: int = 0                       # 0 = off
    presence_penalty: float = 0.0        # OpenAI's penalties, over the tokens generated so far
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None          # None: none; k: the chosen token's logprob plus the k best alternatives
    prompt_logprobs: int | None = None   # the same for every prompt token after the first (echo + logprobs)

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclass
class Event:
    """What the scheduler tells a waiting request: a text delta, or the end (finish_reason set), or an error."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None   # entries of the tokens this event's text came from (if asked)


class Sequence:
    """One request's generation state. `sink` is called from the scheduler thread with each Event."""

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 engine: "ModelEngine", sink: Callable[[Event], None]):
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.engine = engine
        self.sink = sink
        self.output_ids: list[int] = []
        self.sent = ""            # text already emitted
        self.aborted = False      # set by the event loop when the client goes away
        self.tokens_at_abort: int | None = None
        self.finished = False
        self.finish_reason: str | None = None
        self.arrival = time.monotonic()
        self.scheduled_at: float | None = None   # admitted into a batch (queue time = scheduled_at - arrival)
        self.output_logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self._logprobs_sent = 0
        self.pending_logprob: TokenLogprob | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.itl: list[float] = []
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(int(params.seed))
        self.processors = build_processors(engine.tokenizer, len(prompt_ids), params.think_penalty,
                                           params.post_stop_penalty, engine.eos_token_ids)

    def abort(self) -> None:
        if not self.aborted:
            self.tokens_at_abort = len(self.output_ids)  # the scheduler appends nothing after this (tests check)
        self.aborted = True


class _BufferedLayer(DynamicLayer):
    """A DynamicLayer that appends into spare capacity (doubling when full) instead of re-concatenating the
    whole cache at every decode step, which is what makes long generations slow with the stock layer."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._len = keys.shape[-2]
        self._k = self._alloc(keys, self._len + spare)
        self._v = self._alloc(values, self._len + spare)
        self._views()

    @staticmethod
    def _alloc(src: torch.Tensor, capacity: int) -> torch.Tensor:
        b, h, n, d = src.shape
        buf = src.new_empty((b, h, capacity, d))
        buf[:, :, :n] = src
        return buf

    def _views(self) -> None:
        self.keys = self._k[:, :, : self._len]
        self.values = self._v[:, :, : self._len]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self._len + n > self._k.shape[2]:
            cap = 2 * (self._len + n)
            self._k, self._v = self._alloc(self.keys, cap), self._alloc(self.values, cap)
        self._k[:, :, self._len: self._len + n] = key_states
        self._v[:, :, self._len: self._len + n] = value_states
        self._len += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len


def _buffered_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_BufferedLayer(k, v) for k, v in layers]
    return cache


def _take_logprobs(s: "Sequence") -> list[TokenLogprob] | None:
    if s.params.logprobs is None:
        return None
    new = s.output_logprobs[s._logprobs_sent:]
    s._logprobs_sent = len(s.output_logprobs)
    return new



class NonFiniteLogits(RuntimeError):
    """The model produced NaN/Inf logits."""


class ModelEngine:
    """A model version on a device plus its continuous batch."""

    def __init__(self, model, tokenizer, version: str, source_path: str, global_step: int | None,
                 max_context: int, content_id: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.version = version
        self.source_path = source_path
        self.global_step = global_step
        self.max_context = max_context
        self.content_id = content_id
        self.device = next(model.parameters()).device
        self.loaded_at = time.time()
        self.retired = False
        self.pending = 0          # sequences bound to this engine and not finished (waiting or running)
        self.forward_passes = 0   # prefill + decode forwards run (tests use it to prove batching)
        self.eos_token_ids = self._eos_ids()
        # Fast tokenizers raise "Already borrowed" when one thread encodes while another decodes.
        self.tokenizer_lock = threading.RLock()
        self._pieces: dict[int, tuple[str, list[int]]] = {}
        layer_types = getattr(model.config, "layer_types", None) or ["full_attention"]
        self._mask_keys = sorted(set(layer_types))
        # Batch state (scheduler thread only).
        self.rows: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.valid: torch.Tensor | None = None      # [B, L] bool: real (non-pad) key positions
        self.next_pos: torch.Tensor | None = None   # [B] position id of the next token
        self.last_tokens: torch.Tensor | None = None  # [B] token fed at the next decode step

    def _eos_ids(self) -> list[int]:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        for src in (getattr(gen, "eos_token_id", None), getattr(self.model.config, "eos_token_id", None),
                    self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(i) for i in src)
        return sorted(ids)

    # ---- prompts -------------------------------------------------------------------------------
    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        with self.tokenizer_lock:
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if not isinstance(enc, list) else enc
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        with self.tokenizer_lock:
            return [int(i) for i in self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        """A token-id prompt as text (for echo): special tokens kept, so the echo shows what the model saw."""
        with self.tokenizer_lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_piece(self, token_id: int) -> tuple[str, list[int]]:
        """One token as OpenAI's logprobs show it: its text (decoded alone) and its exact UTF-8 bytes (a piece
        of a multi-byte character decodes alone to U+FFFD, but its bytes let a client rebuild the text)."""
        piece = self._pieces.get(token_id)
        if piece is None:
            with self.tokenizer_lock:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
                raw = self.tokenizer.convert_ids_to_tokens(token_id)
            data = byte_level_bytes(raw) if isinstance(raw, str) else None
            piece = self._pieces[token_id] = (text, list(data if data is not None else text.encode("utf-8")))
        return piece

    @property
    def vocab_limit(self) -> int:
        return int(self.model.config.vocab_size)

    # ---- the forward passes ----------------------------------------------------------------------
    def _forward(self, input_ids, mask4d, position_ids, cache, all_logits: bool = False):
        """Logits of the last position ([B, V]), or of every position ([B, L, V]) with `all_logits` (scoring)."""
        self.forward_passes += 1
        out = self.model(input_ids=input_ids, attention_mask={k: mask4d for k in self._mask_keys},
                         position_ids=position_ids, past_key_values=cache, use_cache=True,
                         logits_to_keep=0 if all_logits else 1)
        logits = out.logits.float()
        return (logits if all_logits else logits[:, -1, :]), out.past_key_values

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[Sequence]:
        """Run the prompts of `seqs`, sample their first token, merge the ones still generating into the batch;
        returns the ones already done (they never join the batch).

        Prompts that need per-position log-probabilities (echo + logprobs) run one at a time, so the full
        [L, vocab] logits exist for one prompt at a time only; an echo without logprobs and max_tokens=0
        needs no forward at all."""
        now = time.monotonic()
        plain, scoring = [], []
        for s in seqs:
            s.scheduled_at = now
            if s.params.prompt_logprobs is not None:
                scoring.append(s)
            elif s.params.max_tokens == 0:
                self._finish(s, "length", "")
            else:
                plain.append(s)
        if plain:
            self._prefill(plain)
        for s in scoring:
            self._prefill([s], all_logits=True)
        return [s for s in seqs if s.finished or s.aborted]

    def _prefill(self, seqs: list[Sequence], all_logits: bool = False) -> None:
        b = len(seqs)
        length = max(len(s.prompt_ids) for s in seqs)
        input_ids = torch.zeros((b, length), dtype=torch.long)
        valid = torch.zeros((b, length), dtype=torch.bool)
        for i, s in enumerate(seqs):
            n = len(s.prompt_ids)
            input_ids[i, length - n:] = torch.tensor(s.prompt_ids, dtype=torch.long)
            valid[i, length - n:] = True
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones((length, length), dtype=torch.bool).tril()
        # Pad queries attend to themselves only: an all-masked row would give NaN that leaks through the cache.
        mask = (causal[None] & valid[:, None, :]) | torch.eye(length, dtype=torch.bool)[None]
        cache = DynamicCache()
        logits, cache = self._forward(input_ids.to(self.device), mask[:, None].to(self.device),
                                      positions.to(self.device), cache, all_logits=all_logits)
        if all_logits:  # b == 1: score every prompt token from the position before it
            s = seqs[0]
            full = logits[0].cpu()
            if not torch.isfinite(full).all():
                raise NonFiniteLogits(f"{self.version}: model produced NaN/Inf logits")
            lp = full[:-1].log_softmax(dim=-1)
            targets = torch.tensor(s.prompt_ids[1:], dtype=torch.long)
            s.prompt_logprobs = [None] + logprob_entries(lp, targets, s.params.prompt_logprobs)
            logits = full[-1:]
            if s.params.max_tokens == 0:
                self._finish(s, "length", "")
                return
        tokens = self._sample(logits, seqs)
        now = time.monotonic()
        for s, tok in zip(seqs, tokens.tolist()):
            s.first_token_at = s.last_token_at = now
            self._append(s, tok)
        # A request done at its first token (max_tokens=1, an end token) never joins the batch.
        keep = [i for i, s in enumerate(seqs) if not (s.finished or s.aborted)]
        if not keep:
            return
        new_layers = [(layer.keys, layer.values) for layer in cache.layers]
        if len(keep) < b:
            idx = torch.tensor(keep, dtype=torch.long)
            dev = idx.to(self.device)
            new_layers = [(k[dev], v[dev]) for k, v in new_layers]
            seqs, valid, positions, tokens = [seqs[i] for i in keep], valid[idx], positions[idx], tokens[idx]
        self._merge(seqs, new_layers, valid, positions[:, -1] + 1, tokens)

    @torch.inference_mode()
    def decode_step(self) -> None:
        """One token for every running sequence in a single forward pass."""
        if not self.rows:
            return
        b = len(self.rows)
        self.valid = torch.cat([self.valid, torch.ones((b, 1), dtype=torch.bool)], dim=1)
        mask = self.valid[:, None, None, :].to(self.device)
        logits, self.cache = self._forward(self.last_tokens[:, None].to(self.device), mask,
                                           self.next_pos[:, None].to(self.device), self.cache)
        tokens = self._sample(logits, self.rows)
        self.next_pos = self.next_pos + 1
        self.last_tokens = tokens
        now = time.monotonic()
        for s, tok in zip(self.rows, tokens.tolist()):
            if s.last_token_at is not None:
                s.itl.append(now - s.last_token_at)
            s.last_token_at = now
            self._append(s, tok)

    def _merge(self, seqs, new_layers, valid, next_pos, tokens) -> None:
        if not self.rows:
            self.rows, self.cache, self.valid = list(seqs), _buffered_cache(new_layers), valid
            self.next_pos, self.last_tokens = next_pos, tokens
            return
        la, lb = self.valid.shape[1], valid.shape[1]
        length = max(la, lb)

        def pad(t, n, dim):  # left-pad dim by n
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        merged = []
        for old, new in zip(self.cache.layers, new_layers):
            k = torch.cat([pad(old.keys, length - la, 2), pad(new[0], length - lb, 2)], dim=0)
            v = torch.cat([pad(old.values, length - la, 2), pad(new[1], length - lb, 2)], dim=0)
            merged.append((k, v))
        self.cache = _buffered_cache(merged)
        self.valid = torch.cat([pad(self.valid, length - la, 1), pad(valid, length - lb, 1)], dim=0)
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.last_tokens = torch.cat([self.last_tokens, tokens])
        self.rows.extend(seqs)

    def drop_finished(self) -> list[Sequence]:
        """Remove finished or aborted rows from the batch; trim left padding no row needs any more."""
        gone = [s for s in self.rows if s.finished or s.aborted]
        if not gone:
            return []
        keep = [i for i, s in enumerate(self.rows) if not (s.finished or s.aborted)]
        if not keep:
            self.rows, self.cache, self.valid, self.next_pos, self.last_tokens = [], None, None, None, None
            return gone
        idx = torch.tensor(keep, dtype=torch.long)
        valid = self.valid[idx]
        first = int(valid.any(dim=0).long().argmax())  # first column any row still uses
        layers = []
        for layer in self.cache.layers:
            layers.append((layer.keys[idx.to(layer.keys.device), :, first:], layer.values[idx.to(layer.keys.device), :, first:]))
        self.cache = _buffered_cache(layers)
        self.valid = valid[:, first:]
        self.next_pos = self.next_pos[idx]
        self.last_tokens = self.last_tokens[idx]
        self.rows = [self.rows[i] for i in keep]
        return gone

    def reset_batch(self) -> list[Sequence]:
        rows = self.rows
        self.rows, self.cache, self.valid, self.next_pos, self.last_tokens = [], None, None, None, None
        return rows

    # ---- sampling ---------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        if not torch.isfinite(logits).all():
            raise NonFiniteLogits(f"{self.version}: model produced NaN/Inf logits")
        return sample(logits, seqs, self.tokenizer_lock)
    # ---- per-token bookkeeping ---------------------------------------------------------------------
    def _append(self, s: Sequence, token: int) -> None:
        """Record one token; emit the text that is safe to show; decide whether `s` is done."""
        if s.finished or s.aborted:
            return
        p = s.params
        entry, s.pending_logprob = s.pending_logprob, None
        if token in self.eos_token_ids and not p.ignore_eos:
            self._finish(s, "stop", self._decode(s))
            return
        s.output_ids.append(token)
        if entry is not None:
            s.output_logprobs.append(entry)
        text = self._decode(s)
        if p.stop:
            cut = min((pos for pos in (text.find(x) for x in p.stop) if pos >= 0), default=-1)
            if cut >= 0:
                self._finish(s, "stop", text[:cut])
                return
        total = len(s.prompt_ids) + len(s.output_ids)
        if len(s.output_ids) >= p.max_tokens or total >= self.max_context:
            self._finish(s, "length", text)
            return
        safe = text.rstrip("\ufffd")
        for x in p.stop:  # hold back a tail that could still become a stop string
            for n in range(min(len(x) - 1, len(safe)), 0, -1):
                if safe.endswith(x[:n]):
                    safe = safe[:-n]
                    break
        if len(safe) > len(s.sent) and safe.startswith(s.sent):
            delta = safe[len(s.sent):]
            s.sent = safe
            s.sink(Event(text=delta, logprobs=_take_logprobs(s)))

    def _decode(self, s: Sequence) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(s.output_ids, skip_special_tokens=True)

    def _finish(self, s: Sequence, reason: str, final_text: str) -> None:
        delta = final_text[len(s.sent):] if final_text.startswith(s.sent) else ""
        s.sent = final_text if final_text.startswith(s.sent) else s.sent
        s.finished = True
        s.finish_reason = reason
        s.sink(Event(text=delta, finish_reason=reason, prompt_tokens=len(s.prompt_ids),
                     completion_tokens=len(s.output_ids), logprobs=_take_logprobs(s)))

    # ---- smoke test ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_sync(self, prompt_ids: list[int], max_tokens: int = 8) -> tuple[list[int], str]:
        """Greedy generation outside the scheduler (same prefill/decode code); raises on NaN/Inf logits."""
        events: list[Event] = []
        seq = Sequence("smoke", prompt_ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0),
                       self, events.append)
        saved = self.reset_batch()
        assert not saved, "generate_sync must not run on an engine that is serving"
        try:
            self.prefill([seq])
            while not seq.finished:
                self.decode_step()
        finally:
            self.reset_batch()
        return seq.output_ids, seq.sent

    def release(self) -> None:
        """Drop the weights (called once the retired engine has drained)."""
        self.reset_batch()
        self.model = None

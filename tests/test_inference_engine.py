"""Continuous batching is exact and shares forward passes; the logit penalties do what the original system's did."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from inference.engine import ModelEngine, SamplingParams, Sequence
from inference.logits import PostStopPenalty, ThinkTagPenalty, build_processors
from tests.inference_support import free_port
from tests.test_inference_api import _config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine(micro_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights than the init: greedy outputs vary token to token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return ModelEngine(model, AutoTokenizer.from_pretrained(micro_model_dir), "t", str(micro_model_dir), None, 2048)


PROMPTS = ["hello there my friend", "the cat", "one two three four five six seven eight nine ten eleven"]


def test_staggered_continuous_batch_equals_unbatched_greedy(engine):
    """Sequences joining a running batch at different steps decode exactly what plain greedy decoding of each
    alone gives (the model's own unpadded cache, no masks: an independent path; the end token may be picked)."""
    from transformers import DynamicCache

    ids = [engine.text_prompt_ids(p) for p in PROMPTS]
    ref = []
    with torch.no_grad():
        for x in ids:
            cache, inp, out = DynamicCache(), torch.tensor([x]), []
            for _ in range(80):
                res = engine.model(input_ids=inp, past_key_values=cache, use_cache=True)
                out.append(int(res.logits[0, -1].argmax()))
                inp = torch.tensor([[out[-1]]])
            ref.append(out)
    assert len({tuple(r) for r in ref}) == 3 and len(set(ref[0])) > 5  # distinct, non-degenerate outputs
    seqs = [Sequence(str(i), x, SamplingParams(max_tokens=80 - 4 * i, temperature=0, ignore_eos=True), engine,
                     lambda ev: None) for i, x in enumerate(ids)]
    engine.prefill([seqs[0]])
    engine.decode_step()
    engine.decode_step()
    engine.prefill([seqs[1], seqs[2]])  # join mid-flight, with different prompt lengths
    while engine.rows:
        engine.decode_step()
        engine.drop_finished()  # rows leave at different steps (different max_tokens)
    for i, s in enumerate(seqs):
        assert s.output_ids == ref[i][: 80 - 4 * i]


def test_rows_done_at_prefill_never_join_and_scoring_rows_run_alone(engine):
    """max_tokens=1 and max_tokens=0 (scoring) requests prefilled with ordinary ones: they finish without joining
    the batch, the others decode exactly as alone, and the prompt logprobs are the model's (unpadded)."""
    ids = [engine.text_prompt_ids(p) for p in PROMPTS]

    def run(batch):
        engine.prefill(batch)
        while engine.rows:
            engine.decode_step()
            engine.drop_finished()

    alone = Sequence("a", ids[2], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True), engine, lambda e: None)
    run([alone])
    one = Sequence("1", ids[0], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True), engine, lambda e: None)
    score = Sequence("0", ids[1], SamplingParams(max_tokens=0, temperature=0, prompt_logprobs=2, logprobs=2), engine,
                     lambda e: None)
    long = Sequence("l", ids[2], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=0), engine,
                    lambda e: None)
    done = engine.prefill([one, score, long])
    assert set(done) == {one, score} and engine.rows == [long]
    assert len(one.output_ids) == 1 and one.finish_reason == "length" and score.output_ids == []
    run([])
    assert long.output_ids == alone.output_ids
    with torch.no_grad():
        lp = engine.model(torch.tensor([ids[1]])).logits[0].float().log_softmax(-1)
    assert score.prompt_logprobs[0] is None and len(score.prompt_logprobs) == len(ids[1])
    for i, (tok, value, alts) in enumerate(score.prompt_logprobs[1:], start=1):
        assert tok == ids[1][i] and abs(value - float(lp[i - 1, tok])) < 1e-5
        assert [a for a, _ in alts] == lp[i - 1].topk(2).indices.tolist()
    assert [t for t, _, _ in long.output_logprobs] == long.output_ids


def test_sampler_applies_temperature_top_p_and_seed(engine):
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0], [0.0, 0.0, 0.0, 9.0]])
    s = [Sequence("a", [1], SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=3), engine, lambda e: None),
         Sequence("b", [1], SamplingParams(max_tokens=1, temperature=0.0), engine, lambda e: None)]
    picks = {int(engine._sample(logits.clone(), s)[0]) for _ in range(50)}
    assert picks == {0}  # top_p 0.5 keeps only the 73%-probability token
    assert int(engine._sample(logits.clone(), s)[1]) == 3


def test_think_penalty_schedule():
    proc = ThinkTagPenalty([7, 9], prompt_length=10)
    expected = {0: 640, 3: 640, 4: 160, 7: 160, 8: 120, 11: 120, 12: 80, 50: 80}
    for generated, penalty in expected.items():
        scores = torch.zeros((2, 16))
        out = proc(torch.zeros((2, 10 + generated), dtype=torch.long), scores)
        assert out[0, 7] == out[1, 9] == -penalty
        assert out[0, 8] == 0


def test_post_stop_penalty_forces_end_after_stop_run(micro_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok("question", add_special_tokens=False)["input_ids"]
    proc = PostStopPenalty(tok, [eos], prompt_length=len(prompt))
    answer = tok("the answer", add_special_tokens=False)["input_ids"]
    scores = torch.zeros((1, len(tok) + 8))
    assert torch.equal(proc(torch.tensor([prompt + answer]), scores.clone()), scores)  # no stop run yet
    one = tok("🛑", add_special_tokens=False)["input_ids"]
    assert torch.equal(proc(torch.tensor([prompt + answer + one]), scores.clone()), scores)  # a single emoji is no run
    run = prompt + answer + tok("🛑🛑", add_special_tokens=False)["input_ids"]
    out = proc(torch.tensor([run]), scores.clone())
    assert out[0, eos] == 50 and out[0, 5] == -100
    out = proc(torch.tensor([run + [5]]), scores.clone())
    assert out[0, eos] == 50 and out[0, 5] == -1000  # escalates 10x per further token
    # Greedy through the engine's sampler: the end token wins right after the run.
    e_procs = build_processors(tok, len(prompt), post_stop_penalty=True, eos_token_ids=[eos])
    s = torch.randn((1, len(tok) + 8)) * 10
    for p in e_procs:
        s = p(torch.tensor([run]), s)
    assert int(s.argmax()) == eos


def test_think_penalty_through_sampler(engine):
    think = engine.tokenizer.convert_tokens_to_ids("<think>")
    logits = torch.zeros((1, engine.vocab_limit))
    logits[0, think] = 100.0
    plain = Sequence("p", [1, 2], SamplingParams(max_tokens=4, temperature=0), engine, lambda e: None)
    guarded = Sequence("g", [1, 2], SamplingParams(max_tokens=4, temperature=0, think_penalty=True), engine, lambda e: None)
    assert int(engine._sample(logits.clone(), [plain])[0]) == think
    assert int(engine._sample(logits.clone(), [guarded])[0]) != think


def test_concurrent_requests_share_forward_passes(tmp_path_factory, micro_model_dir):
    from tests.inference_support import LiveServer

    with LiveServer(_config(tmp_path_factory, micro_model_dir, max_batch_size=16)) as srv:
        body = {"model": "cadence-tiny", "prompt": "one two", "max_tokens": 48, "ignore_eos": True, "temperature": 0}
        alone = httpx.post(srv.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
        engine = srv.state.scheduler.active
        before = engine.forward_passes
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda _: httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json(), range(16)))
        passes = engine.forward_passes - before
        assert all(o["choices"][0]["text"] == alone for o in outs)  # batching does not change results
        assert all(o["usage"]["completion_tokens"] == 48 for o in outs)
        # Sequential would take 16 x 48 forwards; batched decode shares them.
        assert passes < 16 * 48 / 3, passes


@pytest.mark.slow
def test_sigterm_drains_in_flight_then_exits_zero(tmp_path, micro_model_dir):
    port = free_port()
    base = tmp_path / "cad"
    (base / "control").mkdir(parents=True)
    cfg_path = base / "config.json"
    cfg_path.write_text(json_dumps({"paths": {"base_dir": str(base)}, "model": {"base_model": str(micro_model_dir)},
                                    "inference": {"port": port, "drain_timeout": 30}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "inference", "--config", str(cfg_path), "--log-level", "warning"],
                            cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert (base / ".pids" / "inference.pid").read_text().strip() == str(proc.pid)
        body = {"model": "cadence-tiny", "prompt": "go", "max_tokens": 400, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.HTTPError):  # no new connections while draining
                httpx.get(url + "/health", timeout=2)
            from tests.inference_support import sse_events
            events = sse_events(list(lines))
        assert events[-1] == "[DONE]"
        usage = next(e["usage"] for e in events if isinstance(e, dict) and e.get("usage"))
        assert usage["completion_tokens"] == 400
        assert proc.wait(30) == 0
        assert not (base / ".pids" / "inference.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def json_dumps(obj) -> str:
    import json
    return json.dumps(obj)


"""Spec registry, QUICK/STANDARD/DEEP validators, policies and grouped reports."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from core.validation.report import PolicyError, Policies
from core.state.queue_records import parse_job_sidecar
from core.validation.spec import DATASET_SPECS, UnknownSchemaError, get_spec
from core.validation.standard import supervised_runs
from core.validation.validator import DataValidator, json_depth, role_order_problem

U = {"role": "user", "content": "What is two plus two?"}
A = {"role": "assistant", "content": "Two plus two is four."}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rules_at(rep):
    return {p["rule"]: [x["line"] for x in p["lines"]] for p in rep.to_dict()["problems"]}


def test_registry_is_deny_by_default():
    assert set(DATASET_SPECS) == {"chat_sft_v1", "completion_v1", "syllo_v1"}
    with pytest.raises(UnknownSchemaError, match="alpaca"):
        get_spec("alpaca")
    assert get_spec("chat_sft_v1").check_row({"messages": [U, A]}) == []
    # every row is checked: wrong types are not coerced, unknown keys are errors
    assert get_spec("chat_sft_v1").check_row({"messages": [U, {"role": "assistant", "content": 4}]})
    assert get_spec("chat_sft_v1").check_row({"messages": [U, A], "extra": 1})[0][1].startswith("unknown key")
    assert get_spec("syllo_v1").check_row({"messages": [U, A], "metadata": {"skill": "s"}})
    assert get_spec("syllo_v1").check_row({"messages": [U, A], "metadata": {"skill": "s", "level": 2}}) == []
    assert get_spec("completion_v1").check_row({"prompt": "a"})
    assert get_spec("completion_v1").check_row({"text": "a"}) == []


def test_job_sidecar_rejects_unknown_keys():
    ok, problems = parse_job_sidecar({"schema_id": "chat_sft_v1", "priority": "high", "epochs": 2, "tags": ["a"], "notes": "n"})
    assert ok and not problems
    _, problems = parse_job_sidecar({"priority": "high", "lr": 1})
    assert problems == ["lr: unknown key (not part of the spec)"]
    _, problems = parse_job_sidecar(["not", "a", "dict"])
    assert problems


def test_role_order():
    assert role_order_problem(["user", "assistant"]) is None
    assert role_order_problem(["system", "user", "assistant", "user", "assistant"]) is None
    assert "expected 'user'" in role_order_problem(["assistant", "user", "assistant"])
    assert "ends with 'user'" in role_order_problem(["user", "assistant", "user"])
    assert "only the first" in role_order_problem(["user", "system", "assistant"])
    assert role_order_problem(["system"]) == "no user/assistant turns"


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth('{"a": "[[[[[[", "b": [[1]]}') == 3


def test_quick_good_file_stats_and_hash(make_config, tmp_path):
    cfg = make_config()
    p = write(tmp_path / "ok.jsonl", [{"messages": [U, A]}] * 3)
    rep = DataValidator(cfg).quick(p, "chat_sft_v1")
    assert rep.ok, rep.summary()
    assert rep.stats["examples"] == 3 and rep.stats["lines"] == 3
    assert rep.stats["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_quick_reports_every_problem_grouped(make_config, tmp_path):
    cfg = make_config({"validation.report_lines_per_rule": 5})
    rows = [{"messages": [U, A]}] + ["{nope"] * 1000 + [{"messages": [A]}] * 3
    p = write(tmp_path / "many.jsonl", rows)
    d = DataValidator(cfg).quick(p, "chat_sft_v1").to_dict()
    inv = next(x for x in d["problems"] if x["rule"] == "invalid_json")
    assert inv["count"] == 1000 and len(inv["lines"]) == 5 and inv["more"] == 995
    assert [x["line"] for x in inv["lines"]] == [2, 3, 4, 5, 6]
    ro = next(x for x in d["problems"] if x["rule"] == "role_order")
    assert ro["count"] == 3 and ro["lines"][0]["line"] == 1002
    assert d["verdict"] == "rejected" and "invalid_json x1000" in d["summary"]


def test_policies_downgrade_and_guard(make_config, tmp_path):
    p = write(tmp_path / "ends_user.jsonl", [{"messages": [U, A, U]}])
    assert not DataValidator(make_config()).quick(p, "chat_sft_v1").ok
    rep = DataValidator(make_config({"validation.policies": {"role_order": "warning"}})).quick(p, "chat_sft_v1")
    assert rep.ok and rep.warning_count == 1
    rep = DataValidator(make_config({"validation.policies": {"role_order": "off"}})).quick(p, "chat_sft_v1")
    assert rep.ok and rep.warning_count == 0
    with pytest.raises(PolicyError, match="required"):
        Policies({"invalid_json": "warning"})
    with pytest.raises(PolicyError, match="unknown rule"):
        Policies({"no_such_rule": "error"})


def test_quick_size_limits(make_config, tmp_path):
    cfg = make_config({"validation.max_line_bytes": 2048, "validation.max_file_bytes": 100_000})
    long_row = {"messages": [U, {"role": "assistant", "content": "x" * 5000}]}
    p = write(tmp_path / "long.jsonl", [{"messages": [U, A]}, long_row, {"messages": [U, A]}])
    assert rules_at(DataValidator(cfg).quick(p, "chat_sft_v1")) == {"line_too_long": [2]}
    big = write(tmp_path / "big.jsonl", [{"messages": [U, A]}] * 2000)
    assert "file_too_large" in rules_at(DataValidator(cfg).quick(big, "chat_sft_v1"))


def test_quick_never_follows_symlinks_or_opens_fifos(make_config, tmp_path):
    import os

    v = DataValidator(make_config())
    target = write(tmp_path / "real.jsonl", [{"messages": [U, A]}])
    os.symlink(target, tmp_path / "link.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")
    assert "not_regular_file" in rules_at(v.quick(tmp_path / "link.jsonl", "chat_sft_v1"))
    assert "not_regular_file" in rules_at(v.quick(tmp_path / "fifo.jsonl", "chat_sft_v1"))
    assert "file_vanished" in rules_at(v.quick(tmp_path / "gone.jsonl", "chat_sft_v1"))


def test_supervised_runs():
    labels = [[-100, 1, 2, -100, 3], [4, 5, -100], [-100], [6]]
    assert supervised_runs(labels).tolist() == [2, 1, 2, 1]
    assert supervised_runs([]).size == 0


def _chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def test_standard_matches_trainer_encoding(make_config, tmp_path):
    from trainer.data import encode_examples

    cfg = make_config({"model.max_length": 512, "training.micro_batch_tokens": 512})
    v = DataValidator(cfg)
    rows = [_chat("what is " + "the " * (i % 13), "answer " * (1 + i % 7)) for i in range(200)]
    p = write(tmp_path / "s.jsonl", rows)
    rep = v.standard(p, "chat_sft_v1", batch_size=64)
    enc = encode_examples(rows, v.tokenizer, "chat_sft_v1", 512)
    lens = sorted(e.original_length for e in enc)
    assert rep.stats["examples"] == 200
    assert rep.stats["tokens"] == sum(lens)
    assert rep.stats["length"]["max"] == lens[-1] and rep.stats["length"]["min"] == lens[0]
    assert rep.stats["supervised_tokens"] == sum(e.n_supervised for e in enc)
    # max_length 512 is far above 1.5x p99: warned with a suggestion that still fits p99
    assert "max_length_oversized" in rep.rules("warning")
    assert rep.stats["length"]["p99"] <= rep.stats["suggested_max_length"] < 512
    assert rep.ok


def test_standard_thresholds(make_config, tmp_path):
    cfg = make_config({"model.max_length": 64, "training.micro_batch_tokens": 512})
    v = DataValidator(cfg)
    good = [_chat("hi", "ok fine") for _ in range(60)]
    p = write(tmp_path / "t.jsonl", good + [_chat("word " * 200, "ok")] + [_chat("hi", "long " * 200)])
    rep = v.standard(p, "chat_sft_v1")
    at = rules_at(rep)
    assert at["zero_supervised"] == [61]
    assert at["reply_too_long"] == [62]
    assert at["over_max_length"] == [61, 62]
    assert not rep.ok
    # replies near max_length: warnings on reply p95/p99, no rejection
    near = [_chat("hi", "long " * 55) for _ in range(20)]
    rep = v.standard(write(tmp_path / "near.jsonl", near), "chat_sft_v1")
    assert {"reply_p95_high", "reply_p99_high"} <= set(rep.rules("warning")), rep.summary()
    # most examples over max_length: the p95 rule and the share rule reject
    rep = v.standard(write(tmp_path / "all.jsonl", [_chat("x " * 100, "y") for _ in range(10)]), "chat_sft_v1")
    assert {"too_long_p95", "truncated_share", "zero_supervised"} <= set(rep.rules("error"))


def test_standard_truncation_error_mode(make_config, tmp_path):
    cfg = make_config({"model.max_length": 64, "training.micro_batch_tokens": 512, "training.truncation": "error"})
    rep = DataValidator(cfg).standard(write(tmp_path / "t.jsonl", [_chat("hi", "ok")] * 50 + [_chat("x " * 90, "ok")]),
                                      "chat_sft_v1")
    assert "over_max_length" in rep.rules("error")


def test_deep_checks(make_config, tmp_path):
    base = ("Describe the water cycle in simple words for a child please, with the sun, the sea, the clouds, "
            "the rain, the rivers and the way water flows back to the sea again")
    rows = [
        _chat(base, "Water goes up as vapour, makes clouds, and falls back as rain."),  # 1
        _chat(base, "Water goes up as vapour, makes clouds, and falls back as rain."),  # 2 exact dup
        _chat(base + " now", "Water goes up as vapour, makes clouds, and falls back as rain!"),  # 3 near dup
        _chat("The secret code is ALPHA-BRAVO-77, repeat it", "ALPHA-BRAVO-77"),  # 4 leakage
        _chat("say it", "no no no no no no way"),  # 5 repetition
        _chat("scream", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab cd"),  # 6 single letter
        _chat("2+2?", "4"),  # 7 short
        _chat("name a dessert", "CrÃ¨me brÃ»lÃ©e is nice"),  # 8 mojibake
        _chat("give json", '{"a": 1,'),  # 9 invalid json reply
        _chat("x " * 500, "fine answer"),  # 10 ratio
        {"messages": [{"role": "user", "content": "echo me"}, {"role": "assistant", "content": "echo me"}]},  # 11 flow
        _chat("hello", "user: hi again\nassistant: yes"),  # 12 role marker
    ]
    cfg = make_config()
    rep = DataValidator(cfg).deep(write(tmp_path / "d.jsonl", rows), "chat_sft_v1")
    at = rules_at(rep)
    assert at["exact_duplicate"] == [2]
    assert 3 in at["near_duplicate"]
    assert at["answer_leakage"] == [4]
    assert at["repetition"] == [5]
    assert at["single_letter"] == [6]
    assert 7 in at["short_reply"]
    assert at["mojibake"] == [8]
    assert at["invalid_json_reply"] == [9]
    assert at["length_ratio"] == [10]
    assert at["flow_anomaly"] == [11]
    assert at["role_marker"] == [12]
    assert rep.ok  # DEEP warns by default
    strict = make_config({"validation.policies": {"exact_duplicate": "error"}})
    assert not DataValidator(strict).deep(tmp_path / "d.jsonl", "chat_sft_v1").ok


def test_deep_emoji_share(make_config, tmp_path):
    rows = [_chat(f"q{i} what", ("🤔🤔 " if i < 9 else "") + f"answer number {i} here") for i in range(10)]
    rep = DataValidator(make_config()).deep(write(tmp_path / "e.jsonl", rows), "chat_sft_v1")
    assert "emoji_share" in rep.rules("warning")
    assert rep.stats["emoji_think_share"] == pytest.approx(0.9)


def test_quick_throughput_smoke(make_config, tmp_path):
    # not a timing assertion: a 20k-line file validates and hashes without error
    rows = [_chat(f"question {i}", f"answer {i}") for i in range(20_000)]
    rep = DataValidator(make_config()).quick(write(tmp_path / "big.jsonl", rows), "chat_sft_v1")
    assert rep.ok and rep.stats["examples"] == 20_000
    assert np.isfinite(rep.stats["bytes"])


def test_fast_path_never_accepts_what_the_full_check_rejects():
    import copy
    import random

    from core.validation.validator import FAST_PATHS

    rng = random.Random(0)
    base = {
        "chat_sft_v1": {"messages": [{"role": "system", "content": "s"}, U, A, U, A]},
        "syllo_v1": {"messages": [U, A], "metadata": {"skill": "syllo", "level": 3}},
        "completion_v1": {"prompt": "p", "completion": "c"},
    }
    junk = [None, True, 1, 1.5, "", "  ", "x", [], {}, ["x"], {"role": "user"}]
    checked = 0
    for schema, row in base.items():
        spec = get_spec(schema)
        assert FAST_PATHS[schema](row)
        for _ in range(3000):
            r = copy.deepcopy(row)
            # mutate a random node: replace a value, drop a key, add a key, or shuffle messages
            target, key = r, None
            path = []
            while isinstance(target, (dict, list)) and target and rng.random() < 0.7:
                key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
                path.append((target, key))
                target = target[key]
            op = rng.random()
            if path:
                parent, key = path[-1]
                if op < 0.6:
                    parent[key] = rng.choice(junk)
                elif op < 0.8 and isinstance(parent, dict):
                    del parent[key]
                elif isinstance(parent, list):
                    rng.shuffle(parent)
            else:
                r[rng.choice(["extra", "id", "tags", "text"])] = rng.choice(junk)
            if not isinstance(r, dict) or not FAST_PATHS[schema](r):
                continue
            checked += 1
            assert spec.check_row(r) == [], r
            if spec.kind == "chat":
                assert role_order_problem([m["role"] for m in r["messages"]]) is None, r
            assert all(s.strip() for _, s in spec.strings(r)), r
    assert checked > 100


def test_validator_cli_from_repo_root(make_config, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    cfg = make_config()
    conf = tmp_path / "config.json"
    conf.write_text(cfg.to_json())
    p = write(tmp_path / "d.jsonl", [{"messages": [U, A]}, {"messages": [U, A]}, "{bad"])
    repo = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, "-m", "core.cli", "validate", "--config", str(conf), *a],  # noqa: E731
                                    cwd=repo, capture_output=True, text=True, timeout=60)
    r = run(str(p), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["problems"][0]["lines"][0]["line"] == 3
    p.write_text(p.read_text().replace("{bad\n", ""))
    r = run(str(p), "--level", "deep")
    assert r.returncode == 0 and "exact_duplicate x1" in r.stdout

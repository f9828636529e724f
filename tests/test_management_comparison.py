"""Comparison engine: ranking, the margin champion rule and its forgetting guard, supervised-only loss, a ledger that never re-scores."""
from __future__ import annotations

import json
import math

import pytest
import torch

from management.champion_rule import champion_decision, pick_champion, rank
from management.model_comparison_engine import load_ledger, save_ledger, score_new_checkpoints
from tests.management_support import entry, make_checkpoint, write_chat_rows


def _cc(make_config, **over):
    over.setdefault("rule", "margin")  # these tests are about the old margin rule (comparison.rule=margin)
    return make_config({f"comparison.{k}": v for k, v in over.items()}).comparison


def test_rank_orders_losses_ascending_accuracies_descending_and_puts_unscored_last():
    entries = [entry("checkpoint-1", 1, 2.0), entry("checkpoint-2", 2, 1.5), entry("checkpoint-3", 3, None),
               entry("checkpoint-4", 4, 1.5), entry("checkpoint-5", 5, 9.0, status="failed"),
               entry("checkpoint-6", 6, float("nan"))]
    assert [e["checkpoint"] for e in rank(entries, "val_loss")] == \
        ["checkpoint-4", "checkpoint-2", "checkpoint-1", "checkpoint-6", "checkpoint-3"]  # ties: newer first; failed out
    acc = [entry("checkpoint-1", 1, **{"accuracy:binary": 0.2}), entry("checkpoint-2", 2, **{"accuracy:binary": 0.9})]
    assert [e["checkpoint"] for e in rank(acc, "accuracy:binary")] == ["checkpoint-2", "checkpoint-1"]


def test_champion_needs_the_margin(make_config):
    cc = _cc(make_config, margin=0.05)
    base = entry("checkpoint-10", 10, 2.0)
    assert champion_decision(entry("checkpoint-20", 20, 1.95), base, cc).accepted is False   # 2.5% < 5%
    d = champion_decision(entry("checkpoint-20", 20, 1.80), base, cc)
    assert d.accepted and d.improvement == pytest.approx(0.10)
    assert champion_decision(entry("checkpoint-20", 20, 1.80), None, cc).accepted          # first deployment
    assert not champion_decision(entry("checkpoint-20", 20, float("nan")), None, cc).accepted


def test_accuracy_primary_metric_uses_absolute_points(make_config):
    cc = _cc(make_config, primary_metric="accuracy:binary", margin=0.05)
    base = entry("checkpoint-10", 10, **{"accuracy:binary": 0.50})
    assert not champion_decision(entry("checkpoint-20", 20, **{"accuracy:binary": 0.53}), base, cc).accepted
    assert champion_decision(entry("checkpoint-20", 20, **{"accuracy:binary": 0.60}), base, cc).accepted


def test_better_primary_metric_but_anchor_regression_is_refused(make_config):
    cc = _cc(make_config, margin=0.01, guard_tolerance=0.05)
    base = entry("checkpoint-10", 10, val_loss=2.0, anchor_loss=1.0)
    forgetful = entry("checkpoint-20", 20, val_loss=1.5, anchor_loss=1.2)    # 25% better, anchor 20% worse
    d = champion_decision(forgetful, base, cc)
    assert not d.accepted and "forgetting guard" in d.reason and d.anchor_regression == pytest.approx(0.2)
    within = entry("checkpoint-30", 30, val_loss=1.5, anchor_loss=1.04)       # anchor 4% worse: tolerated
    assert champion_decision(within, base, cc).accepted


def test_pick_champion_skips_forgetful_and_tried_and_older(make_config):
    cfg = make_config({"comparison.rule": "margin", "comparison.margin": 0.01, "comparison.guard_tolerance": 0.05})
    ledger = {"format": 1, "checkpoints": {e["checkpoint"]: e for e in [
        entry("checkpoint-10", 10, val_loss=2.0, anchor_loss=1.0),     # deployed
        entry("checkpoint-5", 5, val_loss=1.0, anchor_loss=1.0),       # better but older than the deployed one
        entry("checkpoint-20", 20, val_loss=1.2, anchor_loss=1.5),     # best new, but forgets
        entry("checkpoint-30", 30, val_loss=1.6, anchor_loss=1.0),     # tried already
        entry("checkpoint-40", 40, val_loss=1.8, anchor_loss=1.01),    # the champion
    ]}, "ranking": [], "champion": None}
    champ, decision = pick_champion(cfg, ledger, "cid-checkpoint-10", exclude={"cid-checkpoint-30"})
    assert champ["checkpoint"] == "checkpoint-40" and decision.accepted
    ledger["checkpoints"].pop("checkpoint-40")
    champ, decision = pick_champion(cfg, ledger, "cid-checkpoint-10", exclude={"cid-checkpoint-30"})
    assert champ is None and "forgetting guard" in decision.reason


def _manual_supervised_loss(model_dir, rows, max_length):
    from transformers import AutoModelForCausalLM

    from trainer.data import IGNORE_INDEX, encode_examples, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in encode_examples(rows, tok, "chat_sft_v1", max_length):
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            for t in range(len(ex.input_ids) - 1):
                if ex.labels[t + 1] != IGNORE_INDEX:
                    total -= float(torch.log_softmax(logits[t], -1)[ex.labels[t + 1]])
                    count += 1
    return total / count


def test_scoring_counts_supervised_tokens_only_and_the_ledger_never_rescores(make_config, micro_model_dir, tmp_path):
    cfg = make_config({"comparison.validation_file": "val.jsonl", "comparison.validation_samples": 8,
                       "comparison.anchor_file": "anchor.jsonl", "comparison.eval_samples": 4,
                       "comparison.max_new_tokens": 6, "data_manager.eval_count": 4})
    write_chat_rows(cfg.layout.base_dir / "val.jsonl", 8, seed=1)
    write_chat_rows(cfg.layout.base_dir / "anchor.jsonl", 8, seed=2, words=("sun", "moon", "star"))
    ckpt = make_checkpoint(cfg, micro_model_dir, 10)
    [scored] = score_new_checkpoints(cfg)
    m = scored["metrics"]
    rows = [json.loads(line) for line in (cfg.layout.base_dir / "val.jsonl").read_text().splitlines()]
    assert m["val_loss"] == pytest.approx(_manual_supervised_loss(ckpt.path, rows, 256), rel=1e-4)
    assert m["val_rows"] == 8 and math.isfinite(m["anchor_loss"]) and m["anchor_loss"] != m["val_loss"]
    # per-skill accuracy by generation at the curriculum's level, fed to the curriculum
    assert set(scored["accuracy"]) == {"binary", "syllo"}
    assert all(a["level"] == 1 and a["total"] == 4 for a in scored["accuracy"].values())
    from data_manager.curriculum_manager import Curriculum

    history = Curriculum.from_config(cfg).history("binary")
    assert [(h["level"], h["checkpoint"], h["step"]) for h in history] == [(1, "checkpoint-10", 10)]
    # persistent: a second pass (a restart) scores nothing and records nothing new
    assert score_new_checkpoints(cfg) == []
    assert len(Curriculum.from_config(cfg).history("binary")) == 1
    ledger = load_ledger(cfg)
    assert ledger["ranking"] == ["checkpoint-10"] and ledger["checkpoints"]["checkpoint-10"]["content_id"]
    # a new checkpoint is scored; the old one is not touched
    make_checkpoint(cfg, micro_model_dir, 20, seed=3)
    assert [e["checkpoint"] for e in score_new_checkpoints(cfg)] == ["checkpoint-20"]
    assert load_ledger(cfg)["checkpoints"]["checkpoint-10"]["scored_at"] == ledger["checkpoints"]["checkpoint-10"]["scored_at"]


def test_prompt_tokens_do_not_change_the_score(make_config, micro_model_dir):
    """Same assistant answers behind very different prompts: only the answer tokens' loss counts, so the
    prompt's own tokens (the original engine scored them) add nothing on their own."""
    from management.scoring import CheckpointScorer

    cfg = make_config()
    scorer = CheckpointScorer(cfg, micro_model_dir)
    short = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "cat dog"}]}]
    long = [{"messages": [{"role": "user", "content": "tree " * 60}, {"role": "assistant", "content": "cat dog"}]}]
    (ls, _), (ll, _) = scorer.supervised_loss(short), scorer.supervised_loss(long)
    enc = __import__("trainer.data", fromlist=["encode_examples"]).encode_examples
    n_short = enc(short, scorer.tokenizer, "chat_sft_v1", 256)[0].n_supervised
    n_long = enc(long, scorer.tokenizer, "chat_sft_v1", 256)[0].n_supervised
    assert n_short == n_long  # same supervised tokens, whatever the prompt length
    assert math.isfinite(ls) and math.isfinite(ll)


def test_failed_scoring_is_recorded_and_never_champion(make_config, micro_model_dir):
    cfg = make_config({"comparison.validation_file": "val.jsonl", "comparison.eval_samples": 0})
    write_chat_rows(cfg.layout.base_dir / "val.jsonl", 4)
    ckpt = make_checkpoint(cfg, micro_model_dir, 10)
    (ckpt.path / "config.json").write_text("{not json")
    [scored] = score_new_checkpoints(cfg)
    assert scored["status"] == "failed" and scored["error"]
    ledger = load_ledger(cfg)
    assert pick_champion(cfg, ledger, None)[0] is None
    save_ledger(cfg, ledger)
    assert score_new_checkpoints(cfg) == []  # failed is an answer too: not retried in a loop


def test_without_a_validation_file_a_frozen_set_is_made_once_from_held_out_evals(make_config, micro_model_dir):
    cfg = make_config({"comparison.validation_samples": 6, "comparison.eval_samples": 2, "comparison.max_new_tokens": 4,
                       "data_manager.eval_count": 4})
    make_checkpoint(cfg, micro_model_dir, 10)
    [scored] = score_new_checkpoints(cfg)
    frozen = cfg.layout.status / "comparison_validation.jsonl"
    rows = [json.loads(line) for line in frozen.read_text().splitlines()]
    assert len(rows) == 6 and scored["metrics"]["val_rows"] == 6 and math.isfinite(scored["metrics"]["val_loss"])
    from data_manager.curriculum_manager import Curriculum

    Curriculum.from_config(cfg).set_level("binary", 3)            # levels move on; the validation set does not
    make_checkpoint(cfg, micro_model_dir, 20, seed=1)
    score_new_checkpoints(cfg)
    assert [json.loads(line) for line in frozen.read_text().splitlines()] == rows


def test_a_checkpoint_removed_before_or_while_it_is_scored_is_skipped_not_recorded_as_failed(make_config,
                                                                                             micro_model_dir,
                                                                                             monkeypatch, caplog):
    """The trainer's rolling retention removes checkpoints while the scorer works through a backlog (newest first):
    such a checkpoint is no broken one (it used to be recorded as failed with a model hub 'Repo id' error)."""
    import shutil
    from management import model_comparison_engine as mce

    cfg = make_config({"comparison.validation_file": "val.jsonl", "comparison.eval_samples": 0})
    write_chat_rows(cfg.layout.base_dir / "val.jsonl", 4)
    for step in (10, 20, 30):
        make_checkpoint(cfg, micro_model_dir, step, seed=step)
    real = mce.score_checkpoint

    def scoring_while_retention_runs(cfg_, ckpt, *a, **k):
        if ckpt.step == 30:  # while the newest is scored, checkpoint-10 goes
            shutil.rmtree(cfg.layout.current_model / "checkpoint-10")
        if ckpt.step == 20:  # and checkpoint-20 goes while it is being scored
            shutil.rmtree(ckpt.path)
        return real(cfg_, ckpt, *a, **k)

    monkeypatch.setattr(mce, "score_checkpoint", scoring_while_retention_runs)
    with caplog.at_level("INFO", logger="management.model_comparison_engine"):
        done = score_new_checkpoints(cfg)
    assert [e["checkpoint"] for e in done] == ["checkpoint-30"] and done[0]["status"] == "scored"
    assert set(load_ledger(cfg)["checkpoints"]) == {"checkpoint-30"}
    assert "checkpoint-10 was removed before it was scored (rolling retention): skipped" in caplog.text
    assert "checkpoint-20 was removed while it was scored (rolling retention): not recorded" in caplog.text

"""The paired champion rule: same items for candidate and deployed version, a test per item, guarded sets, a cached baseline.

The statistical decisions are driven with constructed per-item results (so the expected verdict is known); the
scoring, the ledger's per-level results and the deployed version's cache run on the real micro model.
"""
from __future__ import annotations

import json
import random

import pytest

from management.champion_rule import champion_decision, pick_champion
from management.model_comparison_engine import load_ledger, record_verdicts, score_new_checkpoints
from management.paired_test import bootstrap_test, paired_decision, sign_test
from tests.management_support import make_checkpoint, write_chat_rows

N = 24


def res(kind: str, exact: str | None = None, loss: list | None = None, digest: str = "d1", skill=None, level=None) -> dict:
    """One set's per-item results as the ledger keeps them."""
    return {"kind": kind, "skill": skill, "level": level, "digest": digest, "n": len(exact or loss or []),
            "exact": exact, "loss": loss, "accuracy": exact.count("1") / len(exact) if exact else None,
            "mean_loss": sum(loss) / len(loss) if loss else None, "nonfinite": 0}


def noisy(mean: float, seed: int, spread: float = 0.05) -> list[float]:
    rng = random.Random(seed)
    return [round(mean + rng.uniform(-spread, spread), 6) for _ in range(N)]


def deployed_sets() -> dict:
    """The deployed version: binary level 1 mastered, level 2 (current) not yet, an anchor set."""
    return {"ladder:binary:L1": res("ladder", "1" * N, noisy(0.2, 1), skill="binary", level=1),
            "ladder:binary:L2": res("ladder", "0" * 20 + "1" * 4, noisy(2.0, 2), skill="binary", level=2),
            "anchor:anchor": res("anchor", loss=noisy(1.0, 3))}


@pytest.fixture
def cc(make_config):
    cfg = make_config()
    assert cfg.comparison.rule == "paired" and cfg.comparison.confidence == 0.95  # the defaults under test
    return cfg.comparison


def test_exact_sign_test_and_bootstrap_are_exact_and_deterministic():
    assert sign_test(0, 0) == (1.0, 1.0)
    assert sign_test(5, 0) == (1 / 32, 1.0)
    assert sign_test(3, 2) == pytest.approx((0.5, 0.8125))
    diffs = [0.1] * 10 + [-0.05] * 2
    assert bootstrap_test(diffs, "s") == bootstrap_test(diffs, "s")       # seeded by the set: same scores, same p
    p_better, p_worse = bootstrap_test(diffs, "s")
    assert p_better < 0.01 < 0.99 < p_worse
    assert bootstrap_test([0.0] * 12, "s") == (1.0, 1.0)                  # identical answers: no evidence either way


def test_better_on_the_current_level_and_equal_elsewhere_is_promoted(cc):
    base = deployed_sets()
    cand = {**base, "ladder:binary:L2": res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2)}
    d = paired_decision(cand, base, cc)
    assert d.accepted, d.reason
    assert d.reason.startswith("better on ladder:binary:L2") and "no guarded set regresses" in d.reason
    by = {(t.set, t.metric): t for t in d.tests}
    assert by[("ladder:binary:L2", "exact")].p_better == pytest.approx(2 ** -14)   # 14 wins, 0 losses
    assert by[("ladder:binary:L1", "exact")].p_better == 1.0                       # equal: no evidence
    assert by[("ladder:binary:L1", "loss")].p_worse == 1.0
    assert not by[("anchor:anchor", "loss")].improves                              # the anchor never promotes


def test_better_on_the_current_level_but_forgetting_a_lower_level_is_refused(cc):
    base = deployed_sets()
    better_now = res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2)
    forgot = {**base, "ladder:binary:L2": better_now,
              "ladder:binary:L1": res("ladder", "1" * 12 + "0" * 12, noisy(0.2, 1), skill="binary", level=1)}
    d = paired_decision(forgot, base, cc)
    assert not d.accepted
    assert d.reason.startswith("forgets ladder:binary:L1 exact 1 -> 0.5 (n=24)") and "forgetting guard" in d.reason
    # one flipped answer on the mastered level is noise, not forgetting: promoted
    flip = {**base, "ladder:binary:L2": better_now,
            "ladder:binary:L1": res("ladder", "0" + "1" * 23, noisy(0.2, 1), skill="binary", level=1)}
    assert paired_decision(flip, base, cc).accepted


def test_mastery_guard_keeps_a_passed_level_at_the_bar_or_at_least_where_the_deployed_version_has_it(cc):
    base = deployed_sets()  # binary L1 at 24/24 (passed), L2 the current level
    better_now = res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2)
    # L1 loses 5 of 24 (79 %, under the 80 % bar): not significant after the Bonferroni split (p = 1/32 > 0.05/3) ...
    slid = {**base, "ladder:binary:L2": better_now,
            "ladder:binary:L1": res("ladder", "0" * 5 + "1" * 19, noisy(0.2, 1), skill="binary", level=1)}
    assert paired_decision(slid, base, cc).accepted
    # ... but the deployed version holds L1 at or above the bar, so under the mastery guard it is refused, named
    d = paired_decision(slid, base, cc, floor=0.8)
    assert not d.accepted
    assert d.reason == ("forgets ladder:binary:L1 exact 1 -> 0.7917 (n=24): a passed level under the mastery bar 80% "
                        "and under the deployed version: mastery guard")
    # 4 of 24 lost (83 %) stays over the bar: promoted (the guard is the bar itself, no tolerance)
    four = {**slid, "ladder:binary:L1": res("ladder", "0" * 4 + "1" * 20, noisy(0.2, 1), skill="binary", level=1)}
    assert paired_decision(four, base, cc, floor=0.8).accepted
    # the current level (the skill's highest rung) is never floored: it is still being learned
    assert paired_decision({**base, "ladder:binary:L2": better_now}, base, cc, floor=0.8).accepted
    # a passed level the deployed version reads under the bar (right after a level-up) may not read lower: one item
    # less is refused, the same reading or a better one passes
    weak = {**base, "ladder:binary:L1": res("ladder", "0" * 6 + "1" * 18, noisy(0.2, 1), skill="binary", level=1)}
    weaker = {**slid, "ladder:binary:L1": res("ladder", "0" * 7 + "1" * 17, noisy(0.2, 1), skill="binary", level=1)}
    same = {**slid, "ladder:binary:L1": res("ladder", "1" + "0" * 6 + "1" * 17, noisy(0.2, 1), skill="binary", level=1)}
    d = paired_decision(weaker, weak, cc, floor=0.8)
    assert not d.accepted and d.reason.startswith("forgets ladder:binary:L1 exact 0.75 -> 0.7083 (n=24)")
    assert paired_decision(same, weak, cc, floor=0.8).accepted
    assert paired_decision(weaker, weak, cc).accepted            # without the guard: one item is noise


def test_mastery_guard_follows_comparison_keep_mastered(make_config):
    from management.champion_rule import mastery_floor
    assert mastery_floor(make_config()) == 0.8                       # data_manager.threshold
    assert mastery_floor(make_config({"data_manager.threshold": 0.9})) == 0.9
    assert mastery_floor(make_config({"comparison.keep_mastered": False})) is None
    base = {"status": "scored", "step": 10, "content_id": "a", "sets": deployed_sets()}
    slid = {"status": "scored", "step": 20, "content_id": "b", "sets": {
        **deployed_sets(), "ladder:binary:L2": res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2),
        "ladder:binary:L1": res("ladder", "0" * 5 + "1" * 19, noisy(0.2, 1), skill="binary", level=1)}}
    cfg = make_config()
    assert "mastery guard" in champion_decision(slid, base, cfg.comparison, floor=mastery_floor(cfg)).reason
    ledger = {"checkpoints": {"checkpoint-10": {**base, "checkpoint": "checkpoint-10"},
                              "checkpoint-20": {**slid, "checkpoint": "checkpoint-20"}}}
    assert pick_champion(cfg, ledger, "a")[0] is None
    off = make_config({"comparison.keep_mastered": False})
    assert pick_champion(off, ledger, "a")[0]["checkpoint"] == "checkpoint-20"


def test_better_on_the_current_level_but_forgetting_the_anchor_set_is_refused(cc):
    base = deployed_sets()
    better_now = res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2)
    forgot = {**base, "ladder:binary:L2": better_now, "anchor:anchor": res("anchor", loss=noisy(1.3, 3))}
    d = paired_decision(forgot, base, cc)
    assert not d.accepted and d.reason.startswith("forgets anchor:anchor loss") and "forgetting guard" in d.reason
    # a significant but small rise (2% < guard_tolerance 5%) is tolerated
    drift = {**base, "ladder:binary:L2": better_now, "anchor:anchor": res("anchor", loss=noisy(1.02, 3))}
    d = paired_decision(drift, base, cc)
    assert d.accepted and [t.p_worse < 0.01 for t in d.tests if t.set == "anchor:anchor"] == [True]


def test_a_noisy_tie_is_refused(cc):
    base = deployed_sets()
    rng = random.Random(7)
    # the current level: 3 items newly right, 2 newly wrong; per-item losses jitter both ways around the same mean
    tie = {**base, "ladder:binary:L2": res("ladder", "1110" + "0" * 16 + "0011",
                                           [x + rng.uniform(-0.3, 0.3) for x in base["ladder:binary:L2"]["loss"]],
                                           skill="binary", level=2)}
    wins = sum(1 for a, b in zip(tie["ladder:binary:L2"]["exact"], base["ladder:binary:L2"]["exact"]) if a > b)
    losses = sum(1 for a, b in zip(tie["ladder:binary:L2"]["exact"], base["ladder:binary:L2"]["exact"]) if a < b)
    assert (wins, losses) == (3, 2)
    d = paired_decision(tie, base, cc)
    assert not d.accepted and d.reason.startswith("not better on any set at 95% confidence") and d.reason.endswith("a tie")
    # the old margin rule, on the same numbers, promotes whatever moves the primary metric by its margin
    assert champion_decision({"status": "scored", "metrics": {"val_loss": 1.0}}, {"status": "scored", "metrics": {"val_loss": 1.2}},
                             cc, rule="margin").accepted


def test_only_the_same_items_are_paired(cc):
    base = deployed_sets()
    # the candidate's level-2 rung has other items (another digest): it cannot count, whatever it shows
    cand = {**base, "ladder:binary:L2": res("ladder", "1" * N, noisy(0.1, 4), digest="other", skill="binary", level=2)}
    d = paired_decision(cand, base, cc)
    assert not d.accepted and d.unpaired == ["ladder:binary:L2"]
    assert paired_decision({"x": res("ladder", "1" * N)}, {}, cc).reason.startswith("no item set scored for both")


def _entry(name, step, sets, **extra):
    return {"checkpoint": name, "step": step, "content_id": f"cid-{name}", "status": "scored", "sets": sets,
            "metrics": {"val_loss": 1.0}, **extra}


def test_pick_champion_takes_the_newest_candidate_that_passes_and_refuses_nan(make_config):
    cfg = make_config()
    base = deployed_sets()
    better = {**base, "ladder:binary:L2": res("ladder", "1" * 14 + "0" * 6 + "1" * 4, noisy(0.9, 4), skill="binary", level=2)}
    forgot = {**better, "ladder:binary:L1": res("ladder", "1" * 12 + "0" * 12, noisy(0.2, 1), skill="binary", level=1)}
    nan = {k: dict(v) for k, v in better.items()}
    nan["anchor:anchor"]["nonfinite"] = 3
    ledger = {"format": 1, "ranking": [], "champion": None, "checkpoints": {e["checkpoint"]: e for e in [
        _entry("checkpoint-10", 10, base), _entry("checkpoint-20", 20, better), _entry("checkpoint-30", 30, better),
        _entry("checkpoint-40", 40, forgot), _entry("checkpoint-50", 50, nan)]}}
    champ, decision = pick_champion(cfg, ledger, "cid-checkpoint-10")
    assert champ["checkpoint"] == "checkpoint-30" and decision.accepted and decision.rule == "paired"
    champ, decision = pick_champion(cfg, ledger, "cid-checkpoint-10", exclude={"cid-checkpoint-30", "cid-checkpoint-20"})
    assert champ is None and decision.reason == "non-finite loss on anchor:anchor"


def _deploy(cfg, entry: dict) -> None:
    """Make `entry` the primary target's active version, as the orchestrator's promote stage leaves it."""
    from management.deployment_state import load_state, save_state

    state = load_state(cfg)
    state["targets"]["local"] = {"active": {"version": "v001", "content_id": entry["content_id"], "checkpoint": entry["checkpoint"],
                                            "path": "unused", "deployed_at": 0}, "previous": None}
    save_state(cfg, state)


def test_ledger_keeps_per_level_results_and_the_deployed_version_is_scored_once_per_set(make_config, micro_model_dir,
                                                                                         monkeypatch):
    from data_manager.curriculum_manager import Curriculum
    from management import scoring

    cfg = make_config({"comparison.anchor_file": "anchor.jsonl", "comparison.validation_samples": 6,
                       "comparison.ladder_items": 5, "comparison.max_new_tokens": 4, "data_manager.eval_count": 6})
    write_chat_rows(cfg.layout.base_dir / "anchor.jsonl", 6, seed=2, words=("sun", "moon", "star"))
    loads = []
    real_init = scoring.CheckpointScorer.__init__

    def counting_init(self, cfg_, path):
        loads.append(path.name if hasattr(path, "name") else str(path))
        real_init(self, cfg_, path)

    monkeypatch.setattr(scoring.CheckpointScorer, "__init__", counting_init)
    make_checkpoint(cfg, micro_model_dir, 10)
    [deployed] = score_new_checkpoints(cfg)
    assert sorted(deployed["sets"]) == ["anchor:anchor", "ladder:binary:L1", "ladder:syllo:L1"]
    rung = deployed["sets"]["ladder:binary:L1"]
    assert (rung["kind"], rung["skill"], rung["level"], rung["n"], len(rung["exact"]), len(rung["loss"])) == \
        ("ladder", "binary", 1, 5, 5, 5)
    assert deployed["accuracy"]["binary"]["level"] == 1 and deployed["accuracy"]["binary"]["total"] == 5
    _deploy(cfg, deployed)

    loads.clear()
    make_checkpoint(cfg, micro_model_dir, 20, seed=1)
    score_new_checkpoints(cfg)
    assert loads == ["checkpoint-20"]           # the deployed version already has every set: nothing re-scored

    ladder_index = json.loads((cfg.layout.status / "evals" / "ladder.json").read_text())
    l1_bytes = (cfg.layout.status / "evals" / "binary" / "level_1.jsonl").read_bytes()
    Curriculum.from_config(cfg).set_level("binary", 2)      # a level is reached: the ladder grows by one rung
    loads.clear()
    make_checkpoint(cfg, micro_model_dir, 30, seed=2)
    [c30] = score_new_checkpoints(cfg)
    assert "ladder:binary:L2" in c30["sets"] and c30["accuracy"]["binary"]["level"] == 2
    assert loads == ["checkpoint-30", "checkpoint-10"]       # the deployed one, for the new rung only
    ledger = load_ledger(cfg)
    base = ledger["checkpoints"]["checkpoint-10"]
    assert list(base["baseline_scored"]) == ["ladder:binary:L2"]
    assert base["sets"]["ladder:binary:L2"]["digest"] == c30["sets"]["ladder:binary:L2"]["digest"]
    assert base["sets"]["ladder:binary:L1"] == rung                       # its earlier results are untouched
    # the lower rung never changed: same bytes, same recorded digest; the index only gained the new rung
    assert (cfg.layout.status / "evals" / "binary" / "level_1.jsonl").read_bytes() == l1_bytes
    after = json.loads((cfg.layout.status / "evals" / "ladder.json").read_text())["rungs"]
    assert {k: v for k, v in after.items() if k != "binary/2"} == ladder_index["rungs"] and "binary/2" in after

    loads.clear()
    make_checkpoint(cfg, micro_model_dir, 40, seed=3)
    score_new_checkpoints(cfg)
    assert loads == ["checkpoint-40"]                        # cached: the deployed version is not scored again

    # both rules' verdicts against the deployed version, on the paired sets
    assert record_verdicts(cfg, deployed["content_id"]) == 3
    entries = load_ledger(cfg)["checkpoints"]
    v = entries["checkpoint-40"]["verdicts"][-1]
    assert v["baseline_checkpoint"] == "checkpoint-10" and set(v) >= {"paired", "margin", "at"}
    assert record_verdicts(cfg, deployed["content_id"]) == 0   # judged once per deployed version and set list
    decision = champion_decision(entries["checkpoint-40"], entries["checkpoint-10"], cfg.comparison)
    assert {t["set"] for t in decision.tests} == {"anchor:anchor", "ladder:binary:L1", "ladder:binary:L2", "ladder:syllo:L1"}
    # the monitor's ranking shows the per-level results, the same items for every checkpoint
    from monitoring.sources import checkpoints

    shown = checkpoints(cfg)
    row = next(c for c in shown["checkpoints"] if c["name"] == "checkpoint-30")
    sets30 = entries["checkpoint-30"]["sets"]
    assert shown["rule"] == "paired" and row["ladder"] == {
        "binary": {1: sets30["ladder:binary:L1"]["accuracy"], 2: sets30["ladder:binary:L2"]["accuracy"]},
        "syllo": {1: sets30["ladder:syllo:L1"]["accuracy"]}}
    assert row["sets"]["anchor:anchor"] == {"kind": "anchor", "n": 6, "accuracy": None,
                                            "mean_loss": sets30["anchor:anchor"]["mean_loss"]}
    assert row["verdict"]["baseline_checkpoint"] == "checkpoint-10" and "key" not in row["verdict"]


def test_held_out_rows_of_files_trained_since_the_deployed_version_are_a_set(make_config, tmp_path):
    from core.queue_store import TrainingQueue
    from management.item_sets import trained_sets
    from trainer.packing import held_out_indices

    cfg = make_config({"training.eval_split_fraction": 0.2, "comparison.trained_rows": 3})
    queue = TrainingQueue(cfg)
    ids, written = [], {}
    for i, end in enumerate((15, 25, 35)):
        src = write_chat_rows(tmp_path / f"f{i}.jsonl", 40, seed=i)
        written[i] = [json.loads(line) for line in src.read_text().splitlines()]  # the queue moves the file in
        ids.append(f"{i:02d}" + "ab" * 31)
        queue.enqueue(src, file_id=ids[-1], original_name=src.name, schema_id="chat_sft_v1")
        e = queue.claim_next()
        queue.complete(e.name, global_step_end=end)
    sets = trained_sets(cfg, since_step=20, until_step=40)          # deployed at step 20: the last two files
    assert [s.id for s in sets] == [f"trained:{ids[1][:12]}", f"trained:{ids[2][:12]}"]
    rows = written[1]
    idx = held_out_indices(40, cfg.training.seed, ids[1], 0.2, cfg.training.eval_split_max)[:3]
    assert sets[0].rows == [rows[i] for i in idx] and sets[0].kind == "trained"
    assert trained_sets(cfg, since_step=20, until_step=40)[0].digest == sets[0].digest   # deterministic
    assert trained_sets(cfg, since_step=None, until_step=40) == []                       # nothing deployed yet


def test_every_set_gets_a_generation_budget_its_longest_answer_fits(caplog, micro_model_dir):
    """A perfect model is exact on syllo level 5 (answers of 71-83 tokens on the tiny tokenizer): the budget follows
    the set's longest expected answer. Under a cap the answers cannot fit, they are cut, and the log says why."""
    from data_manager.skills.syllo import SylloSkill
    from management.item_sets import ItemSet
    from management.scoring import answer_budget, score_sets
    from trainer.data import load_tokenizer

    tokenizer = load_tokenizer(micro_model_dir)  # the same BPE recipe as the tiny model's
    samples = [s.to_dict() for s in SylloSkill().generate(5, 8, 2 ** 40 + 5)]
    lengths = [len(tokenizer(s["assistant_response"], add_special_tokens=False)["input_ids"]) for s in samples]
    assert max(lengths) > 64  # what the old fixed budget of 64 could never hold

    class Perfect:  # answers each prompt with its expected answer, cut to the budget it is given, as generate would
        def __init__(self):
            self.tokenizer, self.budgets = tokenizer, []

        def item_losses(self, rows):
            return [None] * len(rows)

        def generate(self, prompts, max_new_tokens):
            self.budgets.append(max_new_tokens)
            by_prompt = {s["user_prompt"]: s["assistant_response"] for s in samples}
            ids = [tokenizer(by_prompt[p[0]["content"]], add_special_tokens=False)["input_ids"][:max_new_tokens]
                   for p in prompts]
            return [tokenizer.decode(x) for x in ids], None

    exact = lambda item_set, answers: ([a == s["assistant_response"] for a, s in zip(answers, item_set.samples)], "exact")
    item_set = ItemSet(id="ladder:syllo:L5", kind="ladder", digest="d", rows=[], samples=samples, skill="syllo", level=5)
    scorer = Perfect()
    results, _ = score_sets(scorer, [item_set], exact, 256)
    assert results["ladder:syllo:L5"]["accuracy"] == 1.0
    assert scorer.budgets == [answer_budget(tokenizer, samples, 256)[0]] == [max(lengths) + max(lengths) // 2 + 8]
    with caplog.at_level("WARNING", logger="management.scoring"):
        results, _ = score_sets(scorer, [item_set], exact, 64)
    assert results["ladder:syllo:L5"]["accuracy"] == sum(n <= 64 for n in lengths) / len(lengths) < 1.0
    assert f"longest expected answer is {max(lengths)} tokens, over the generation cap comparison.max_new_tokens=64" \
        in caplog.text
    # a short-answer set is not given the cap: binary answers stop generating early
    from data_manager.skills.binary import BinarySkill
    short = [s.to_dict() for s in BinarySkill().generate(1, 4, 1)]
    assert answer_budget(tokenizer, short, 256)[0] < 16

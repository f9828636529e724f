"""The held-out ladder (write-once rungs with their digest), mastery on it, rehearsal weighted by forgetting, time-sized files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_manager.curriculum_manager import Curriculum
from data_manager.ladder import Ladder, LadderError
from data_manager.manager import DataManager
from data_manager.skill_api_client import LocalSkillClient
from data_manager.skills import get_skill


def _make(skill: str, level: int, n: int = 6, seed: int = 11):
    return lambda: LocalSkillClient(get_skill(skill)).generate(level, n, seed)


def test_a_rung_is_written_once_with_its_digest_and_never_changes(tmp_path):
    ladder = Ladder(tmp_path / "evals")
    first = ladder.rung("binary", 2, _make("binary", 2), seed=11)
    data = first.path.read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest() == ladder.recorded("binary", 2)["sha256"]
    assert ladder.recorded("binary", 2)["items"] == 6 and ladder.recorded("binary", 2)["seed"] == 11
    # asked again (even with a generator that would give other items): the same items, the file untouched
    again = ladder.rung("binary", 2, _make("binary", 2, seed=99))
    assert again.samples == first.samples and first.path.read_bytes() == data
    assert again.items(4) == list(first.samples[:4]) and again.set_digest(4) == first.set_digest(4) != first.set_digest(5)
    # edited by hand: refused, named, left as it is (never regenerated over)
    first.path.write_bytes(data + b"\n")
    with pytest.raises(LadderError, match=r"level_2.jsonl: contents changed since the rung was written"):
        ladder.rung("binary", 2, _make("binary", 2))
    first.path.write_bytes(data)
    assert ladder.rung("binary", 2).samples == first.samples
    # deleted: refused too, rather than different items under the same name
    first.path.unlink()
    with pytest.raises(LadderError, match="is missing; refusing to make different items under the same name"):
        ladder.rung("binary", 2, _make("binary", 2))


def test_a_rung_of_the_wrong_skill_or_level_is_never_written_or_used(tmp_path):
    ladder = Ladder(tmp_path / "evals")
    with pytest.raises(LadderError, match="include 6 of another skill/level"):
        ladder.rung("binary", 3, _make("binary", 2))
    assert not ladder.path("binary", 3).exists() and ladder.recorded("binary", 3) is None
    # a held-out set from before the ladder had an index is adopted as it is, when it is all of its level
    path = ladder.path("syllo", 1)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(s) + "\n" for s in _make("syllo", 1)()))
    assert len(ladder.rung("syllo", 1).samples) == 6 and ladder.recorded("syllo", 1)["sha256"]
    bad = ladder.path("syllo", 2)
    bad.write_text("".join(json.dumps(s) + "\n" for s in _make("syllo", 1)()))
    with pytest.raises(LadderError, match=r"level_2.jsonl:1: item is not syllo level 2"):
        ladder.rung("syllo", 2)


@pytest.fixture
def dm(make_config):
    cfg = make_config({"data_manager.carry_fraction": 0.0, "data_manager.eval_count": 6, "data_manager.replay_fraction": 0.0,
                       "data_manager.rehearsal_fraction": 0.5, "data_manager.rehearsal_max_fraction": 0.5,
                       "data_manager.rehearsal_boost": 10.0})
    clients = {name: LocalSkillClient(get_skill(name)) for name in ("binary", "syllo")}
    return DataManager(cfg, clients=clients, count_tokens=lambda t: len(t.split()) + 1)


def test_the_ladder_grows_with_the_level_and_lower_rungs_stay(dm):
    assert [r.level for r in dm.ladder_rungs("binary")] == [1]
    before = dm.rung("binary", 1).path.read_bytes()
    dm.curriculum.set_level("binary", 3)
    rungs = dm.ladder_rungs("binary")
    assert [r.level for r in rungs] == [1, 2, 3] and rungs[0].path.read_bytes() == before
    assert all(s["metadata"]["level"] == r.level for r in rungs for s in r.samples)


def test_lower_levels_that_fall_below_the_bar_are_rehearsed_more(dm):
    cur = dm.curriculum
    cur.set_level("binary", 3)
    assert cur.record_ladder("binary", {1: 1.0, 2: 0.3}, step=50, checkpoint="checkpoint-50") == {2: 0.5}
    assert cur.forgetting("binary") == {2: 0.5} and cur.status()["skills"]["binary"]["ladder"] == {1: 1.0, 2: 0.3}
    weights = dm.rehearsal_weights()
    assert weights == {("binary", 1): 1.0, ("binary", 2): 7.0}      # 1 + 10 * (0.8 + 0.1 - 0.3); syllo: no lower level
    batch = dm.generate_batch(skill="binary", count=70)             # + 70 rehearsal rows (fraction 0.5)
    rows = [json.loads(line) for line in Path(batch.path).read_text().splitlines()]
    levels = {}
    for r in rows:
        levels[r["metadata"]["level"]] = levels.get(r["metadata"]["level"], 0) + 1
    assert levels == {3: 70, 1: 9, 2: 61}                           # 70 * 1/8 = 8.75 and 61.25, largest remainder
    assert json.loads(dm.state_path.read_text())["last_batch"]["rehearsed"] == {"binary:1": 9, "binary:2": 61}
    # one good reading does not clear it: the mean of the last 3 (window) decides, so one lucky or unlucky reading of
    # 24 items (4 points each) neither ends nor starts a rehearsal
    cur.record_ladder("binary", {2: 0.9})
    assert cur.forgetting("binary") == {2: pytest.approx(0.2)} and dm.rehearsal_weights()[("binary", 2)] == pytest.approx(4.0)
    cur.record_ladder("binary", {2: 0.9})
    cur.record_ladder("binary", {2: 0.9})                             # [0.9, 0.9, 0.9]: at the target, weight 1
    assert cur.forgetting("binary") == {} and dm.rehearsal_weights() == {("binary", 1): 1.0, ("binary", 2): 1.0}
    assert cur.status()["skills"]["binary"]["ladder_mean"] == {1: 1.0, 2: pytest.approx(0.9)}
    # over the bar but short of bar + margin: not forgotten (no hold, no bigger share), but rehearsed more already
    cur.record_ladder("binary", {1: 0.85})
    cur.record_ladder("binary", {1: 0.85})
    cur.record_ladder("binary", {1: 0.85})
    assert cur.forgetting("binary") == {} and dm.rehearsal_weights()[("binary", 1)] == pytest.approx(1.5)
    assert dm.rehearsal_share() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="accuracy in \\[0, 1\\]"):
        cur.record_ladder("binary", {2: 1.5})


def test_the_rehearsal_share_grows_with_forgetting_up_to_its_cap(make_config):
    cfg = make_config({"data_manager.window": 1,  # one reading decides: the share, not the mean, is tested here
                       "data_manager.carry_fraction": 0.0, "data_manager.replay_fraction": 0.0, "data_manager.rehearsal_fraction": 0.15,
                       "data_manager.rehearsal_max_fraction": 0.6, "data_manager.rehearsal_boost": 10.0})
    dm = DataManager(cfg, clients={n: LocalSkillClient(get_skill(n)) for n in ("binary", "syllo")},
                     count_tokens=lambda t: len(t.split()) + 1)
    cur = dm.curriculum
    cur.set_level("syllo", 5)
    cur.record_ladder("syllo", {1: 1.0, 2: 0.9, 3: 0.85, 4: 0.8})
    assert dm.rehearsal_share() == pytest.approx(0.15)                   # every lower level holds
    cur.record_ladder("syllo", {3: 0.4})                                 # 0.4 short of the bar of 0.8: half way
    assert dm.rehearsal_share() == pytest.approx(0.15 + 0.45 * 0.5)
    cur.record_ladder("syllo", {3: 0.04, 4: 0.0})                        # collapsed: the cap
    assert dm.rehearsal_share() == pytest.approx(0.6)
    batch = dm.generate_batch(skill="syllo", count=40)
    rows = [json.loads(line) for line in Path(batch.path).read_text().splitlines()]
    by_level = {}
    for r in rows:
        by_level[r["metadata"]["level"]] = by_level.get(r["metadata"]["level"], 0) + 1
    assert sum(n for lvl, n in by_level.items() if lvl < 5) == int(40 * 0.6 / 0.4) == 60   # 60 % of the batch
    assert by_level[3] + by_level[4] > 0.8 * 60                          # and most of it on the forgotten two


def test_replay_of_another_skill_goes_partly_to_its_forgotten_levels(make_config):
    cfg = make_config({"data_manager.window": 1,  # one reading decides: the share, not the mean, is tested here
                       "data_manager.carry_fraction": 0.0, "data_manager.replay_fraction": 0.5, "data_manager.rehearsal_fraction": 0.15,
                       "data_manager.rehearsal_max_fraction": 0.6})
    dm = DataManager(cfg, clients={n: LocalSkillClient(get_skill(n)) for n in ("binary", "syllo")},
                     count_tokens=lambda t: len(t.split()) + 1)
    cur = dm.curriculum
    cur.set_level("syllo", 5)
    cur.record_ladder("syllo", {1: 1.0, 2: 0.9, 3: 0.85, 4: 0.8})
    assert dm.replay_plan("syllo", 100) == {5: 100}                  # nothing forgotten: the current level only
    cur.record_ladder("syllo", {3: 0.2, 4: 0.0})                     # shortfalls 0.6 and 0.8: the cap, 0.45 extra
    assert dm.replay_plan("syllo", 100) == {3: 19, 4: 25, 5: 56}     # 45 rows, 0.6 : 0.8
    batch = dm.generate_batch(skill="binary", count=100)
    rows = [json.loads(line) for line in Path(batch.path).read_text().splitlines()]
    syllo = {}
    for r in rows:
        if r["metadata"]["skill"] == "syllo":
            syllo[r["metadata"]["level"]] = syllo.get(r["metadata"]["level"], 0) + 1
    replay = json.loads(dm.state_path.read_text())["last_batch"]
    assert replay["replayed"]["syllo"] == sum(syllo.values()) - sum(n for k, n in replay["rehearsed"].items()
                                                                    if k.startswith("syllo:"))
    assert syllo[5] < sum(syllo.values()) / 2 and syllo[3] + syllo[4] > syllo[5]   # the forgotten two get more
    assert "replay:syllo:5" in json.loads(Path(batch.job_path).read_text())["tags"]


def test_the_comparison_engine_feeds_mastery_from_the_fixed_items_and_lower_rungs_to_rehearsal(make_config, micro_model_dir):
    from management.model_comparison_engine import score_new_checkpoints
    from tests.management_support import make_checkpoint

    cfg = make_config({"comparison.ladder_items": 4, "comparison.max_new_tokens": 4, "data_manager.eval_count": 6})
    Curriculum.from_config(cfg).set_level("binary", 2)
    make_checkpoint(cfg, micro_model_dir, 10)
    [entry] = score_new_checkpoints(cfg)
    cur = Curriculum.from_config(cfg)
    last = cur.history("binary")[-1]
    assert (last["level"], last["n"], last["accuracy"]) == (2, 4, entry["sets"]["ladder:binary:L2"]["accuracy"])
    ladder = cur.status()["skills"]["binary"]["ladder"]
    assert ladder == {1: entry["sets"]["ladder:binary:L1"]["accuracy"]}   # the lower rung, for rehearsal


def test_generated_files_are_sized_by_the_measured_training_rate(make_config, tmp_path):
    from core.queue_store import TrainingQueue
    from tests.management_support import write_chat_rows

    cfg = make_config({"data_manager.batch_size": 2000, "data_manager.file_seconds": 60, "data_manager.replay_fraction": 0.5,
                       "data_manager.rehearsal_fraction": 0.2, "data_manager.min_batch_size": 50})
    dm = DataManager(cfg, clients={n: LocalSkillClient(get_skill(n)) for n in ("binary", "syllo")})
    assert dm.sized_batch() == (2000, None)                         # nothing measured yet: batch_size
    queue = TrainingQueue(cfg)
    for i, (examples, seconds) in enumerate(((300, 60), (500, 100), (100, 50), (900, 90))):
        src = write_chat_rows(tmp_path / f"dm_binary_{i}.jsonl", 4, seed=i)
        queue.enqueue(src, file_id=f"{i:064d}", original_name=src.name, schema_id="chat_sft_v1",
                      validation={"examples": examples})
        e = queue.claim_next()
        queue.complete(e.name, global_step_end=i)
        queue.update_meta(e.name, finished_at=f"2026-12-01T1{i}:{seconds // 60:02d}:{seconds % 60:02d}Z",
                          started_at=f"2026-12-01T1{i}:00:00Z")
    assert dm.training_rate() == 5.0                                 # median of 5, 5, 2, 10 examples/s
    count, sized = dm.sized_batch()
    assert count == int(5.0 * 60 * 0.5 * 0.8) == 120 and sized["examples_per_second"] == 5.0


def test_a_checkpoint_whose_lower_rung_collapsed_does_not_move_the_skill_up(make_config):
    """The comparison engine records the lower rungs before the current level's eval, so the checkpoint that masters
    level 2 while forgetting level 1 holds the skill at 2 (and the same entry without the collapse moves it up)."""
    from management.eval_source import EvalSource

    cfg = make_config({"data_manager.window": 1})
    source = EvalSource(cfg)
    Curriculum.from_config(cfg).set_level("binary", 2)

    def entry(step, l1):
        return {"step": step, "checkpoint": f"checkpoint-{step}",
                "accuracy": {"binary": {"level": 2, "accuracy": 1.0, "total": 4}},
                "sets": {"ladder:binary:L1": {"kind": "ladder", "skill": "binary", "level": 1, "accuracy": l1},
                         "ladder:binary:L2": {"kind": "ladder", "skill": "binary", "level": 2, "accuracy": 1.0}}}

    reasons = source.record(entry(5, 0.25))
    assert Curriculum.from_config(cfg).level("binary") == 2 and "held there" in reasons["binary"]
    reasons = source.record(entry(6, 1.0))
    assert Curriculum.from_config(cfg).level("binary") == 3, reasons


def test_the_level_just_passed_is_carried_in_every_file_and_every_replay(make_config):
    """carry_fraction of a skill's current-level rows come from the level just below, in its own files and in its
    replay in the other skill's files, so a level-up does not leave the passed level out of every step."""
    cfg = make_config({"data_manager.carry_fraction": 0.25, "data_manager.replay_fraction": 0.5,
                       "data_manager.rehearsal_fraction": 0.0, "data_manager.rehearsal_max_fraction": 0.6})
    dm = DataManager(cfg, clients={n: LocalSkillClient(get_skill(n)) for n in ("binary", "syllo")},
                     count_tokens=lambda t: len(t.split()) + 1)
    assert dm.carry_split(1, 40) == {1: 40}                           # nothing below level 1
    assert dm.carry_split(3, 40) == {3: 30, 2: 10} and dm.carry_split(3, 1) == {3: 1}
    cur = dm.curriculum
    cur.set_level("syllo", 3)
    cur.set_level("binary", 3)
    batch = dm.generate_batch(skill="syllo", count=40)
    rows = [json.loads(line) for line in Path(batch.path).read_text().splitlines()]
    count = lambda skill, level: sum(r["metadata"]["skill"] == skill and r["metadata"]["level"] == level for r in rows)
    assert (count("syllo", 3), count("syllo", 2), count("syllo", 1)) == (30, 10, 0)
    assert dm.load_state()["last_batch"]["carried"] == 10
    assert "level:3" in json.loads(Path(batch.job_path).read_text())["tags"]    # the file is of level 3 all the same
    # binary's replay rows follow its plan (scaled to the token share by one factor for both levels)
    assert dm.replay_plan("binary", 100) == {2: 25, 3: 75}
    assert count("binary", 2) > 0 and count("binary", 3) > 2 * count("binary", 2) and count("binary", 1) == 0
    # a forgotten lower level takes its share of the replay first; the rest is carried as usual
    cur.record_ladder("binary", {1: 1.0, 2: 0.0})        # shortfall 0.8 = the bar: the 0.6 cap, all of it above 0
    assert dm.replay_plan("binary", 100) == {2: 60 + 10, 3: 30}        # 60 to the forgotten level, 40 split 1 : 3


def test_carry_fraction_zero_trains_the_current_level_only(make_config):
    cfg = make_config({"data_manager.carry_fraction": 0.0, "data_manager.replay_fraction": 0.0,
                       "data_manager.rehearsal_fraction": 0.0})
    dm = DataManager(cfg, clients={n: LocalSkillClient(get_skill(n)) for n in ("binary", "syllo")},
                     count_tokens=lambda t: len(t.split()) + 1)
    dm.curriculum.set_level("binary", 3)
    batch = dm.generate_batch(skill="binary", count=30)
    rows = [json.loads(line) for line in Path(batch.path).read_text().splitlines()]
    assert {r["metadata"]["level"] for r in rows} == {3} and len(rows) == 30
    assert dm.replay_plan("binary", 100) == {3: 100} and dm.load_state()["last_batch"]["carried"] == 0

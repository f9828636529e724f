"""The paired champion rule: is a candidate better than the deployed version on the same items?

Both versions are scored on the same item sets (management/item_sets.py): the
ladder rungs of every skill up to its highest level, the held-out rows of the
files trained since the deployed version, the user's validation and eval files,
and the anchor set. Per set and metric the two are compared item by item:

  * exact match (0/1 per item): exact one-sided sign test on the discordant
    items (McNemar): p_better = P(X >= wins), X ~ Binomial(wins + losses, 1/2);
  * per-item loss: paired bootstrap of the mean difference (baseline - candidate),
    seeded by the set's digest, so the same scores always give the same p.

The decision, at confidence c = comparison.confidence (alpha = 1 - c, split
evenly over the tests of each kind, Bonferroni, so the stated confidence holds
for the whole family and not for each of twenty sets):

  1. refused when any guarded test regresses: p_worse < alpha / n_guard_tests AND
     the drop exceeds its tolerance (comparison.accuracy_tolerance points of exact
     match, comparison.guard_tolerance relative loss). The reason names the set;
  2. refused when, on a level a skill has passed (a ladder rung below the skill's highest one), the candidate
     reads under both the mastery bar (`floor`: data_manager.threshold when comparison.keep_mastered) and the
     deployed version: a passed level the served version holds stays at or above the bar, and one it does
     not hold yet (right after a level-up) never reads lower, on the rung's fixed items. Test 1 alone lets a
     passed level slide (the Bonferroni split over ~15 guarded sets needs ~9 losses of 24 and no win before
     it calls a drop significant);
  3. refused when no improvement test has p_better < alpha / n_improvement_tests
     (a noisy tie is not a promotion);
  4. otherwise accepted, naming the sets it is better on.

Which metrics serve as improvement evidence and which are guarded, per kind of
set, is the table ROLES. The loss of a mastered ladder rung is not guarded (it
drifts while the answers stay right); its exact match is.

Library only: `paired_decision(candidate_sets, baseline_sets, cc, floor=None)`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 4000

# kind -> (metrics that can show "better", metrics whose regression blocks promotion)
ROLES = {
    "ladder": (("exact", "loss"), ("exact",)),      # skills: right answers on fixed items; loss shows progress earlier
    "eval": (("exact",), ("exact",)),               # the user's eval files: exact match
    "validation": (("loss",), ("loss",)),           # the user's validation file
    "trained": (("loss",), ("loss",)),              # held-out rows of files trained since the deployed version
    "anchor": ((), ("loss",)),                      # the forgetting guard only: never a reason to promote
}


def sign_test(wins: int, losses: int) -> tuple[float, float]:
    """One-sided exact sign test p-values (p_better, p_worse) from the discordant pairs."""
    n = wins + losses
    if n == 0:
        return 1.0, 1.0

    def tail(k: int) -> float:
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n

    return tail(wins), tail(losses)


def bootstrap_test(diffs: list[float], seed_text: str, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """One-sided paired bootstrap p-values (p_better, p_worse) for the mean of `diffs` (> 0 = candidate better)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0 or not np.any(d):
        return 1.0, 1.0
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    return (float((1 + np.sum(means <= 0)) / (resamples + 1)), float((1 + np.sum(means >= 0)) / (resamples + 1)))


@dataclass
class PairedTest:
    set: str
    kind: str
    metric: str  # exact | loss
    n: int
    candidate: float  # accuracy or mean per-item loss
    baseline: float
    p_better: float
    p_worse: float
    improves: bool  # counts as improvement evidence
    guarded: bool  # its regression blocks promotion
    beyond_tolerance: bool = False  # the candidate is worse by more than the tolerance

    def describe(self) -> str:
        return f"{self.set} {self.metric} {self.baseline:.4g} -> {self.candidate:.4g} (n={self.n})"


@dataclass
class PairedDecision:
    accepted: bool
    reason: str
    tests: list[PairedTest]
    unpaired: list[str]
    alpha_better: float | None = None
    alpha_guard: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def paired_tests(cand: dict, base: dict, cc) -> tuple[list[PairedTest], list[str]]:
    """The tests on every set both were scored on with the same items (same digest); unpaired set ids beside."""
    tests, unpaired = [], []
    for set_id, c in sorted(cand.items()):
        b = base.get(set_id)
        if not b or b.get("digest") != c.get("digest"):
            unpaired.append(set_id)
            continue
        kind = c.get("kind", "eval")
        improve, guard = ROLES.get(kind, ((), ()))
        if c.get("exact") and b.get("exact") and len(c["exact"]) == len(b["exact"]) and ("exact" in improve or "exact" in guard):
            ce, be = [ch == "1" for ch in c["exact"]], [ch == "1" for ch in b["exact"]]
            wins = sum(1 for x, y in zip(ce, be) if x and not y)
            losses = sum(1 for x, y in zip(ce, be) if y and not x)
            pb, pw = sign_test(wins, losses)
            ca, ba = sum(ce) / len(ce), sum(be) / len(be)
            tests.append(PairedTest(set_id, kind, "exact", len(ce), ca, ba, pb, pw, "exact" in improve, "exact" in guard,
                                    ba - ca > cc.accuracy_tolerance + 1e-12))
        cl, bl = c.get("loss") or [], b.get("loss") or []
        if cl and len(cl) == len(bl) and ("loss" in improve or "loss" in guard):
            pairs = [(x, y) for x, y in zip(cl, bl) if x is not None and y is not None]
            if pairs:
                diffs = [y - x for x, y in pairs]
                pb, pw = bootstrap_test(diffs, f"{set_id}:{c.get('digest')}")
                cm, bm = sum(x for x, _ in pairs) / len(pairs), sum(y for _, y in pairs) / len(pairs)
                worse = (cm - bm) / abs(bm) if bm else cm - bm
                tests.append(PairedTest(set_id, kind, "loss", len(pairs), cm, bm, pb, pw, "loss" in improve, "loss" in guard,
                                        worse > cc.guard_tolerance + 1e-12))
    return tests, unpaired


def passed_rungs(sets: dict) -> set[str]:
    """Ladder set ids below their skill's highest rung in `sets`: the levels each skill has passed."""
    top: dict[str, int] = {}
    for r in sets.values():
        if r.get("kind") == "ladder" and r.get("skill") and isinstance(r.get("level"), int):
            top[r["skill"]] = max(top.get(r["skill"], 0), r["level"])
    return {sid for sid, r in sets.items() if r.get("kind") == "ladder" and r.get("skill") in top
            and isinstance(r.get("level"), int) and r["level"] < top[r["skill"]]}


def paired_decision(cand: dict, base: dict, cc, floor: float | None = None) -> PairedDecision:
    """Accept `cand` (set results of the candidate) over `base` (the deployed version's) under the paired rule;
    `floor`: the mastery bar a passed level the deployed version holds must stay at (None: no such guard)."""
    tests, unpaired = paired_tests(cand, base, cc)
    if not tests:
        return PairedDecision(False, f"no item set scored for both the candidate and the deployed version "
                                     f"(unpaired: {', '.join(unpaired) or 'none'})", tests, unpaired)
    alpha = 1.0 - cc.confidence
    improve = [t for t in tests if t.improves]
    guard = [t for t in tests if t.guarded]
    a_better = alpha / max(1, len(improve))
    a_guard = alpha / max(1, len(guard))
    regressions = [t for t in guard if t.p_worse < a_guard and t.beyond_tolerance]
    if regressions:
        worst = min(regressions, key=lambda t: t.p_worse)
        what = "forgets" if worst.kind in ("ladder", "anchor") else "regresses on"
        more = f" (+{len(regressions) - 1} more)" if len(regressions) > 1 else ""
        return PairedDecision(False, f"{what} {worst.describe()}, p={worst.p_worse:.2g} < {a_guard:.2g}{more}: "
                                     f"forgetting guard", tests, unpaired, a_better, a_guard)
    if floor is not None:
        passed = passed_rungs(cand)
        dropped = [t for t in tests if t.metric == "exact" and t.set in passed
                   and t.candidate < min(floor, t.baseline) - 1e-9]
        if dropped:
            worst = min(dropped, key=lambda t: t.candidate)
            more = f" (+{len(dropped) - 1} more)" if len(dropped) > 1 else ""
            return PairedDecision(False, f"forgets {worst.describe()}: a passed level under the mastery bar "
                                         f"{floor:.0%} and under the deployed version{more}: mastery guard",
                                  tests, unpaired, a_better, a_guard)
    better = sorted((t for t in improve if t.p_better < a_better), key=lambda t: t.p_better)
    if not better:
        best = min(improve, key=lambda t: t.p_better, default=None)
        hint = f"; closest {best.describe()}, p={best.p_better:.2g}" if best else ""
        return PairedDecision(False, f"not better on any set at {cc.confidence:.0%} confidence "
                                     f"(needs p < {a_better:.2g}){hint}: a tie", tests, unpaired, a_better, a_guard)
    more = f" (+{len(better) - 1} more)" if len(better) > 1 else ""
    return PairedDecision(True, f"better on {better[0].describe()}, p={better[0].p_better:.2g} < {a_better:.2g}{more}; "
                                f"no guarded set regresses ({len(guard)} tested)", tests, unpaired, a_better, a_guard)

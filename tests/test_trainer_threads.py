"""The one-process CPU trainer leaves the scorer its cores (training.cpu_threads, trainer/child.py)."""
from __future__ import annotations

import pytest

from trainer.child import cpu_train_threads


@pytest.mark.parametrize("overrides, default, expected", [
    ({}, 2, 1),                                                     # 2 cores, the 1-thread scorer beside it
    ({}, 8, 7),
    ({}, 1, 1),                                                     # never 0
    ({"comparison.torch_threads": 3}, 8, 5),
    ({"comparison.torch_threads": None}, 4, 4),                     # a scorer with torch's choice: nothing to leave
    ({"comparison.device": "cuda:1"}, 4, 4),                        # the scorer on a GPU takes no cores
    ({"training.cpu_threads": 2}, 2, 2),                            # said outright: honoured as it is
    ({"training.cpu_threads": 3, "comparison.device": "cuda"}, 8, 3),
])
def test_cpu_trainer_threads_leave_the_scorer_its_cores(make_config, overrides, default, expected):
    assert cpu_train_threads(make_config(overrides), default) == expected


def test_cpu_threads_must_be_positive(make_config):
    from core.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="cpu_threads"):
        make_config({"training.cpu_threads": 0})

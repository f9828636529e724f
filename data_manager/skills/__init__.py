"""Built-in skills for the curriculum and the framework to serve them.

`get_skill(name, **options)` returns a Skill; `create_app(skill)` wraps it
in the Skill API. Binary arithmetic and the SYLLO word puzzle are built in.

Run as: cadence skills serve binary|syllo [--port N] [--host 127.0.0.1]
"""
from __future__ import annotations

from data_manager.skills.base import LevelInfo, Sample, ScoreResult, Skill, generic_score, normalize_text, parse_json_answer
from data_manager.skills.binary import BinarySkill
from data_manager.skills.syllo import SylloSkill

BUILTIN_SKILLS: dict[str, type[Skill]] = {"binary": BinarySkill, "syllo": SylloSkill}
DEFAULT_PORTS = {"binary": 8090, "syllo": 8091}


def get_skill(name: str, **options) -> Skill:
    try:
        return BUILTIN_SKILLS[name](**options)
    except KeyError:
        raise KeyError(f"no built-in skill {name!r}; built-in: {', '.join(sorted(BUILTIN_SKILLS))}") from None


def create_app(skill: Skill):
    from data_manager.skills.server import create_app as _create_app  # lazy: pulls fastapi, fastapi.exceptions, fastapi.responses, which this module's importers must not load

    return _create_app(skill)


__all__ = ["BUILTIN_SKILLS", "DEFAULT_PORTS", "BinarySkill", "LevelInfo", "Sample", "ScoreResult", "Skill",
           "SylloSkill", "create_app", "generic_score", "get_skill", "normalize_text", "parse_json_answer"]

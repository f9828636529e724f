"""FastAPI app serving any Skill over the Skill API (data_manager/SKILL_API.md).

Routes: GET /health, GET /info, GET /levels, POST /generate, POST /score.
Errors are JSON `{"error": {"message", "type"}}` with a 4xx status, never a
200 with an error text in the body (the original system scored 0% for days
that way).

Run as: cadence skills serve binary|syllo [--port N]   (uses create_app)
"""
from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from data_manager.skills.base import Skill

logger = logging.getLogger(__name__)

MAX_COUNT = 10_000


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = Field(..., ge=1, description="Level to generate at.")
    count: int = Field(1, ge=0, le=MAX_COUNT, description="Number of samples.")
    seed: int | None = Field(None, ge=0, description="Seed; the same (level, count, seed) always gives the same samples. Omitted: random, echoed back.")


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    assistant_response: str = Field(..., description="The expected answer (as generated).")
    user_prompt: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: list[ScoreItem] = Field(..., max_length=MAX_COUNT, description="Samples as returned by /generate.")
    answers: list[str] = Field(..., max_length=MAX_COUNT, description="One model answer per sample, same order.")


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def create_app(skill: Skill) -> FastAPI:
    app = FastAPI(title=f"Cadence skill: {skill.name}", version=skill.version)
    app.state.skill = skill

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(422, problems, "invalid_request")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "skill": skill.name}

    @app.get("/info")
    def info() -> dict:
        return skill.info()

    @app.get("/levels")
    def levels() -> dict:
        return {"skill": skill.name, "levels": skill.levels(), "details": [i.to_dict() for i in skill.level_info()]}

    @app.post("/generate")
    def generate(req: GenerateRequest):
        if req.level > skill.max_level:
            return _error(422, f"level must be in 1..{skill.max_level}, got {req.level}", "invalid_level")
        seed = req.seed if req.seed is not None else secrets.randbelow(2 ** 31)
        samples = skill.generate(req.level, req.count, seed)
        return {"skill": skill.name, "level": req.level, "seed": seed, "count": len(samples),
                "samples": [s.to_dict() for s in samples]}

    @app.post("/score")
    def score(req: ScoreRequest):
        if len(req.samples) != len(req.answers):
            return _error(422, f"{len(req.samples)} samples but {len(req.answers)} answers", "invalid_request")
        results = [skill.score(s.assistant_response, a).to_dict() for s, a in zip(req.samples, req.answers)]
        correct = sum(1 for r in results if r["correct"])
        return {"skill": skill.name, "results": results, "correct": correct, "total": len(results),
                "accuracy": correct / len(results) if results else 0.0}

    return app

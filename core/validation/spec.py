"""Dataset specs: which row shapes Cadence trains on, deny by default.

`DATASET_SPECS` maps a spec id to a `DatasetSpec` holding a strict pydantic
row model. A file maps to a spec through its job sidecar (`NAME.job.json`,
`schema_id`) or `daemon.default_schema`; an id not in the registry is
rejected (`UnknownSchemaError`). Every row of a file is checked against the
spec by the QUICK level of `core.validation.validator`; this module only says
what a valid row is and which of its strings are prompt and reply.

The job sidecar a user writes beside a file (`JobSidecar`, unknown keys an
error) is a queue record: core/state/queue_records.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator

Role = Literal["system", "user", "assistant"]


class _Strict(BaseModel):
    # strict: an int is not a string; forbid: an unknown key is an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(_Strict):
    role: Role
    content: StrictStr


class ChatSftRow(_Strict):
    """chat_sft_v1: a conversation; loss on assistant turns only."""

    messages: list[Message] = Field(min_length=1)
    id: StrictStr | StrictInt | None = None
    system_prompt: StrictStr | None = None
    tags: list[StrictStr] | None = None
    difficulty: StrictStr | StrictInt | StrictFloat | None = None
    metadata: dict[str, Any] | None = None


class SylloMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    skill: StrictStr
    level: StrictInt


class SylloRow(_Strict):
    """syllo_v1: chat_sft_v1 rows plus required metadata.skill and metadata.level."""

    messages: list[Message] = Field(min_length=1)
    metadata: SylloMetadata
    id: StrictStr | StrictInt | None = None
    tags: list[StrictStr] | None = None
    difficulty: StrictStr | StrictInt | StrictFloat | None = None
    category: StrictStr | None = None
    variant: StrictStr | None = None


class CompletionRow(_Strict):
    """completion_v1: {"prompt", "completion"} (loss on completion) or {"text"} (loss on all)."""

    prompt: StrictStr | None = None
    completion: StrictStr | None = None
    text: StrictStr | None = None
    id: StrictStr | StrictInt | None = None
    tags: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "CompletionRow":
        pair = self.prompt is not None or self.completion is not None
        if pair and self.text is not None:
            raise ValueError("give either 'text' or 'prompt'+'completion', not both")
        if pair and (self.prompt is None or self.completion is None):
            raise ValueError("'prompt' and 'completion' go together")
        if not pair and self.text is None:
            raise ValueError("needs 'text', or 'prompt' and 'completion'")
        return self


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    description: str
    row_model: type[BaseModel]
    kind: Literal["chat", "completion"]

    def check_row(self, row: dict) -> list[tuple[str, str]]:
        """Schema problems of one parsed row as (field path, message); empty when the row fits."""
        try:
            self.row_model.model_validate(row)
        except ValidationError as exc:
            return [(field_path(err["loc"]), problem_message(err)) for err in exc.errors(include_url=False)]
        return []

    def strings(self, row: dict) -> Iterator[tuple[str, str]]:
        """Every free-text string of a schema-valid row as (field path, text)."""
        if self.kind == "chat":
            for i, m in enumerate(row["messages"]):
                yield f"messages[{i}].content", m["content"]
            if row.get("system_prompt") is not None:
                yield "system_prompt", row["system_prompt"]
        else:
            for key in ("prompt", "completion", "text"):
                if row.get(key) is not None:
                    yield key, row[key]

    def prompt_and_replies(self, row: dict) -> tuple[str, list[str]]:
        """Prompt side (everything the model is conditioned on) and the supervised replies."""
        if self.kind == "chat":
            prompt = "\n".join(m["content"] for m in row["messages"] if m["role"] != "assistant")
            if row.get("system_prompt"):
                prompt = row["system_prompt"] + "\n" + prompt
            return prompt, [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        if row.get("text") is not None:
            return "", [row["text"]]
        return row["prompt"], [row["completion"]]


class UnknownSchemaError(KeyError):
    def __init__(self, schema_id: str):
        super().__init__(schema_id)
        self.schema_id = schema_id

    def __str__(self) -> str:
        return f"unknown schema_id {self.schema_id!r} (known: {', '.join(sorted(DATASET_SPECS))})"


DATASET_SPECS: dict[str, DatasetSpec] = {
    spec.id: spec
    for spec in (
        DatasetSpec("chat_sft_v1", "chat conversations; loss on assistant turns", ChatSftRow, "chat"),
        DatasetSpec("completion_v1", "prompt/completion pairs or plain text", CompletionRow, "completion"),
        DatasetSpec("syllo_v1", "chat_sft_v1 plus metadata.skill and metadata.level", SylloRow, "chat"),
    )
}


def get_spec(schema_id: str) -> DatasetSpec:
    """The registered spec, or UnknownSchemaError (deny by default)."""
    try:
        return DATASET_SPECS[schema_id]
    except (KeyError, TypeError):
        raise UnknownSchemaError(str(schema_id)) from None


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problem_message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (not part of the spec)"
    if err["type"] == "missing":
        return "required key missing"
    return err["msg"]

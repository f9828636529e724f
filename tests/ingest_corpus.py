"""Generated bad-input corpus for the ingest path: every kind of broken thing a user can drop into inbox/.

Each `Kind` writes itself into an inbox folder and says which rule must reject
it and on which line (None for file-level rules). `GOOD` are unusual but
valid drops that must be queued. Used by tests/test_watcher.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

USER = {"role": "user", "content": "What is two plus two?"}
ASSISTANT = {"role": "assistant", "content": "Two plus two is four."}
GOOD_ROW = {"messages": [USER, ASSISTANT]}


def line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def good_lines(n: int, tag: str = "") -> str:
    return "".join(line({"messages": [{"role": "user", "content": f"Question {tag} {i}: what is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"The answer is {2 * i}."}]})
                   for i in range(n))


@dataclass
class Kind:
    name: str
    rule: str
    line: int | None
    make: Callable[[Path], str]  # writes into inbox, returns the entry name (relative to inbox)


def _text(fname: str, text: str, job: dict | str | None = None) -> Callable[[Path], str]:
    def make(inbox: Path) -> str:
        if job is not None:
            stem = fname[: -len(".jsonl")]
            (inbox / f"{stem}.job.json").write_text(job if isinstance(job, str) else json.dumps(job))
        (inbox / fname).write_text(text, encoding="utf-8", errors="surrogatepass")
        return fname
    return make


def _bytes(fname: str, data: bytes) -> Callable[[Path], str]:
    def make(inbox: Path) -> str:
        (inbox / fname).write_bytes(data)
        return fname
    return make


def _huge_line(inbox: Path) -> str:
    with open(inbox / "huge_line.jsonl", "w") as fh:
        fh.write(good_lines(1, "huge"))
        fh.write('{"messages":[{"role":"user","content":"' + "a" * (30 * 1024 * 1024) + '"},'
                 '{"role":"assistant","content":"ok"}]}\n')
        fh.write(good_lines(1, "after"))
    return "huge_line.jsonl"


def _symlink_file(inbox: Path) -> str:
    os.symlink("/etc/passwd", inbox / "passwd_link.jsonl")
    return "passwd_link.jsonl"


def _symlink_dir(inbox: Path) -> str:
    os.symlink("/etc", inbox / "etc_link")
    return "etc_link"


def _dir_named_jsonl(inbox: Path) -> str:
    (inbox / "folder.jsonl").mkdir()
    (inbox / "folder.jsonl" / "inner.jsonl").write_text(good_lines(2, "inner"))
    return "folder.jsonl"


def _fifo(inbox: Path) -> str:
    os.mkfifo(inbox / "pipe.jsonl")
    return "pipe.jsonl"


def _orphan_sidecar(inbox: Path) -> str:
    (inbox / "lonely.job.json").write_text(json.dumps({"priority": "high"}))
    return "lonely.job.json"


def _deep(depth: int) -> dict:
    obj: dict = {"x": 1}
    for _ in range(depth):
        obj = {"x": obj}
    return obj


LONG_PROMPT = "word " * 400  # far over the test max_length of 256 tokens

BAD: list[Kind] = [
    Kind("invalid_json", "invalid_json", 2, _text("invalid_json.jsonl", line(GOOD_ROW) + '{"messages": [\n' + line(GOOD_ROW))),
    Kind("truncated_last_line", "truncated_last_line", 3,
         _text("truncated.jsonl", good_lines(2, "t") + line(GOOD_ROW)[:25])),
    Kind("bom", "bom", 1, _bytes("bom.jsonl", b"\xef\xbb\xbf" + good_lines(2, "bom").encode())),
    Kind("utf16", "encoding", 1, _bytes("utf16.jsonl", good_lines(2, "u16").encode("utf-16"))),
    Kind("utf16_no_bom", "encoding", 1, _bytes("utf16le.jsonl", good_lines(2, "u16le").encode("utf-16-le"))),
    Kind("utf32", "encoding", 1, _bytes("utf32.jsonl", good_lines(2, "u32").encode("utf-32"))),
    Kind("binary", "binary", 1, _bytes("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2048))),
    Kind("empty", "empty_file", None, _bytes("empty.jsonl", b"")),
    Kind("whitespace_only", "no_examples", None, _text("blank.jsonl", "\n  \n\t\n\n")),
    Kind("invalid_utf8", "utf8", 2, _bytes("latin1.jsonl", good_lines(1, "l1").encode()
                                          + '{"messages":[{"role":"user","content":"caf\xe9"}]}\n'.encode("latin-1"))),
    Kind("wrong_role", "schema", 1, _text("wrong_role.jsonl", line({"messages": [{"role": "bot", "content": "hi"}, ASSISTANT]}))),
    Kind("assistant_first", "role_order", 2, _text("assistant_first.jsonl", line(GOOD_ROW) + line({"messages": [ASSISTANT, USER, ASSISTANT]}))),
    Kind("ends_with_user", "role_order", 1, _text("ends_user.jsonl", line({"messages": [USER, ASSISTANT, USER]}))),
    Kind("two_users", "role_order", 1, _text("two_users.jsonl", line({"messages": [USER, USER, ASSISTANT]}))),
    Kind("system_not_first", "role_order", 1, _text("late_system.jsonl", line({"messages": [USER, {"role": "system", "content": "s"}, ASSISTANT]}))),
    Kind("missing_content", "schema", 1, _text("missing_content.jsonl", line({"messages": [{"role": "user"}, ASSISTANT]}))),
    Kind("non_string_content", "schema", 2, _text("int_content.jsonl", line(GOOD_ROW) + line({"messages": [USER, {"role": "assistant", "content": 4}]}))),
    Kind("content_parts_list", "schema", 1, _text("parts.jsonl", line({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, ASSISTANT]}))),
    Kind("empty_content", "empty_content", 1, _text("empty_content.jsonl", line({"messages": [USER, {"role": "assistant", "content": "   "}]}))),
    Kind("empty_messages", "schema", 1, _text("no_messages.jsonl", line({"messages": []}))),
    Kind("not_object", "not_object", 2, _text("array_row.jsonl", line(GOOD_ROW) + line([USER, ASSISTANT]))),
    Kind("string_row", "not_object", 1, _text("string_row.jsonl", line("just a string"))),
    Kind("unknown_row_key", "schema", 1, _text("extra_key.jsonl", line({**GOOD_ROW, "labels": [1, 2]}))),
    Kind("nan_value", "invalid_json", 1, _text("nan.jsonl", '{"messages": [], "difficulty": NaN}\n')),
    Kind("control_chars", "control_chars", 1, _text("bell.jsonl", line({"messages": [USER, {"role": "assistant", "content": "ding\u0007"}]}))),
    Kind("lone_surrogate", "lone_surrogate", 1, _text("surrogate.jsonl", '{"messages": [{"role": "user", "content": "x\\ud800y"}, {"role": "assistant", "content": "ok then"}]}\n')),
    Kind("huge_30mb_line", "line_too_long", 2, _huge_line),
    Kind("recursion_bomb", "json_too_deep", 1, _text("bomb.jsonl", "[" * 200_000 + "]" * 200_000 + "\n")),
    Kind("deep_metadata", "json_too_deep", 1, _text("deep_meta.jsonl", line({**GOOD_ROW, "metadata": _deep(40)}))),
    Kind("unknown_schema", "unknown_schema", None, _text("unknown_schema.jsonl", good_lines(2, "us"), job={"schema_id": "alpaca_v9"})),
    Kind("sidecar_unknown_key", "job_sidecar", None, _text("sidecar_key.jsonl", good_lines(2, "sk"), job={"priority": "high", "learning_rate": 1})),
    Kind("sidecar_bad_json", "job_sidecar", 2, _text("sidecar_json.jsonl", good_lines(2, "sj"), job='{"priority":\n "high",,}')),
    Kind("sidecar_bad_priority", "job_sidecar", None, _text("sidecar_prio.jsonl", good_lines(2, "sp"), job={"priority": "urgent"})),
    Kind("syllo_missing_level", "schema", 1, _text("syllo_bad.jsonl", line({**GOOD_ROW, "metadata": {"skill": "syllo"}}), job={"schema_id": "syllo_v1"})),
    Kind("completion_both_forms", "schema", 1, _text("completion_bad.jsonl", line({"text": "a", "prompt": "b", "completion": "c"}), job={"schema_id": "completion_v1"})),
    Kind("shell_metachar_name", "unsafe_name", None, _text("x; rm -rf ~ $(reboot).jsonl", good_lines(2, "shell"))),
    Kind("backtick_name", "unsafe_name", None, _text("`id`.jsonl", good_lines(2, "tick"))),
    Kind("dotdot_name", "unsafe_name", None, _text("a..b.jsonl", good_lines(2, "dots"))),
    Kind("newline_name", "unsafe_name", None, _text("line\nbreak.jsonl", good_lines(2, "nl"))),
    Kind("symlink_to_file", "not_regular_file", None, _symlink_file),
    Kind("symlink_to_dir", "not_regular_file", None, _symlink_dir),
    Kind("dir_named_jsonl", "not_regular_file", None, _dir_named_jsonl),
    Kind("fifo", "not_regular_file", None, _fifo),
    Kind("wrong_extension", "unsupported_extension", None, _text("data.csv", "a,b\n1,2\n")),
    Kind("orphan_sidecar", "orphan_sidecar", None, _orphan_sidecar),
    Kind("duplicate_content", "duplicate", None, _text("dup_of_good.jsonl", good_lines(3, "good"))),
    Kind("zero_supervised_after_truncation", "zero_supervised", 2,
         _text("zero_sup.jsonl", good_lines(1, "z") + line({"messages": [{"role": "user", "content": LONG_PROMPT}, ASSISTANT]})
               + good_lines(40, "z2"))),
    Kind("reply_longer_than_max_length", "reply_too_long", 1,
         _text("long_reply.jsonl", line({"messages": [USER, {"role": "assistant", "content": LONG_PROMPT}]}) + good_lines(40, "lr"))),
    Kind("p95_over_max_length", "too_long_p95", None,
         _text("all_long.jsonl", "".join(line({"messages": [USER, {"role": "assistant", "content": f"{i} " + LONG_PROMPT}]}) for i in range(5)))),
]

# the original of duplicate_content: must be queued before the duplicate arrives
ORIGINAL = ("good_original.jsonl", good_lines(3, "good"))

GOOD: list[tuple[str, Callable[[Path], str], str]] = [
    # (name, make, expected priority)
    ("crlf", _text("crlf.jsonl", good_lines(3, "crlf").replace("\n", "\r\n")), "normal"),
    ("no_final_newline", _text("no_newline.jsonl", good_lines(3, "nn").rstrip("\n")), "normal"),
    ("unicode", _text("unicode.jsonl", line({"messages": [{"role": "user", "content": "日本語で? 🤔"},
                                                          {"role": "assistant", "content": "はい ✨ café"}]})), "normal"),
    ("system_first", _text("system.jsonl", line({"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT,
                                                              USER, ASSISTANT]})), "normal"),
    ("completion", _text("completion.jsonl", line({"prompt": "2+2=", "completion": "4"}) + line({"text": "plain text"}),
                         job={"schema_id": "completion_v1", "priority": "low"}), "low"),
    ("syllo", _text("syllo.jsonl", line({**GOOD_ROW, "metadata": {"skill": "syllo", "level": 3}}),
                    job={"schema_id": "syllo_v1", "priority": "high", "epochs": 2, "tags": ["t"], "notes": "n"}), "high"),
    ("spaces_and_parens", _text("my data (1).jsonl", good_lines(2, "spaces")), "normal"),
]


def make_subfolder_good(inbox: Path) -> str:
    (inbox / "team" / "batch 7").mkdir(parents=True)
    (inbox / "team" / "batch 7" / "part.jsonl").write_text(good_lines(2, "sub"))
    (inbox / "team" / "batch 7" / "part.job.json").write_text(json.dumps({"priority": "high"}))
    return "team/batch 7/part.jsonl"

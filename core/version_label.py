"""Version labels of served models: one format, checked wherever a label enters Cadence.

A label names a model version in HTTP headers (`X-Model-Version`), in the
served model id (`<model_name>@<label>`), in folder names of deploy targets
(`<dest>/<label>/`, `.staging-<label>/`) and in JSON records. So it is a
short ASCII word: letters, digits and `. _ + -`, starting with a letter or
digit, at most MAX_LENGTH characters. Anything else (non-latin-1 text that
cannot be a header, CR/LF that would split one, `/` or `..` that would walk
out of a folder, `@` that would confuse the served id) is refused before any
state changes: by the admin API (POST /admin/models/load `version`), the
loader (a manifest's `version`, a folder name used as the default label), the
registry before a flip, and the versioner when it names a version.

Library only.
"""
from __future__ import annotations

import re

MAX_LENGTH = 128
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
RULE = f"letters, digits and . _ + - only, starting with a letter or digit, at most {MAX_LENGTH} characters"


class InvalidLabel(ValueError):
    """A version label outside the safe format; the message names where it came from and why."""


def check_label(label: object, source: str = "version") -> str:
    """`label` if it is a valid version label, else InvalidLabel naming `source` (e.g. "manifest.json `version`")."""
    if not isinstance(label, str):
        raise InvalidLabel(f"{source}: a version label must be a string, not {type(label).__name__}")
    if not label:
        raise InvalidLabel(f"{source}: the version label is empty ({RULE})")
    if len(label) > MAX_LENGTH:
        raise InvalidLabel(f"{source}: the version label is {len(label)} characters long ({RULE})")
    if not LABEL_RE.fullmatch(label):
        if not re.fullmatch(r"[A-Za-z0-9]", label[0]):
            raise InvalidLabel(f"{source}: version label {label[:40]!r} starts with {label[0]!r} ({RULE})")
        bad = next(c for c in label if not re.fullmatch(r"[A-Za-z0-9._+-]", c))
        raise InvalidLabel(f"{source}: version label {label[:40]!r} has the character {bad!r} ({RULE})")
    return label


def is_label(label: object) -> bool:
    try:
        check_label(label)
    except InvalidLabel:
        return False
    return True

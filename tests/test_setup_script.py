"""scripts/setup.sh's llama-cpp-python build: the pin matches pyproject's test extra, and the installed library is
the portable build (no AVX-512/AMX kernels: those crashed in q8_0 on a Sapphire Rapids VM, and a native build
cached on one host would not run on another)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_llama_cpp_pin_is_one_version():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    pinned = re.search(r"^LLAMA_CPP_VERSION=(\S+)", setup, re.M).group(1)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert f"llama-cpp-python=={pinned}" in extras


def test_installed_llama_cpp_is_the_portable_build():
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    flags = dict(re.findall(r"(\w+) = (\d)", info))
    assert flags.get("AVX2") == "1", info
    assert flags.get("AVX512", "0") == "0" and flags.get("AMX_INT8", "0") == "0", info

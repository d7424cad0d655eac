"""Provenance recorded with every run: code version, dirty flag, package versions."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
PACKAGES = (
    "petridish",
    "torch",
    "numpy",
    "scipy",
    "safetensors",
    "scikit-learn",
    "transformers",
    "peft",
    "ray",
    "devinterp",
)


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    commit, dirty = _git_state(Path(__file__).resolve().parent)
    return {
        "schema_version": SCHEMA_VERSION,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name)},
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_state(where: Path) -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None

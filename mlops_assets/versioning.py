"""Code versions and content hashes: what makes Dagster's staleness follow real changes."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any


def code_version_of(*parts: ModuleType | Path | str) -> str:
    """A short hash of the source of the given modules, files or folders (in order)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, ModuleType):
            digest.update(inspect.getsource(part).encode())
            continue
        path = Path(part)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def stable_hash(value: Any) -> str:
    """Hash of a JSON-able value, independent of dict ordering."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

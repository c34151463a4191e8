"""Values derived from source files, kept beside the bytecode (``__pycache__``) so that a fresh
process (each run the daemon launches) does not derive them again: a JSON file holding the key
of what they were derived from (a digest of the sources) and the value. A file of another key,
an unreadable or corrupt one, counts as absent; a tree that cannot be written (a read-only
image) only loses the saving."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path


def source_key(parts: Iterable[str | bytes]) -> str:
    """A digest of ``parts`` in order (each length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def load_derived(path: Path, key: str) -> object | None:
    """The value stored at ``path`` for ``key``, or None."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored.get("value")


def save_json(path: Path, content: object) -> None:
    """Write ``content`` as JSON atomically (a concurrent reader sees the old file or the new
    one)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        temporary.write_text(json.dumps(content, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


def save_derived(path: Path, key: str, value: object) -> None:
    save_json(path, {"key": key, "value": value})

"""Images as files in the data directory, named by the SHA-256 of their bytes (``images/ab/abcdef....png``).

Names come only from hashes we computed or from ids we checked to be 64 hex digits, never from request text.
Writes are atomic (a temporary file, then a rename), so a file is complete or absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".webp", ".bmp", ".tif", ".gif")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, suffix: str) -> str:
        """Store ``data`` (if not already there) and return its name, ``<sha256><suffix>``."""
        if suffix not in SUFFIXES:
            raise ValueError(f"unsupported suffix {suffix!r}")
        name = hashlib.sha256(data).hexdigest() + suffix
        target = self.path(name)
        if target.exists():
            return name
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(temporary).replace(target)
        finally:
            Path(temporary).unlink(missing_ok=True)
        return name

    def path(self, name: str) -> Path:
        """The file of a blob name; ``ValueError`` for anything that is not a hash and a known suffix."""
        stem, dot, suffix = name.partition(".")
        if not _HEX64.fullmatch(stem) or f"{dot}{suffix}" not in SUFFIXES:
            raise ValueError(f"not a blob name: {name!r}")
        return self.root / stem[:2] / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

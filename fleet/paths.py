"""Paths under the storage root. Jobs carry stored names and relative paths; every path is
resolved here and must stay inside the root, whatever the payload says."""

from __future__ import annotations

import re
from pathlib import Path

_EXT = re.compile(r"^[A-Za-z0-9]{1,10}$")


class UnsafePathError(ValueError):
    """A stored name or relative path that would lead outside the storage root."""


def check_name(filename: str, ext: str) -> None:
    """Refuse names that could address anything but one file in one folder."""
    if not filename or "\x00" in filename or "/" in filename or "\\" in filename:
        raise UnsafePathError(f"unsafe stored name {filename!r}")
    if filename.startswith("."):
        raise UnsafePathError(f"unsafe stored name {filename!r}")
    if not _EXT.match(ext):
        raise UnsafePathError(f"unsafe extension {ext!r}")


def inside(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, if it is still under ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UnsafePathError(f"{path} resolves outside the storage root")
    return resolved


def stored_key(relative: str) -> str:
    """``relative`` (``folder/name.ext``, e.g. ``iqdb/2025-12-01-1.jpg``) if it names one file in
    one folder: the key of that file in a bucket."""
    folder, _, name = relative.partition("/")
    filename, _, ext = name.rpartition(".")
    if not folder or folder.startswith(".") or "/" in name or "\x00" in folder:
        raise UnsafePathError(f"unsafe relative path {relative!r}")
    check_name(filename, ext)
    return relative


def stored_file(root: Path, relative: str) -> Path:
    """``root/folder/name.ext`` from a relative path such as ``iqdb/2025-12-01-1.jpg``."""
    return inside(root, root / stored_key(relative))

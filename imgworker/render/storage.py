"""Where originals and outputs live: paths under a storage root (atomic writes), or a bucket.

Every path is built from the stored name alone (``{filename}.{ext}``), never from a date,
and must resolve inside the root: a job payload cannot make us read or write elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet.board import Folder
from fleet.objects import NO_BUCKET, BucketConfig, BucketPair, first_line, open_bucket, refusal
from fleet.paths import UnsafePathError, check_name, inside
from imgworker.render.errors import BucketRefusedError, MissingOriginalError, RenderError, StorageError


def original_path(root: Path, filename: str, ext: str) -> Path:
    check_name(filename, ext)
    path = inside(root, root / Folder.ORIGINALS / f"{filename}.{ext}")
    if not path.is_file():
        raise MissingOriginalError(f"original {Folder.ORIGINALS}/{filename}.{ext} does not exist")
    return path


def output_path(root: Path, folder: str, filename: str, ext: str, *, create: bool = True) -> Path:
    """Where an output goes; its folder is made unless ``create`` is False (only to remove one).

    The folder must resolve inside the root and the file must not be a symlink: a planted link
    is refused before anything is written or touched, wherever it leads."""
    check_name(filename, ext)
    directory = root / folder
    if create:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {directory}: {exc}") from exc
    return not_a_symlink(inside(root, directory) / f"{filename}.{ext}")


def not_a_symlink(path: Path) -> Path:
    """``path``, unless it is a symlink (we never write through one)."""
    if path.is_symlink():
        raise UnsafePathError(f"{path} is a symlink; refusing to write through it")
    return path


def atomic_write(path: Path, data: bytes) -> bool:
    """Write via a temp file in the same folder and rename: a killed writer never leaves a
    partial file at ``path``. Temp names start with '.' and end in '.tmp'.

    Returns False, writing nothing, when ``path`` already holds exactly ``data`` (its mtime
    is refreshed: the file is current for the settings that just produced it)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            os.utime(path)
            return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc}") from exc
    return True


def remove_stale_temps(root: Path, folders: list[str], older_than_s: float = 600.0) -> int:
    """Delete temp files left by killed writers; returns how many were removed.

    Only old ones: a fresh temp file may belong to a replica writing right now."""
    removed = 0
    cutoff = time.time() - older_than_s
    for folder in folders:
        for tmp in (root / folder).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
    return removed


# --- where originals and outputs live: a folder or a bucket --------------------------------------


@dataclass(frozen=True, slots=True)
class Original:
    """An original as read for one render: a file (decoded from disk) or the bytes of one GET."""

    source: Path | bytes
    modified: float
    """Seconds since the epoch: outputs older than this are stale."""
    size: int


@dataclass(frozen=True, slots=True)
class Listed:
    """A file's or object's size and time, as a directory read or a bucket listing gives them:
    enough to tell whether an output is current without reading it (or its original)."""

    size: int
    modified: float
    """Seconds since the epoch (a bucket's own clock, to the second on S3 and R2)."""


Name = tuple[str, str]
"""A stored name: (filename, ext)."""


class Store(Protocol):
    """Where a render reads its original and writes its outputs. Keys are ``{folder}/{name}``,
    the board's layout on disk and in R2 alike."""

    def original(self, filename: str, ext: str) -> Original: ...

    def listed(self, folder: str, names: Sequence[Name]) -> dict[Name, Listed]:
        """Those of ``folder/{filename}.{ext}`` that exist, with size and time; a name that is
        not a safe stored name counts as absent (rendering it reports why)."""
        ...

    def put(self, folder: str, filename: str, ext: str, data: bytes, *, compare: bool = False) -> bool:
        """Store an output whole (never visible half-written); False when it held ``data``
        already. A bucket finds that out only when asked to ``compare`` (it costs a request)."""
        ...

    def remove(self, filename: str, outputs: Sequence[tuple[str, str]]) -> None:
        """Remove ``filename``'s ``outputs`` (folder, ext), those there are: a bucket in one request."""
        ...


class LocalStore:
    """A folder (``STORAGE_PATH``): shared by every replica, so they must share a disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def original(self, filename: str, ext: str) -> Original:
        path = original_path(self.root, filename, ext)
        stat = path.stat()
        return Original(path, stat.st_mtime, stat.st_size)

    def listed(self, folder: str, names: Sequence[Name]) -> dict[Name, Listed]:
        """One stat per name."""
        found: dict[Name, Listed] = {}
        for filename, ext in names:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, UnsafePathError):
                stat = output_path(self.root, folder, filename, ext, create=False).stat()
                found[(filename, ext)] = Listed(stat.st_size, stat.st_mtime)
        return found

    def put(self, folder: str, filename: str, ext: str, data: bytes, *, compare: bool = False) -> bool:
        """Always compared: reading a local file back costs no request."""
        return atomic_write(output_path(self.root, folder, filename, ext), data)

    def remove(self, filename: str, outputs: Sequence[tuple[str, str]]) -> None:
        for folder, ext in outputs:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                output_path(self.root, folder, filename, ext, create=False).unlink()


def as_store(where: Path | Store) -> Store:
    """A storage root given as a folder is a :class:`LocalStore`."""
    return LocalStore(where) if isinstance(where, Path) else where


def store_for(where: Where, public: bool) -> Store:
    """Where one image's original and outputs live: with the board's two buckets, the one its
    status chooses; otherwise the one folder or bucket."""
    if isinstance(where, StatusBuckets):
        return where.public if public else where.private
    return as_store(where)


class ObjectStore:
    """Originals and outputs in a bucket, through obstore (signed requests, retries).

    Each output is one PUT, never a multipart upload: an object appears whole or not at all,
    and a render killed mid-way leaves nothing behind (not even an unfinished upload)."""

    def __init__(self, config: BucketConfig) -> None:
        self.config = config
        self._client: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectStore, (self.config,))

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = open_bucket(self.config)
        return self._client

    def key(self, folder: str, filename: str, ext: str) -> str:
        check_name(filename, ext)
        return f"{folder}/{filename}.{ext}"

    def original(self, filename: str, ext: str) -> Original:
        import obstore

        key = self.key(Folder.ORIGINALS, filename, ext)
        try:
            result = obstore.get(self.client, key)
            data = bytes(result.bytes())
        except FileNotFoundError as exc:  # obstore's NotFoundError is one
            if NO_BUCKET in str(exc):
                raise self._error("read", key, exc) from exc
            raise MissingOriginalError(f"original {key} is not in bucket {self.config.bucket}") from exc
        except Exception as exc:
            raise self._error("read", key, exc) from exc
        return Original(data, result.meta["last_modified"].timestamp(), len(data))

    def listed(self, folder: str, names: Sequence[Name]) -> dict[Name, Listed]:
        """One listing of the key range the names span (a request per 1,000 keys in it), not a
        HEAD per object. Names of one bulk batch are near each other in key order: a folder
        listing's are consecutive, the board's ``{date}-{id}`` names of nearby ids share a date."""
        import obstore

        wanted: dict[str, Name] = {}
        for filename, ext in names:
            with contextlib.suppress(UnsafePathError):
                wanted[self.key(folder, filename, ext)] = (filename, ext)
        found: dict[Name, Listed] = {}
        if not wanted:
            return found
        first, last = min(wanted), max(wanted)
        try:  # listed after ``offset``: a key one character shorter comes just before the first
            for page in obstore.list(self.client, folder, offset=first[:-1], chunk_size=1000):
                for meta in page:
                    if meta["path"] > last:
                        return found
                    if (name := wanted.get(meta["path"])) is not None:
                        found[name] = Listed(int(meta["size"]), meta["last_modified"].timestamp())
        except Exception as exc:
            raise self._error("list", f"{folder}/", exc) from exc
        return found

    def put(self, folder: str, filename: str, ext: str, data: bytes, *, compare: bool = False) -> bool:
        """One PUT (and, to ``compare``, a HEAD before it). An object already holding ``data``
        (its ETag is the MD5 of a single PUT's body) is still written, so its time says it is
        current, but reported unchanged. Without ``compare`` it is reported changed."""
        import obstore

        key = self.key(folder, filename, ext)
        try:
            etag = self._etag(key) if compare else ""
            obstore.put(self.client, key, data, use_multipart=False)
        except Exception as exc:
            raise self._error("write", key, exc) from exc
        return etag.strip('"') != hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _etag(self, key: str) -> str:
        """The object's ETag; "" when there is none."""
        import obstore

        try:
            return str(obstore.head(self.client, key).get("e_tag") or "")
        except FileNotFoundError as exc:
            if NO_BUCKET in str(exc):
                raise
            return ""

    def remove(self, filename: str, outputs: Sequence[tuple[str, str]]) -> None:
        """One DeleteObjects request for them all (a key that is not there is no error)."""
        import obstore

        paths = [self.key(folder, filename, ext) for folder, ext in outputs]
        if not paths:
            return
        try:
            obstore.delete(self.client, paths)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._error("remove", ", ".join(paths), exc) from exc

    def _error(self, doing: str, key: str, exc: Exception) -> RenderError:
        """Refused credentials or access, or a bucket that does not exist, fail for good with one
        clear message; anything else (the server down, a timeout) may pass and is retried."""
        refused = refusal(self.config, doing, key, exc)
        if refused is not None:
            return BucketRefusedError(refused)
        where = f"bucket {self.config.bucket} at {self.config.endpoint or 'AWS S3'}"
        return StorageError(f"cannot {doing} {key} in {where}: {first_line(exc)}")


class StatusBuckets:
    """The board's two buckets (STORAGE_URL=r2://): public statuses in one, the rest in the other."""

    def __init__(self, pair: BucketPair) -> None:
        self.public = ObjectStore(pair.public)
        self.private = ObjectStore(pair.private)

    def __reduce__(self) -> tuple[Any, ...]:
        return (StatusBuckets, (BucketPair(self.public.config, self.private.config),))


Where = Path | Store | StatusBuckets
"""Where renders read originals and write outputs: a folder, a store, or the board's two buckets."""

"""Atomic file and folder writes: every artefact appears whole or not at all.

Each writer puts its bytes in a temporary sibling and renames it into place, so an
interrupted run, a full disk or a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp alone gives 0600
DIR_MODE = 0o777 & ~_UMASK  # what mkdir() would give; mkdtemp alone gives 0700


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib Figure laid out and written as a PNG at `path` (atomic: a report never shows half a plot)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def parse_json(text: str, file: str, line: int | None = None) -> object:
    """json.loads with a DataError for bad JSON, and for nesting too deep for the parser (RecursionError)."""
    where = f"line {line}: " if line is not None else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"(column {err.colno})" if line is not None else f"at line {err.lineno}, column {err.colno}"
        raise DataError(file, None, None, f"{where}not valid JSON: {err.msg} {at}") from None
    except RecursionError:
        raise DataError(file, None, None, f"{where}not valid JSON: nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; a file that is not JSON is a DataError naming it (a run folder's record edited or cut short)."""
    return parse_json(Path(path).read_text(encoding="utf-8"), str(path))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """A JSON Lines file's records; a line that is not JSON is a DataError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        return [parse_json(line, str(path), number) for number, line in enumerate(f, 1) if line.strip()]


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (used for logs such as metrics.jsonl that grow during a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def append_jsonl_durably(path: str | os.PathLike, row: dict) -> None:
    """Append one whole line and fsync it before returning, for a log that must never lose an
    acknowledged record (human votes). Writers hold an exclusive lock, so lines never interleave;
    a torn tail left by a writer killed mid-write (never acknowledged) is cut off first, so the
    new line starts on a line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    if created:  # make the new file's directory entry durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_jsonl_log(path: str | os.PathLike) -> tuple[list[tuple[int, dict]], bool]:
    """(line number, record) pairs of an append-only JSONL log, and whether a torn last line (a
    writer killed mid-write: text after the last newline, which the next append cuts off) was
    skipped. Any other line that is not JSON raises ValueError."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    torn = bool(lines[-1].strip())  # text after the last newline: a write that never finished
    rows = []
    for number, raw in enumerate(lines[:-1], start=1):
        if raw.strip():
            try:
                rows.append((number, json.loads(raw)))
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number} is not valid JSON: {err.msg}") from None
    return rows, torn


@contextlib.contextmanager
def cache_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock named for `path` (`.NAME.lock` beside it) while one process makes `path` in
    tunelab's shared cache: two processes (two users' commands, or pytest's workers) that need the same
    conversion at once then make it once, the second finding it made, instead of swapping folders
    under each other."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the lock


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path`.

    On any error the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def files_stamp(paths: Iterable[Path]) -> str:
    """What changes when any of these files is written again: their names, sizes and modification times, hashed.
    Reading stat is instant where hashing a model's gigabytes is not; a file copied elsewhere is another path anyway."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]

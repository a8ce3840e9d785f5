"""An append-only file of checksummed JSON records, each made durable before it counts.

One record per line: ``<crc32 of the JSON, 8 hex digits> <JSON object>\\n``, written
and fsync'd before the write it records is acknowledged. Records are appended one at a
time, so a crash can tear only the last one, which was never acknowledged: opening the
file cuts it back to the end of its last whole record before anything is appended, so a
new record never lands glued to torn bytes. A record that fails its checksum anywhere
before the last one is corruption, not a crash: opening refuses it in one line rather
than replay it. The first GFL journals had no checksums (plain JSON lines); such a file
is rewritten in this format, atomically, when it is opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any

from gfl.chain.errors import ChainError

log = logging.getLogger(__name__)

_LINE = re.compile(rb"([0-9a-f]{8}) (\{.*\})")


class JournalError(ChainError):
    """The journal is corrupt, is not a journal, or cannot be written."""


def encode_record(record: dict[str, Any]) -> bytes:
    """One record as its journal line (checksum, space, JSON, newline)."""
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode_line(line: bytes) -> dict[str, Any] | None:
    """The record on one line (without its newline), or None when the line is not one."""
    m = _LINE.fullmatch(line)
    if m is None or int(m[1], 16) != zlib.crc32(m[2]):
        return None
    try:
        record = json.loads(m[2])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(data: bytes, name: str = "the journal") -> tuple[list[dict[str, Any]], int]:
    """(records, end of the last whole one) of a journal's bytes; a torn last record is
    left out (and logged), a bad record before it raises `JournalError`."""
    *lines, tail = data.split(b"\n")  # tail: bytes after the last newline, cut short
    records: list[dict[str, Any]] = []
    end = 0
    for n, line in enumerate(lines):
        record = _decode_line(line)
        if record is None:
            # a whole last line that fails its checksum was being written too: on power
            # loss a write's pages reach the disk in any order
            if n == len(lines) - 1 and not tail:
                tail = line
                break
            raise JournalError(
                f"{name} is corrupt at line {n + 1} (a record fails its checksum); "
                "it is not replayed: restore the file or move it away to start anew"
            )
        records.append(record)
        end += len(line) + 1
    if tail:
        log.warning(
            "%s: dropped a torn last record (%d bytes): the node stopped while writing it",
            name,
            len(tail),
        )
    return records, end


def _read_legacy(data: bytes, name: str) -> list[dict[str, Any]]:
    """Records of a journal from before checksums (JSON lines; a torn last line dropped)."""
    lines = data.decode("utf-8", "replace").splitlines()
    records = []
    for n, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if n == len(lines) - 1:
                log.warning("%s: dropping a torn last line", name)
                break
            raise JournalError(f"{name} is corrupt at line {n + 1}")
        records.append(record)
    return records


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less (a nearly full disk)
        view = view[os.write(fd, view) :]


class Journal:
    """An open journal: `records` as read at open; `append` adds one, durably.

    Not thread-safe: the caller serializes appends (the embedded chain holds its lock).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._fd: int | None = None
        self.failed: str | None = None  # why an append failed; the journal then refuses more
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        try:
            data = self.path.read_bytes() if existed else b""
            if data.startswith(b"{"):
                self.records = _read_legacy(data, str(self.path))
                self._rewrite(self.records)
                data = self.path.read_bytes()
            self.records, end = read_records(data, str(self.path))
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            if end < len(data):
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
            if not existed:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            self.close()
            raise JournalError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        self._size = end

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"".join(encode_record(r) for r in records))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        log.info("%s: rewritten with a checksum per record", self.path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it; raises `JournalError` (and refuses every later
        append) when the disk refuses it, after cutting off what got written of it."""
        if self.failed is not None:
            raise JournalError(self.failed)
        if self._fd is None:
            raise JournalError(f"{self.path} is closed")
        line = encode_record(record)
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            self.failed = f"cannot write {self.path}: {exc.strerror or exc}"
            # leave no torn record behind (if this fails too, the next open cuts it)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise JournalError(self.failed) from None
        self._size += len(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

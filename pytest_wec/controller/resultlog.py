"""The results log: every ChainResult of a run, one per line or msgpack object (controller).

Two formats, told apart by their first byte:

    jsonl     one JSON object per line (orjson), ``{`` first
    msgpack   one msgpack map per ChainResult, back to back

The writer appends and hands its buffer to the OS at least every ``flush_interval`` seconds,
so a run that is killed leaves a readable log; the reader tolerates a torn last record.

    wec convert SRC DST [--format jsonl|msgpack]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, cast

import msgpack
import orjson

from pytest_wec.wire.results import ChainResult

__all__ = ["FORMATS", "ResultLogError", "ResultLogWriter", "convert", "convert_main",
           "detect_format", "read_results"]

log = logging.getLogger(__name__)

Format = Literal["jsonl", "msgpack"]
FORMATS: tuple[Format, ...] = ("jsonl", "msgpack")
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                                ".msgpack": "msgpack", ".mpk": "msgpack", ".msgp": "msgpack"}
_BUFFER_BYTES = 256 * 1024


class ResultLogError(ValueError):
    """A results log that cannot be read: unknown format or a damaged record."""


def _check_format(fmt: str) -> Format:
    for known in FORMATS:
        if fmt == known:
            return known
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


class ResultLogWriter:
    """Appends ChainResults to ``path``; a context manager."""

    def __init__(self, path: str | os.PathLike[str], fmt: str = "jsonl",
                 flush_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.fmt = _check_format(fmt)
        self.flush_interval = flush_interval
        self.count = 0
        self._fh: IO[bytes] | None = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._buf: list[bytes] = []
        self._size = 0
        self._flushed = time.monotonic()
        self._packer = msgpack.Packer()

    def write(self, chain_result: ChainResult) -> None:
        if self.fmt == "jsonl":
            data = orjson.dumps(chain_result, option=orjson.OPT_APPEND_NEWLINE)
        else:
            data = self._packer.pack(chain_result)
        self._buf.append(data)
        self._size += len(data)
        self.count += 1
        if self._size >= _BUFFER_BYTES or time.monotonic() - self._flushed >= self.flush_interval:
            self.flush()

    def write_many(self, chain_results: Iterable[ChainResult]) -> None:
        buf = self._buf
        n = len(buf)
        if self.fmt == "jsonl":
            dumps, opt = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            buf.extend(dumps(c, option=opt) for c in chain_results)
        else:
            buf.extend(map(self._packer.pack, chain_results))
        self.count += len(buf) - n
        self._size += sum(len(b) for b in buf[n:])
        if self._size >= _BUFFER_BYTES or time.monotonic() - self._flushed >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Hands the buffer to the OS (what a killed process leaves behind)."""
        if self._fh is None:
            return
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            self._size = 0
            view = memoryview(data)
            while view:
                view = view[self._fh.write(view) or 0:]
        self._flushed = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ResultLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_format(path: str | os.PathLike[str]) -> Format:
    """``jsonl`` or ``msgpack`` from the first byte; an empty file counts as jsonl."""
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip(b" \t\r\n")
    if not head or head[:1] == b"{":
        return "jsonl"
    first = head[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return "msgpack"
    raise ResultLogError(f"{path}: not a results log (neither JSON lines nor msgpack maps)")


def read_results(path: str | os.PathLike[str]) -> Iterator[ChainResult]:
    """Yields the ChainResults of a log in either format; a torn last record is skipped."""
    fmt = detect_format(path)
    with open(path, "rb") as fh:
        if fmt == "jsonl":
            yield from _read_jsonl(fh, str(path))
        else:
            yield from _read_msgpack(fh, str(path))


def _read_jsonl(fh: IO[bytes], name: str) -> Iterator[ChainResult]:
    prev: bytes | None = None
    lineno = 0
    for line in fh:
        if prev is not None:
            yield _parse_line(prev, name, lineno)
        lineno += 1
        prev = line
    if prev is None:
        return
    if prev.endswith(b"\n"):
        yield _parse_line(prev, name, lineno)
        return
    try:  # last line without newline: complete, or torn by a killed writer
        yield _parse_line(prev, name, lineno)
    except ResultLogError:
        log.warning("%s: ignoring a torn last line (%d bytes)", name, len(prev))


def _parse_line(line: bytes, name: str, lineno: int) -> ChainResult:
    if not line.strip():
        raise ResultLogError(f"{name}:{lineno}: empty line")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ResultLogError(f"{name}:{lineno}: not JSON: {exc}") from None
    return _check(obj, f"{name}:{lineno}")


def _read_msgpack(fh: IO[bytes], name: str) -> Iterator[ChainResult]:
    unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False)
    end, n = 0, 0
    try:
        for obj in unpacker:
            n += 1
            yield _check(obj, f"{name}: record {n}")
            end = unpacker.tell()
    except (msgpack.UnpackException, ValueError) as exc:
        if isinstance(exc, ResultLogError):
            raise
        raise ResultLogError(f"{name}: damaged msgpack after record {n}: {exc}") from None
    size = os.fstat(fh.fileno()).st_size
    if size > end:
        log.warning("%s: ignoring a torn last record (%d bytes)", name, size - end)


def _check(obj: Any, where: str) -> ChainResult:
    if not isinstance(obj, dict) or not isinstance(obj.get("requests"), list) \
            or "chain" not in obj:
        raise ResultLogError(f"{where}: not a ChainResult")
    return cast(ChainResult, obj)


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], fmt: str) -> int:
    """Writes ``src`` (either format) to ``dst`` in ``fmt``, atomically; returns the count."""
    fmt = _check_format(fmt)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        with ResultLogWriter(tmp, fmt) as writer:
            writer.write_many(read_results(src))
            count = writer.count
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _default_format(src: str, dst: str) -> Format:
    by_suffix = _SUFFIXES.get(Path(dst).suffix.lower())
    if by_suffix is not None:
        return by_suffix
    return "jsonl" if detect_format(src) == "msgpack" else "msgpack"


def convert_main(argv: list[str] | None = None) -> int:
    """``wec convert SRC DST [--format jsonl|msgpack]``; 0 on success, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="wec convert",
        description="Convert a results log between JSON lines and msgpack. Without --format "
                    "the format follows DST's suffix (.jsonl, .msgpack), else the other one.")
    parser.add_argument("src", metavar="SRC", help="results log to read (either format)")
    parser.add_argument("dst", metavar="DST", help="file to write")
    parser.add_argument("--format", choices=FORMATS, default=None, help="format of DST")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        fmt = args.format or _default_format(args.src, args.dst)
        count = convert(args.src, args.dst, fmt)
    except (OSError, ResultLogError) as exc:
        text = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror \
            else str(exc)
        print(f"wec convert: error: {text}", file=sys.stderr)
        return 2
    print(f"wec convert: {count} chain results -> {args.dst} ({fmt})")
    return 0

"""Bounded decoding: walk peer bytes against the value we expect, never build what we do not.

`msgpack.unpackb` materialises whatever the bytes declare: 9.5 MiB of empty maps cost ~700 MiB
before any signature check. Here the caller walks its schema over a `msgpack.Unpacker`: a
container's declared length is checked against the schema's maximum before any item is read, a value
of an unexpected type is refused (or skipped in C, which builds nothing) from its type byte alone, a
str or bin is bounded by its declared length before it is read, and a bin comes back as a view of
the input, not a copy. Decoding therefore allocates about the input's length once (the unpacker's
buffer) plus the small values the schema asks for (docs/PROTOCOL.md §2, §9).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import msgpack

from .errors import Reason, RejectedMessage

T = TypeVar("T")

INT = frozenset(range(0x00, 0x80)) | frozenset(range(0xE0, 0x100)) | frozenset(range(0xCC, 0xD4))
FLOAT = frozenset((0xCA, 0xCB))
STR = frozenset(range(0xA0, 0xC0)) | frozenset((0xD9, 0xDA, 0xDB))
BIN = frozenset((0xC4, 0xC5, 0xC6))
ARRAY = frozenset(range(0x90, 0xA0)) | frozenset((0xDC, 0xDD))
MAP = frozenset(range(0x80, 0x90)) | frozenset((0xDE, 0xDF))
# Width of the length that follows a type byte, for the types whose length we read ahead.
_LENGTH_WIDTH = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4, 0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}
# Per type byte: the length a fix type carries in the byte itself (fixstr, fixarray, fixmap), else 0.
_FIX_LENGTH = tuple(b & 0x1F if b in STR else b & 0x0F if b in ARRAY or b in MAP else 0 for b in range(256))
# Everything msgpack raises for bytes that are not one msgpack value (UnicodeDecodeError is a ValueError).
_NOT_MSGPACK = (msgpack.UnpackException, ValueError)


def schema(where: str, want: str) -> RejectedMessage:
    return RejectedMessage(Reason.SCHEMA, f"{where}: expected {want}")


def malformed(detail: str) -> RejectedMessage:
    return RejectedMessage(Reason.MALFORMED, detail)


class Reader:
    """A cursor over one msgpack value. Every method reads one value of the type it names, or
    raises `schema` having read nothing of it."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        size = max(len(data), 1)  # one buffer of exactly the input's size: no regrowth, no slack
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=size, read_size=size)
        self._unpacker.feed(data)
        self._peeked_at, self._peeked = -1, (0, 0, 0)

    def _peek(self) -> tuple[int, int, int]:
        """(type byte, header length, declared length) of the next value; the length is 0 for
        types whose length is not read ahead. Kept until the cursor moves: a schema often peeks at
        a value twice (is it there, then read it)."""
        pos = self._unpacker.tell()
        if pos == self._peeked_at:
            return self._peeked
        if pos >= len(self._data):
            raise malformed("truncated")
        byte = self._data[pos]
        width = _LENGTH_WIDTH.get(byte)
        if width is None:
            head = byte, 1, _FIX_LENGTH[byte]
        elif pos + 1 + width > len(self._data):
            raise malformed("truncated")
        else:
            head = byte, 1 + width, int.from_bytes(self._data[pos + 1:pos + 1 + width], "big")
        self._peeked_at, self._peeked = pos, head
        return head

    def skip(self) -> None:
        self._unpacker.skip()

    def end(self) -> None:
        if self._unpacker.tell() != len(self._data):
            raise malformed("trailing bytes")

    def int(self, where: str, lo: int, hi: int) -> int:
        if self._peek()[0] not in INT:
            raise schema(where, "an integer")
        value = self._unpacker.unpack()
        if not lo <= value <= hi:
            raise schema(where, f"an integer in [{lo}, {hi}]")
        return value

    def number(self, where: str, lo: float, hi: float) -> float:
        byte = self._peek()[0]
        if byte not in INT and byte not in FLOAT:
            raise schema(where, "a number")
        value = self._unpacker.unpack()
        if not lo <= value <= hi:  # NaN compares false
            raise schema(where, f"a number in [{lo}, {hi}]")
        return float(value)

    def str(self, where: str, max_chars: int) -> str:
        """At most `max_chars` code points; a str of over 4 bytes a code point cannot hold them
        and is refused unread."""
        byte, _, size = self._peek()
        if byte not in STR or size > 4 * max_chars:
            raise schema(where, f"a str of at most {max_chars} characters")
        value = self._unpacker.unpack()  # invalid UTF-8: UnicodeDecodeError, i.e. malformed
        if len(value) > max_chars:
            raise schema(where, f"a str of at most {max_chars} characters")
        return value

    def bin(self, where: str, lo: int, hi: int) -> memoryview:
        """A bin of lo..hi bytes, as a view of the input (skipped, not copied)."""
        byte, head, size = self._peek()
        if byte not in BIN or not lo <= size <= hi:
            raise schema(where, f"a bin of {lo}..{hi} bytes")
        start = self._unpacker.tell() + head
        self._unpacker.skip()
        return self._data[start:start + size]

    def array(self, where: str, most: int) -> int:
        """Read an array's header; its `n` items follow."""
        byte, _, size = self._peek()
        if byte not in ARRAY or size > most:
            raise schema(where, f"an array of at most {most} items")
        return self._unpacker.read_array_header()

    def map_size(self) -> int | None:
        """The number of entries the next value declares if it is a map, else None; reads nothing."""
        byte, _, size = self._peek()
        return size if byte in MAP else None

    def fields(self, where: str, names: tuple[str, ...]) -> Iterator[str]:
        """Read a map of exactly `names` (str keys, any order), yielding each key before the caller
        reads its value. A repeated key is malformed: two decoders must not read the same bytes
        differently (one keeping the first value, one the last)."""
        byte, _, size = self._peek()
        if byte not in MAP or size != len(names):
            raise schema(where, f"a map of exactly {', '.join(names)}")
        self._unpacker.read_map_header()
        seen: set[str] = set()
        longest = max(map(len, names))
        for _ in names:
            key = self.str(where, longest) if self._peek()[0] in STR else None
            if key not in names:
                raise schema(where, f"a map of exactly {', '.join(names)}")
            if key in seen:
                raise malformed(f"{where}: key {key!r} repeated")
            seen.add(key)
            yield key

    def optional(self, types: frozenset[int], most: int, read: Callable[[], T]) -> T | None:
        """`read()` if the next value has one of `types` and declares at most `most` items or
        bytes, else skip it and return None: for checks that must wait for the whole map (§6)."""
        byte, _, size = self._peek()
        if byte in types and size <= most:
            return read()
        self.skip()
        return None


def decode(data: memoryview, read: Callable[[Reader], T], what: str) -> T:
    """`read` over `data`, which must hold exactly one msgpack value. A value that is not msgpack
    anywhere (truncated, a reserved byte, nested beyond 1024, trailing bytes) is `malformed` even
    when a schema fault came first, as if the whole value were parsed before the schema is checked."""
    try:
        return _walk(data, read)
    except RejectedMessage as exc:
        failure = exc.with_traceback(None)  # drops the walk's frames, and with them its buffer
    except _NOT_MSGPACK as exc:
        raise malformed(f"{what}: {type(exc).__name__}") from None
    if failure.reason is not Reason.MALFORMED:
        _check_structure(data, what)
    raise failure


def _walk(data: memoryview, read: Callable[[Reader], T]) -> T:
    reader = Reader(data)
    value = read(reader)
    reader.end()
    return value


def _check_structure(data: memoryview, what: str) -> None:
    """Skip the whole value in C (no objects built): truncation, reserved bytes, depth, trailing."""
    try:
        _walk(data, Reader.skip)
    except _NOT_MSGPACK as exc:
        raise malformed(f"{what}: {type(exc).__name__}") from None
    except RejectedMessage as exc:
        raise malformed(f"{what}: {exc.detail}") from None


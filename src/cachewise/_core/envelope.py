"""The wire envelope: one versioned binary layout for every shared backend.

Layout, version 1 (big-endian)::

    0  u8   magic 0xC5
    1  u8   format version (1)
    2  u8   flags: 0x01 negative, 0x02 compressed
    3  u8   serializer id (1 json, 2 msgpack, 3 signed pickle)
    4  u8   compressor id (0 none, 1 zlib, 2 zstd)
    5  3x   reserved, zero
    8  f64  written_at      (seconds, writer's clock)
    16 f64  expires_at
    24 f64  stale_until
    32 f64  refresh_at      (XFetch skip horizon, see policy.refresh_horizon)
    40 f64  delta           (load duration)
    48 [tags section, when flag 0x04 is set:
          u16 count, then per tag: u16 length + UTF-8 name, u8 length + version]
    .. [32  HMAC-SHA256 of everything else, for signed serializers]
    .. payload (serialized value, maybe compressed)

Sync and async caches, in any process, read each other's entries: the layout is
the only contract. Decoding is strict and total: any malformed input raises
``DecodeError`` (a miss for the caller), never anything else, and a signed payload
is deserialized only after its MAC checks out.
"""

from __future__ import annotations

import math
import struct
from typing import Protocol

from cachewise._core.entry import Entry

MAGIC = 0xC5
VERSION = 1
FLAG_NEGATIVE = 0x01
FLAG_COMPRESSED = 0x02
FLAG_TAGS = 0x04
_KNOWN_FLAGS = FLAG_NEGATIVE | FLAG_COMPRESSED | FLAG_TAGS
_U16 = struct.Struct(">H")

_HEADER = struct.Struct(">BBBBB3xddddd")
HEADER_SIZE = _HEADER.size  # 48
MAC_SIZE = 32


class DecodeError(Exception):
    """The bytes are not an entry this codec may read. Callers treat it as a miss."""


class WireSerializer(Protocol):
    """What the envelope needs from a serializer."""

    @property
    def wire_id(self) -> int: ...
    @property
    def signed(self) -> bool: ...
    def dumps(self, value: object) -> bytes: ...
    def loads(self, data: bytes) -> object: ...
    def mac(self, data: bytes) -> bytes: ...
    def verify(self, data: bytes, mac: bytes) -> bool: ...


class WireCompressor(Protocol):
    """What the envelope needs from a compressor."""

    @property
    def wire_id(self) -> int: ...
    def compress(self, data: bytes) -> bytes: ...
    def decompress(self, data: bytes, max_size: int) -> bytes: ...


def pack(
    entry: Entry,
    payload: bytes,
    *,
    serializer: WireSerializer,
    compressor: WireCompressor | None,
    key: str = "",
) -> bytes:
    """Assemble an envelope around an already serialized (and compressed) payload.
    ``compressor`` is the one that compressed ``payload``, or ``None``."""
    flags = (FLAG_NEGATIVE if entry.negative else 0) | (FLAG_COMPRESSED if compressor else 0)
    tags = _pack_tags(entry) if entry.tags else b""
    if tags:
        flags |= FLAG_TAGS
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        flags,
        serializer.wire_id,
        compressor.wire_id if compressor else 0,
        entry.written_at,
        entry.expires_at,
        entry.stale_until,
        entry.refresh_at,
        entry.delta,
    )
    header += tags
    if serializer.signed:
        return header + serializer.mac(_bound(key) + header + payload) + payload
    return header + payload


def _bound(key: str) -> bytes:
    """What a signature covers besides the envelope: the key it was written under
    (length-prefixed), so a signed entry copied onto another key, by anyone who can
    write to the store but does not hold the secret, fails to verify there."""
    raw = key.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(raw)) + raw


def _pack_tags(entry: Entry) -> bytes:
    """The tags section: each tag with the version the backend stamped it with."""
    versions = entry.stamp if isinstance(entry.stamp, tuple) else ()
    if len(versions) != len(entry.tags):
        raise ValueError("an entry's stamp must hold one version per tag")
    parts = [_U16.pack(len(entry.tags))]
    for tag, version in zip(entry.tags, versions, strict=True):
        name = tag.encode()
        if len(name) > 0xFFFF or len(version) > 0xFF:
            raise ValueError("tag name or version too long")
        parts += [_U16.pack(len(name)), name, bytes((len(version),)), version]
    return b"".join(parts)


def _unpack_tags(data: bytes, offset: int) -> tuple[tuple[str, ...], tuple[bytes, ...], int]:
    try:
        (count,) = _U16.unpack_from(data, offset)
        offset += 2
        tags: list[str] = []
        versions: list[bytes] = []
        for _ in range(count):
            (length,) = _U16.unpack_from(data, offset)
            offset += 2
            name = data[offset : offset + length]
            if len(name) != length:
                raise DecodeError("truncated tags section")
            tags.append(name.decode())
            offset += length
            vlength = data[offset]
            version = data[offset + 1 : offset + 1 + vlength]
            if len(version) != vlength:
                raise DecodeError("truncated tags section")
            versions.append(version)
            offset += 1 + vlength
    except (struct.error, IndexError, UnicodeDecodeError):
        raise DecodeError("malformed tags section") from None
    return tuple(tags), tuple(versions), offset


def unpack(
    data: bytes,
    *,
    serializer: WireSerializer,
    compressors: dict[int, WireCompressor],
    max_size: int,
    key: str = "",
) -> Entry:
    """Parse and check an envelope; the ``Entry`` it holds, or ``DecodeError``.

    The serializer is the reader's configured one: an envelope written with any
    other is refused, so a payload can never pick its own decoder.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise DecodeError("truncated header")
    (
        magic,
        version,
        flags,
        serializer_id,
        compressor_id,
        written_at,
        expires_at,
        stale_until,
        refresh_at,
        delta,
    ) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not a cachewise entry")
    if version != VERSION:
        raise DecodeError(f"unknown format version {version}")
    if data[5:8] != b"\0\0\0" or flags & ~_KNOWN_FLAGS:
        raise DecodeError("unknown flags")
    if serializer_id != serializer.wire_id:
        raise DecodeError(
            f"written with serializer {serializer_id}, reader uses {serializer.wire_id}"
        )
    if not all(map(math.isfinite, (written_at, expires_at, stale_until, refresh_at, delta))):
        raise DecodeError("non-finite times")
    if not (refresh_at <= expires_at <= stale_until and delta >= 0.0 and written_at <= expires_at):
        raise DecodeError("inconsistent times")
    tags: tuple[str, ...] = ()
    versions: tuple[bytes, ...] = ()
    end = HEADER_SIZE
    if flags & FLAG_TAGS:
        tags, versions, end = _unpack_tags(data, HEADER_SIZE)
        if not tags:
            raise DecodeError("empty tags section")
    body = memoryview(data)[end:]
    if serializer.signed:
        if len(body) < MAC_SIZE:
            raise DecodeError("truncated signature")
        mac, payload = bytes(body[:MAC_SIZE]), bytes(body[MAC_SIZE:])
        if not serializer.verify(_bound(key) + data[:end] + payload, mac):
            raise DecodeError("bad signature")
    else:
        payload = bytes(body)
    if flags & FLAG_COMPRESSED:
        compressor = compressors.get(compressor_id)
        if compressor is None:
            raise DecodeError(f"compressor {compressor_id} is not available")
        try:
            payload = compressor.decompress(payload, max_size)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"corrupt compressed payload: {exc!r}") from None
    elif compressor_id != 0:
        raise DecodeError("compressor set without the compressed flag")
    if len(payload) > max_size:
        raise DecodeError("payload over the size limit")
    try:
        value = serializer.loads(payload)
    except Exception as exc:
        raise DecodeError(f"undecodable payload: {exc!r}") from None
    return Entry(
        value,
        expires_at,
        stale_until,
        refresh_at,
        delta,
        bool(flags & FLAG_NEGATIVE),
        written_at,
        tags,
        versions if tags else None,
    )

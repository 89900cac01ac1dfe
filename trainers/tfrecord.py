"""TFRecord files of ``tf.train.Example`` protos, read and written without TensorFlow.

Record framing (TensorFlow's ``TFRecordWriter``): ``uint64 length`` (little endian), ``uint32 masked
crc32c(length bytes)``, ``data``, ``uint32 masked crc32c(data)``; masked crc = ``((c >> 15) | (c << 17)) +
0xa282ead8`` (mod 2**32). The payload is a ``tf.train.Example`` protobuf, decoded here with a small wire-format
reader for exactly the messages involved::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }          // map entry: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

A decoded example is a dict ``name -> list`` (``list[bytes]``, ``list[float]`` or ``list[int]``).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

# ---------------------------------------------------------------- crc32c (Castagnoli)
_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def _crc32c_py(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc():
    """A C implementation when one is installed (google-crc32c, crc32c or crcmod); the pure-Python table
    fallback verifies a few MB/s, fine for RichHF's 170 MB once per run."""
    try:
        import google_crc32c  # type: ignore
        return lambda d: google_crc32c.value(bytes(d))
    except ImportError:
        pass
    try:
        import crc32c  # type: ignore
        return crc32c.crc32c
    except ImportError:
        pass
    try:
        import crcmod.predefined  # type: ignore
        return crcmod.predefined.mkCrcFun("crc-32c")
    except ImportError:
        return None


_FAST = _fast_crc()


def crc32c(data: bytes) -> int:
    return _FAST(data) if _FAST is not None else _crc32c_py(data)


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    pass


# ---------------------------------------------------------------- record framing
def read_records(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """Yield the payload of every record. ``verify``: check both CRCs (the length CRC is always checked)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise TFRecordError(f"{path}: truncated record header after {n} records.")
            length, lcrc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != lcrc:
                raise TFRecordError(f"{path}: record {n} has a bad length checksum: not a TFRecord file, or "
                                    "compressed (gzip/zlib TFRecords are not supported: decompress first).")
            left = size - f.tell() - 4
            if length > left:        # never allocate what the file cannot hold (a hostile or cut-off length)
                raise TFRecordError(f"{path}: record {n} says it has {length} bytes but only {max(left, 0)} are "
                                    "left in the file: the file is truncated or damaged.")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise TFRecordError(f"{path}: record {n} is truncated.")
            if verify and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise TFRecordError(f"{path}: record {n} has a bad data checksum (corrupted file).")
            yield data
            n += 1


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> Path:
    """Write a TFRecord file atomically."""
    from ..fileio import atomic_write
    path = Path(path)
    with atomic_write(path) as f:
        for p in payloads:
            f.write(frame_record(p))
    return path


# ---------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("Truncated varint in protobuf data.")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise TFRecordError("Varint too long in protobuf data.")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)``; LEN values are bytes, fixed32/64 raw bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
            if len(val) != 8:
                raise TFRecordError("Truncated 64-bit protobuf field.")
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + ln], pos + ln
            if len(val) != ln:
                raise TFRecordError("Truncated length-delimited protobuf field.")
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
            if len(val) != 4:
                raise TFRecordError("Truncated 32-bit protobuf field.")
        else:
            raise TFRecordError(f"Unsupported protobuf wire type {wt}.")
        yield num, wt, val


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes) -> list:
    for num, wt, val in _fields(buf):
        if wt != 2:     # every list is a length-delimited message; anything else is not a Feature
            raise TFRecordError(f"Feature field {num} has wire type {wt}, not a value list.")
        if num == 1:    # BytesList
            return [bytes(v) for n, w, v in _fields(val) if n == 1 and w == 2]
        if num == 2:    # FloatList (packed or not)
            out: list = []
            for n, w, v in _fields(val):
                if n != 1:
                    continue
                if w == 2:
                    if len(v) % 4:
                        raise TFRecordError(f"A float list of {len(v)} bytes is not a whole number of floats.")
                    out += list(struct.unpack(f"<{len(v) // 4}f", v))
                elif w == 5:
                    out.append(struct.unpack("<f", v)[0])
            return out
        if num == 3:    # Int64List (packed or not)
            out = []
            for n, w, v in _fields(val):
                if n != 1:
                    continue
                if w == 2:
                    p = 0
                    while p < len(v):
                        x, p = _varint(v, p)
                        out.append(_signed64(x))
                elif w == 0:
                    out.append(_signed64(v))
            return out
    return []


def parse_example(data: bytes) -> dict[str, list]:
    """Decode a serialized ``tf.train.Example`` into ``{feature name: list of values}``."""
    out: dict[str, list] = {}
    for num, wt, features in _fields(data):
        if num != 1 or wt != 2:
            continue
        for n, w, entry in _fields(features):
            if n != 1 or w != 2:
                continue
            key, value = None, b""
            for en, ew, ev in _fields(entry):
                if ew != 2:      # key and value are both length-delimited
                    raise TFRecordError(f"Feature map entry field {en} has wire type {ew}.")
                if en == 1:
                    try:
                        key = bytes(ev).decode("utf-8")
                    except (UnicodeDecodeError, TypeError):
                        raise TFRecordError("A feature name is not UTF-8 text.") from None
                elif en == 2:
                    value = ev
            if key is not None:
                out[key] = _decode_feature(value)
    return out


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _enc_varint((num << 3) | 2) + _enc_varint(len(payload)) + payload


def encode_feature(values) -> bytes:
    """A ``Feature``: bytes/str values → bytes_list, floats → float_list, ints/bools → int64_list."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if values and all(isinstance(v, (bytes, bytearray, str)) for v in values):
        inner = b"".join(_len_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
        return _len_field(1, inner)
    if values and all(isinstance(v, (bool, int)) for v in values):
        return _len_field(3, _len_field(1, b"".join(_enc_varint(int(v)) for v in values)) if values else b"")
    if all(isinstance(v, (int, float)) for v in values):
        return _len_field(2, _len_field(1, struct.pack(f"<{len(values)}f", *values)) if values else b"")
    raise TypeError("Feature values must be all bytes/str, all ints, or all floats.")


def encode_example(features: dict[str, object]) -> bytes:
    """Serialize ``{name: value or list}`` as a ``tf.train.Example`` (what TensorFlow writes)."""
    entries = b"".join(_len_field(1, _len_field(1, k.encode("utf-8")) + _len_field(2, encode_feature(v)))
                       for k, v in sorted(features.items()))
    return _len_field(1, entries)


def read_examples(paths, verify: bool = True) -> Iterator[dict[str, list]]:
    for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths):
        for rec in read_records(p, verify):
            yield parse_example(rec)


def write_examples(path: str | os.PathLike, examples: Iterable[dict[str, object]]) -> Path:
    return write_records(path, (encode_example(e) for e in examples))

"""TFRecord framing and ``tf.train.SequenceExample`` helpers, without TensorFlow (and without Ray).

A TFRecord file is a sequence of records, each framed as::

    uint64 length            (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked_crc32c(x) = ((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32`` and ``crc`` the
CRC-32C (Castagnoli) of ``x``. Files may be gzip-compressed as a whole (WikiWeb2M ships
``*.tfrecord.gz``); :func:`iter_tfrecords` detects this from the content, not the name: a file
is plain when it opens with a valid record header (length CRC matches), else gzip when it opens
with the gzip magic bytes.

Every framing problem raises :class:`TFRecordError` (a ``ValueError``) whose message names the
file, the record index and the byte offset (in the uncompressed stream for gzip files) at which
the bad record starts, so a broken shard can be found and cut without guessing.

The protobuf classes come from the ``tfrecord`` package (``tfrecord.example_pb2``);
:func:`sequence_example` / :func:`parse_sequence_example` convert between plain Python lists and
serialized ``SequenceExample`` bytes, the format of WikiWeb2M.
"""

from __future__ import annotations

import gzip
import numbers
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import BinaryIO, TypeAlias

import crc32c
from tfrecord import example_pb2

__all__ = [
    "TFRecordError",
    "Value",
    "iter_tfrecords",
    "masked_crc32c",
    "parse_sequence_example",
    "sequence_example",
    "write_tfrecords",
]

#: One feature value as accepted by :func:`sequence_example`.
Value: TypeAlias = bytes | str | int | float

_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
_CHUNK = 1 << 20  # read large records in chunks: a corrupt length never allocates 2**60 bytes


class TFRecordError(ValueError):
    """A TFRecord file is malformed; the message names file, record index and byte offset."""


def masked_crc32c(data: bytes) -> int:
    """The TFRecord ``masked_crc32c`` of ``data`` (CRC-32C rotated right by 15, plus a delta)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------- writing


def _frame(data: bytes) -> bytes:
    """One record with its TFRecord framing."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (length, _FOOTER.pack(masked_crc32c(length)), data, _FOOTER.pack(masked_crc32c(data)))
    )


def write_tfrecords(
    path: str | os.PathLike[str], records: Iterable[bytes], compress: bool | None = None
) -> int:
    """Write ``records`` to ``path`` as a TFRecord file.

    Args:
        path: output file; its parent directory must exist.
        records: serialized records (e.g. from :func:`sequence_example`).
        compress: gzip the file; ``None`` (default) = gzip iff ``path`` ends with ``".gz"``.
            The gzip header carries no time stamp or file name, so equal records give
            byte-identical files.

    Returns:
        The number of records written.
    """
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    count = 0
    with open(path, "wb") as raw:
        out: BinaryIO = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
        )
        try:
            for record in records:
                out.write(_frame(bytes(record)))
                count += 1
        finally:
            if out is not raw:
                out.close()
    return count


# ----------------------------------------------------------------------------------- reading


class _Reader:
    """Reads exact byte counts from a (possibly gzip) stream, wrapping decompression errors."""

    def __init__(self, stream: BinaryIO, path: str, compressed: bool) -> None:
        self.stream = stream
        self.path = path
        self.compressed = compressed
        self.offset = 0  # bytes consumed (uncompressed stream)

    def where(self, index: int, offset: int) -> str:
        """``"<file>: record <i> at byte offset <o>"`` for error messages."""
        kind = " (uncompressed)" if self.compressed else ""
        return f"{self.path}: record {index} at byte offset {offset}{kind}"

    def read(self, n: int, index: int, start: int) -> bytes:
        """Up to ``n`` bytes (fewer only at end of file), read in bounded chunks."""
        parts: list[bytes] = []
        remaining = n
        while remaining > 0:
            try:
                chunk = self.stream.read(min(remaining, _CHUNK))
            except (OSError, EOFError, zlib.error) as err:
                # gzip.BadGzipFile is an OSError; a cut gzip stream raises EOFError.
                raise TFRecordError(
                    f"{self.where(index, start)}: corrupt gzip stream "
                    f"near uncompressed offset {self.offset}: {err}"
                ) from err
            if not chunk:
                break
            parts.append(chunk)
            remaining -= len(chunk)
            self.offset += len(chunk)
        return b"".join(parts)


def _check_crc(reader: _Reader, data: bytes, crc: int, what: str, index: int, start: int) -> None:
    """Raise :class:`TFRecordError` if ``masked_crc32c(data) != crc``."""
    actual = masked_crc32c(data)
    if actual != crc:
        raise TFRecordError(
            f"{reader.where(index, start)}: bad {what} CRC "
            f"(stored 0x{crc:08x}, computed 0x{actual:08x})"
        )


def _read_record(reader: _Reader, index: int, verify_crc: bool) -> bytes | None:
    """The next record's data, or ``None`` at a clean end of file."""
    start = reader.offset
    header = reader.read(_HEADER.size, index, start)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise TFRecordError(
            f"{reader.where(index, start)}: truncated header "
            f"({len(header)} of {_HEADER.size} bytes)"
        )
    length, length_crc = _HEADER.unpack(header)
    if verify_crc:
        _check_crc(reader, header[:8], length_crc, "length", index, start)
    data = reader.read(length, index, start)
    if len(data) < length:
        raise TFRecordError(
            f"{reader.where(index, start)}: truncated data ({len(data)} of {length} bytes)"
        )
    footer = reader.read(_FOOTER.size, index, start)
    if len(footer) < _FOOTER.size:
        raise TFRecordError(
            f"{reader.where(index, start)}: truncated data CRC "
            f"({len(footer)} of {_FOOTER.size} bytes)"
        )
    if verify_crc:
        _check_crc(reader, data, _FOOTER.unpack(footer)[0], "data", index, start)
    return data


def _is_plain_header(head: bytes) -> bool:
    """Whether ``head`` is a complete TFRecord header: 8 length bytes + their masked CRC."""
    if len(head) < _HEADER.size:
        return False
    _, length_crc = _HEADER.unpack(head[: _HEADER.size])
    return masked_crc32c(head[:8]) == length_crc


def _is_gzip(path: str) -> bool:
    """Whether the file is gzip-compressed.

    A file whose first 12 bytes are a valid TFRecord header (its length CRC matches) is plain,
    even when its first length happens to start with the gzip magic bytes (a first record of
    ``0x8b1f`` bytes mod 65536); otherwise it is gzip iff it starts with the magic bytes. A gzip
    file passes as plain only if its bytes 8-11 happen to equal the masked CRC of bytes 0-7
    (a 1 in 2**32 chance).
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if _is_plain_header(head):
        return False
    return head[:2] == _GZIP_MAGIC


def iter_tfrecords(path: str | os.PathLike[str], verify_crc: bool = True) -> Iterator[bytes]:
    """Yield the records of a plain or gzip-compressed TFRecord file.

    Compression is detected from the content (the file name does not matter): a file that opens
    with a valid TFRecord header (the length CRC matches) is plain, even if those bytes start
    like gzip; otherwise one that opens with the gzip magic bytes is gzip.

    Args:
        path: the TFRecord file.
        verify_crc: check both CRCs of every record (default ``True``).

    Yields:
        Each record's data bytes, in file order.

    Raises:
        TFRecordError: for a truncated header, truncated data or data CRC, a bad length or data
            CRC, or a corrupt gzip stream; the message names the file, the record index and the
            byte offset at which that record starts.
        OSError: if the file cannot be opened.
    """
    path = os.fspath(path)
    compressed = _is_gzip(path)
    with open(path, "rb") as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        reader = _Reader(stream, path, compressed)
        index = 0
        while (data := _read_record(reader, index, verify_crc)) is not None:
            yield data
            index += 1


# --------------------------------------------------------------------- SequenceExample helpers


def _kind(values: Sequence[Value], name: str) -> str:
    """The ``Feature`` oneof field for ``values``: bytes_list, int64_list or float_list.

    Strings/bytes -> bytes_list; all integers (bools included) -> int64_list; integers mixed
    with floats -> float_list; an empty list -> bytes_list.
    """
    if all(isinstance(v, (bytes, str)) for v in values):
        return "bytes_list"
    if all(isinstance(v, numbers.Integral) for v in values):
        return "int64_list"
    if all(isinstance(v, numbers.Real) and not isinstance(v, (bytes, str)) for v in values):
        return "float_list"
    types = sorted({type(v).__name__ for v in values})
    raise TypeError(f"feature {name!r}: cannot mix value types {types}")


def _fill(feature: example_pb2.Feature, values: Sequence[Value], kind: str) -> None:
    """Write ``values`` into ``feature`` as the oneof field ``kind`` (set even when empty)."""
    target = getattr(feature, kind)
    target.SetInParent()
    if kind == "bytes_list":
        target.value.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)
    elif kind == "int64_list":
        target.value.extend(int(v) for v in values)
    else:
        target.value.extend(float(v) for v in values)


def sequence_example(
    context: Mapping[str, Sequence[Value]],
    sequences: Mapping[str, Sequence[Sequence[Value]]],
) -> bytes:
    """Serialize a ``tf.train.SequenceExample``.

    Args:
        context: feature name -> list of values (one ``Feature``).
        sequences: feature name -> list of entries, each a list of values (one ``FeatureList``
            with one ``Feature`` per entry). The value type is chosen once per feature list from
            all its entries, so empty entries get the same type as their non-empty siblings.

    Returns:
        The serialized protobuf bytes.

    Raises:
        TypeError: if a feature mixes strings and numbers.
    """
    example = example_pb2.SequenceExample()
    for name, values in context.items():
        _fill(example.context.feature[name], values, _kind(values, name))
    for name, entries in sequences.items():
        kind = _kind([v for entry in entries for v in entry], name)
        feature_list = example.feature_lists.feature_list[name]
        for entry in entries:
            _fill(feature_list.feature.add(), entry, kind)
    return example.SerializeToString(deterministic=True)


def _values(feature: example_pb2.Feature) -> list[str] | list[int] | list[float]:
    """A ``Feature``'s values as a list; bytes decoded as UTF-8 (errors replaced)."""
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return [v.decode("utf-8", errors="replace") for v in feature.bytes_list.value]
    if kind == "int64_list":
        return list(feature.int64_list.value)
    if kind == "float_list":
        return list(feature.float_list.value)
    return []


def parse_sequence_example(data: bytes) -> tuple[dict[str, list], dict[str, list[list]]]:
    """Parse serialized ``tf.train.SequenceExample`` bytes.

    Args:
        data: the serialized protobuf (one TFRecord record).

    Returns:
        ``(context, sequences)``: context feature name -> list of values; sequence feature
        name -> list of entries (lists of values). Bytes values are decoded to ``str`` (UTF-8,
        invalid bytes replaced); floats come back as float32-rounded Python floats.

    Raises:
        google.protobuf.message.DecodeError: if ``data`` is not a valid protobuf.
    """
    example = example_pb2.SequenceExample()
    example.ParseFromString(data)
    context = {name: _values(f) for name, f in example.context.feature.items()}
    sequences = {
        name: [_values(f) for f in fl.feature]
        for name, fl in example.feature_lists.feature_list.items()
    }
    return context, sequences

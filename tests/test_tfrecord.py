"""TFRecord framing and SequenceExample helpers, checked on real files written to tmp_path."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import pytest
from tfrecord import example_pb2

from g4mm.data.tfrecord import (
    TFRecordError,
    iter_tfrecords,
    masked_crc32c,
    parse_sequence_example,
    sequence_example,
    write_tfrecords,
)

RECORDS = [b"", b"a", b"hello world" * 50, bytes(range(256)) * 4]


def _offsets(records: list[bytes]) -> list[int]:
    """Start offset of each record in a plain TFRecord file."""
    out, pos = [], 0
    for r in records:
        out.append(pos)
        pos += 16 + len(r)
    return out


def _write_plain(tmp_path: Path, name: str = "x.tfrecord") -> Path:
    path = tmp_path / name
    assert write_tfrecords(path, RECORDS) == len(RECORDS)
    return path


def test_masked_crc_known_value():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720 check value), then TFRecord masking.
    crc = 0xE3069283
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected


def test_round_trip_plain(tmp_path):
    path = _write_plain(tmp_path)
    assert path.read_bytes()[:2] != b"\x1f\x8b"
    assert list(iter_tfrecords(path)) == RECORDS
    assert path.stat().st_size == sum(16 + len(r) for r in RECORDS)
    # framing as TensorFlow writes it: little-endian length then its masked CRC
    head = path.read_bytes()[:12]
    assert struct.unpack("<QI", head) == (0, masked_crc32c(struct.pack("<Q", 0)))


def test_round_trip_gzip_by_suffix_and_flag(tmp_path):
    by_suffix = tmp_path / "x.tfrecord.gz"
    write_tfrecords(by_suffix, RECORDS)
    assert by_suffix.read_bytes()[:2] == b"\x1f\x8b"
    assert list(iter_tfrecords(by_suffix)) == RECORDS
    # compress=True on a name without .gz: detection is by magic bytes, not name
    by_flag = tmp_path / "y.tfrecord"
    write_tfrecords(by_flag, RECORDS, compress=True)
    assert list(iter_tfrecords(by_flag)) == RECORDS
    # compress=False on a .gz name writes plain framing
    plain = tmp_path / "z.tfrecord.gz"
    write_tfrecords(plain, RECORDS, compress=False)
    assert plain.read_bytes()[:2] != b"\x1f\x8b"
    assert list(iter_tfrecords(plain)) == RECORDS
    # gzip content equals the plain framing
    assert gzip.decompress(by_suffix.read_bytes()) == plain.read_bytes()


def test_gzip_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a.tfrecord.gz", tmp_path / "b.tfrecord.gz"
    write_tfrecords(a, RECORDS)
    write_tfrecords(b, RECORDS)
    assert a.read_bytes() == b.read_bytes()


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    assert write_tfrecords(path, []) == 0
    assert list(iter_tfrecords(path)) == []


def test_truncated_mid_record_names_index_and_offset(tmp_path):
    path = _write_plain(tmp_path)
    data = path.read_bytes()
    starts = _offsets(RECORDS)
    path.write_bytes(data[: starts[2] + 12 + 100])  # cut inside record 2's data
    it = iter_tfrecords(path)
    assert next(it) == RECORDS[0]
    assert next(it) == RECORDS[1]
    with pytest.raises(TFRecordError, match=r"record 2 at byte offset") as err:
        next(it)
    msg = str(err.value)
    assert str(path) in msg and f"offset {starts[2]}" in msg and "truncated data" in msg


def test_truncated_header(tmp_path):
    path = _write_plain(tmp_path)
    starts = _offsets(RECORDS)
    path.write_bytes(path.read_bytes()[: starts[3] + 5])
    with pytest.raises(TFRecordError, match=r"record 3 .*truncated header"):
        list(iter_tfrecords(path))


def test_truncated_data_crc(tmp_path):
    path = _write_plain(tmp_path)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(TFRecordError, match=r"record 3 .*truncated data CRC"):
        list(iter_tfrecords(path))


def test_truncated_gzip_file(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    write_tfrecords(path, RECORDS)
    path.write_bytes(path.read_bytes()[:-20])  # lose the gzip trailer and some data
    with pytest.raises(TFRecordError, match=str(path)):
        list(iter_tfrecords(path))


def test_flipped_data_byte_is_crc_error(tmp_path):
    path = _write_plain(tmp_path)
    data = bytearray(path.read_bytes())
    starts = _offsets(RECORDS)
    data[starts[2] + 12 + 7] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=r"record 2 .*bad data CRC") as err:
        list(iter_tfrecords(path))
    assert f"offset {starts[2]}" in str(err.value)
    # without verification the corrupted bytes come through
    records = list(iter_tfrecords(path, verify_crc=False))
    assert records[2] != RECORDS[2] and len(records[2]) == len(RECORDS[2])


def test_bad_length_crc(tmp_path):
    path = _write_plain(tmp_path)
    data = bytearray(path.read_bytes())
    starts = _offsets(RECORDS)
    data[starts[1] + 8] ^= 0xFF  # the length CRC of record 1
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=r"record 1 at byte offset 16.*bad length CRC"):
        list(iter_tfrecords(path))


def test_corrupt_length_never_allocates_it(tmp_path):
    path = tmp_path / "huge.tfrecord"
    path.write_bytes(struct.pack("<QI", 1 << 60, 0) + b"abc")
    with pytest.raises(TFRecordError, match="bad length CRC"):
        list(iter_tfrecords(path))
    with pytest.raises(TFRecordError, match="truncated data"):
        list(iter_tfrecords(path, verify_crc=False))


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    write_tfrecords(path, RECORDS)
    data = bytearray(path.read_bytes())
    for i in range(20, min(60, len(data) - 10)):  # scramble deflate blocks after the header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=r"x\.tfrecord\.gz: record \d+ at byte offset"):
        list(iter_tfrecords(path))


def test_garbage_after_gzip_magic(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip at all")
    with pytest.raises(TFRecordError, match=r"record 0 .*corrupt gzip"):
        list(iter_tfrecords(path))


def test_sequence_example_round_trip():
    context = {
        "split": [b"train"],
        "page_title": ["Café ünïcode"],
        "page_id": [42],
        "score": [0.5, 1.25],
        "empty": [],
    }
    sequences = {
        "section_title": [["Intro"], ["History"], [b"raw"]],
        "section_parent_index": [[-1], [0], [1]],
        "section_image_url": [[], ["http://x/a.png", "http://x/b.png"], []],
        "weights": [[0.25], [], [1, 2.5]],  # ints mixed with floats -> float list
        "all_empty": [[], []],
        "no_entries": [],
    }
    ctx, seq = parse_sequence_example(sequence_example(context, sequences))
    assert ctx == {
        "split": ["train"],
        "page_title": ["Café ünïcode"],
        "page_id": [42],
        "score": [0.5, 1.25],
        "empty": [],
    }
    assert seq["section_title"] == [["Intro"], ["History"], ["raw"]]
    assert seq["section_parent_index"] == [[-1], [0], [1]]
    assert seq["section_image_url"] == [[], ["http://x/a.png", "http://x/b.png"], []]
    assert seq["weights"] == [[0.25], [], [1.0, 2.5]]
    assert seq["all_empty"] == [[], []]
    assert seq.get("no_entries", []) == []


def test_sequence_example_types_in_protobuf():
    data = sequence_example(
        {"n": [1], "f": [0.1], "s": ["x"]}, {"urls": [[], ["u"]], "depth": [[0], []]}
    )
    ex = example_pb2.SequenceExample.FromString(data)
    assert ex.context.feature["n"].WhichOneof("kind") == "int64_list"
    assert ex.context.feature["f"].WhichOneof("kind") == "float_list"
    assert ex.context.feature["s"].WhichOneof("kind") == "bytes_list"
    # empty entries take the list's type, so readers see a consistent feature list
    urls = ex.feature_lists.feature_list["urls"].feature
    assert [f.WhichOneof("kind") for f in urls] == ["bytes_list", "bytes_list"]
    depth = ex.feature_lists.feature_list["depth"].feature
    assert [f.WhichOneof("kind") for f in depth] == ["int64_list", "int64_list"]
    assert math.isclose(parse_sequence_example(data)[0]["f"][0], 0.1, rel_tol=1e-6)


def test_invalid_utf8_is_replaced():
    ctx, _ = parse_sequence_example(sequence_example({"t": [b"ok\xff"]}, {}))
    assert ctx["t"] == ["ok\ufffd"]


def test_mixed_string_and_number_rejected():
    with pytest.raises(TypeError, match="'bad'"):
        sequence_example({"bad": ["a", 1]}, {})


def test_sequence_examples_through_files(tmp_path):
    path = tmp_path / "pages.tfrecord.gz"
    pages = [
        sequence_example({"page_title": [f"p{i}"]}, {"section_depth": [[0], [1]] * i})
        for i in range(5)
    ]
    write_tfrecords(path, pages)
    parsed = [parse_sequence_example(r) for r in iter_tfrecords(path)]
    assert [c["page_title"] for c, _ in parsed] == [[f"p{i}"] for i in range(5)]
    assert [len(s.get("section_depth", [])) for _, s in parsed] == [0, 2, 4, 6, 8]


def test_interoperates_with_tfrecord_package(tmp_path):
    from tfrecord.reader import tfrecord_iterator

    plain, gz = tmp_path / "p.tfrecord", tmp_path / "g.tfrecord.gz"
    write_tfrecords(plain, RECORDS)
    write_tfrecords(gz, RECORDS)
    assert [bytes(r) for r in tfrecord_iterator(str(plain))] == RECORDS
    assert [bytes(r) for r in tfrecord_iterator(str(gz), compression_type="gzip")] == RECORDS


@pytest.mark.parametrize("extra", [0, 8 * 65536])
def test_plain_file_whose_first_length_looks_like_gzip_magic(tmp_path, extra):
    # A first record of 0x8b1f (= 35615) bytes mod 65536 makes the file start with 1f 8b, the
    # gzip magic; the valid length CRC that follows shows the file is plain.
    first = b"y" * (0x8B1F + extra)
    path = tmp_path / "plain.tfrecord"
    write_tfrecords(path, [first, b"second"], compress=False)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert list(iter_tfrecords(path)) == [first, b"second"]


def test_gzip_file_whose_content_starts_like_gzip_magic(tmp_path):
    # the gzip case of the same record is still read as gzip
    first = b"y" * 0x8B1F
    path = tmp_path / "x.tfrecord.gz"
    write_tfrecords(path, [first, b"second"])
    assert list(iter_tfrecords(path)) == [first, b"second"]

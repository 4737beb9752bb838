"""WikiWeb2M integer features are parsed strictly: bad values are counted, logged record skips."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from g4mm.data.records import ReadStats
from g4mm.data.tfrecord import sequence_example, write_tfrecords
from g4mm.data.wikiweb2m import iter_wikiweb2m


def _page(flags: list, parents: list) -> bytes:
    """A two-section train page with the given summarization flags and parent indices."""
    return sequence_example(
        {"split": ["train"], "page_title": ["P"]},
        {
            "section_title": [["A"], ["B"]],
            "section_clean_1st_sentence": [["First a."], ["First b."]],
            "section_rest_sentence": [["rest a"], ["rest b"]],
            "section_parent_index": [[p] for p in parents],
            "is_section_summarization_sample": [[f] for f in flags],
        },
    )


def _read(tmp_path: Path, records: list[bytes]) -> tuple[list, ReadStats]:
    path = tmp_path / "pages.tfrecord.gz"
    write_tfrecords(path, records)
    stats = ReadStats()
    return list(iter_wikiweb2m(path, None, stats)), stats


@pytest.mark.parametrize(
    ("flags", "parents", "field", "value"),
    [
        ([1, 0.5], [-1, 0], "is_section_summarization_sample", "0.5"),  # was truncated to 0
        (["1", "true"], [-1, 0], "is_section_summarization_sample", "'true'"),  # was a ValueError
        ([1, 2], [-1, 0], "is_section_summarization_sample", "2"),  # not a 0/1 flag
        ([1, 1], ["-1", "zero"], "section_parent_index", "'zero'"),  # was a ValueError
        ([1, 1], [-1.0, 0.5], "section_parent_index", "0.5"),  # was truncated to 0
    ],
)
def test_malformed_integer_is_a_counted_logged_skip(tmp_path, caplog, flags, parents, field, value):
    good = _page([1, 1], [-1, 0])
    with caplog.at_level(logging.WARNING, logger="g4mm.data.wikiweb2m"):
        graphs, stats = _read(tmp_path, [good, _page(flags, parents), good])
    assert [g.source for g in graphs] == ["pages.tfrecord.gz:0", "pages.tfrecord.gz:2"]
    assert stats.skipped == {"malformed_record": 1}
    assert "pages.tfrecord.gz:1: section 1: " + field in caplog.text
    assert value in caplog.text and "record skipped" in caplog.text
    assert stats.images_missing == 0  # nothing of the skipped record is counted


def test_integral_floats_and_decimal_strings_are_accepted(tmp_path):
    (src,), stats = _read(tmp_path, [_page([1.0, 0.0], [" -1 ", "0"])])
    assert stats.skipped == {}
    assert [src.graph.node_ids[t.node] for t in src.targets] == ["section0"]
    g = src.graph
    pairs = {(g.node_ids[u], g.node_ids[v]) for u, v in g.edge_index.t().tolist()}
    assert ("section1", "section0") in pairs  # parent 0.0 read as section 0

"""WikiWeb2M work items read without Ray: record names (sample ids) and per-record skips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa

from g4mm.config import DataConfig
from g4mm.data.tfrecord import sequence_example, write_tfrecords
from g4mm.pipeline.sources import (
    record_items,
    source_name,
    tfrecord_files,
    wikiweb2m_items_to_table,
)


def _page(flag: object = 1) -> bytes:
    """A one-section test page whose section is a summarization target (flag ``flag``)."""
    return sequence_example(
        {"split": ["test"], "page_title": ["P"]},
        {
            "section_title": [["A"]],
            "section_clean_1st_sentence": [["First sentence."]],
            "section_rest_sentence": [["Rest."]],
            "section_parent_index": [[-1]],
            "is_section_summarization_sample": [[flag]],
        },
    )


def _run(input_path: Path) -> tuple[list[str], dict]:
    """Sample ids and merged skip counts of every work item of ``input_path``."""
    items = record_items(tfrecord_files(input_path), num_blocks=1, input_path=input_path)
    cfg = DataConfig(dataset="wikiweb2m", input=str(input_path))
    table = wikiweb2m_items_to_table(pa.Table.from_pylist(items), cfg)
    ids = [r["sample_id"] for r in table.to_pylist() if r["_is_sample"]]
    skipped: dict[str, int] = {}
    for cell in table.column("_stats").to_pylist():
        for reason, n in (json.loads(cell)["skipped"] if cell else {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    return ids, skipped


def test_equal_file_names_in_subdirectories_get_distinct_ids(tmp_path):
    root = tmp_path / "wiki"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        write_tfrecords(root / split / "x.tfrecord.gz", [_page()])
    ids, _ = _run(root)
    assert sorted(ids) == ["train/x.tfrecord.gz:0#section0", "val/x.tfrecord.gz:0#section0"]


def test_single_file_input_is_named_by_its_file_name(tmp_path):
    path = tmp_path / "x.tfrecord.gz"
    write_tfrecords(path, [_page()])
    assert source_name(tfrecord_files(path)[0], path) == "x.tfrecord.gz"
    ids, _ = _run(path)
    assert ids == ["x.tfrecord.gz:0#section0"]


def test_top_level_files_keep_their_plain_name(tmp_path):
    root = tmp_path / "wiki"
    root.mkdir()
    write_tfrecords(root / "x.tfrecord.gz", [_page()])
    assert _run(root)[0] == ["x.tfrecord.gz:0#section0"]


def test_malformed_record_is_a_counted_skip_naming_file_and_record(tmp_path, caplog):
    root = tmp_path / "wiki"
    (root / "train").mkdir(parents=True)
    write_tfrecords(root / "train" / "x.tfrecord.gz", [_page(), _page(0.5), _page()])
    with caplog.at_level(logging.WARNING, logger="g4mm.data.wikiweb2m"):
        ids, skipped = _run(root)
    assert sorted(ids) == ["train/x.tfrecord.gz:0#section0", "train/x.tfrecord.gz:2#section0"]
    assert skipped == {"malformed_record": 1}
    assert "train/x.tfrecord.gz:1: section 0: is_section_summarization_sample = 0.5" in caplog.text

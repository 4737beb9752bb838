"""The image URLs a WikiWeb2M input names (Ray-free: a ``map_batches`` function over the
pipeline's ``(file, stripe)`` work items, :func:`g4mm.pipeline.sources.record_items`).

Every ``section_image_url`` of every record in the chosen splits, one row per reference
(deduplication is the caller's, as a Ray Data operation). Problems are rows too, with an empty
``url`` and a ``problem`` naming file and record: a record that does not parse
(``bad_record``), and a file whose framing breaks (``corrupt_tfrecord_file``: the records
before the cut are read, as in preprocessing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa

__all__ = ["URL_SCHEMA", "urls_of_items"]

log = logging.getLogger(__name__)

#: Rows of :func:`urls_of_items`.
URL_SCHEMA = pa.schema([pa.field("url", pa.string()), pa.field("problem", pa.string())])


def _record_urls(data: bytes, splits: frozenset[str] | None) -> Iterator[str]:
    """The image URLs of one serialized record in ``splits`` (all splits when None)."""
    from g4mm.data.records import normalise_split
    from g4mm.data.tfrecord import parse_sequence_example

    context, sequences = parse_sequence_example(data)
    if splits is not None:
        raw = context.get("split") or [""]
        split = normalise_split(str(raw[0]))
        if split not in splits:
            return
    for section in sequences.get("section_image_url", []):
        for url in section:
            url = str(url).strip()
            if url:
                yield url


def urls_of_items(batch: pa.Table, splits: list[str] | None = None) -> pa.Table:
    """``map_batches`` function: work items -> ``URL_SCHEMA`` rows."""
    from google.protobuf.message import DecodeError

    from g4mm.data.tfrecord import TFRecordError, iter_tfrecords

    wanted = frozenset(splits) if splits else None
    urls: list[str] = []
    problems: list[str] = []
    for item in batch.to_pylist():
        stripe, stripes, name = item["stripe"], item["num_stripes"], item["name"]
        index = -1
        try:
            for index, data in enumerate(iter_tfrecords(item["path"])):
                if index % stripes != stripe:
                    continue
                try:
                    urls.extend(_record_urls(data, wanted))
                except DecodeError as err:
                    log.warning("%s:%d: not a SequenceExample (%s); skipped", name, index, err)
                    problems.append(f"bad_record: {name}:{index}")
        except TFRecordError as err:
            if stripe == 0:  # every stripe hits the cut: count it once per file
                log.warning("%s; the records before it were read", err)
                problems.append(f"corrupt_tfrecord_file: {name} after record {index}")
    rows = {"url": urls + [""] * len(problems), "problem": [""] * len(urls) + problems}
    return pa.table(rows, schema=URL_SCHEMA)

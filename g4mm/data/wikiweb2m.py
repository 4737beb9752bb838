"""WikiWeb2M page (one ``tf.train.SequenceExample``) -> one :class:`SourceGraph`.

Official field names. Context: ``split``, ``page_url``, ``page_title``,
``clean_page_description``. Sequence (one entry per section): ``section_title``,
``section_depth``, ``section_heading_level``, ``section_parent_index`` (-1 = top level),
``section_clean_1st_sentence`` (the summary target), ``section_rest_sentence``,
``section_image_url`` (list), ``section_image_captions`` (list aligned with the URLs),
``is_section_summarization_sample`` (0/1).

Integer features are parsed strictly: an int, an integral float or a decimal string; anything
else (``0.7``, ``"true"``, a summarization flag other than 0/1) makes the record malformed
(:class:`MalformedRecordError`, counted as ``"malformed_record"``), never silently truncated.

Graph (node ids ``"page"``, ``"section<i>"``, ``"section<i>/image<j>"``):

- node 0 = the page, text ``"<title>. <clean_page_description>"``;
- one node per section, text ``"<title>. <1st sentence> <rest>"`` plus
  ``" Captions: <c1>; <c2>"`` when its images have captions (``"Section <i+1>."`` when all of
  that is empty, so that every section node carries text and stays connected);
- one node per image whose file checks ``"ok"`` (image = resolved absolute path, no text);
- undirected edges: TEXT_TEXT section <-> parent section (the page when the parent is -1);
  TEXT_IMAGE section <-> its images; IMAGE_IMAGE between the images of a section and between
  each image and the images of the parent section.

Targets: sections with ``is_section_summarization_sample == 1`` and a non-blank 1st sentence,
in the record's own split; the target node's text in its own sample is the section text
WITHOUT the 1st sentence (``TargetSpec.node_text``, leak prevention).

What the raw layout's LM reads (:mod:`g4mm.model.layout`), as the official code builds it:
``"summarize: "`` + the target's segment (``"<title>. <rest>"``, its summary removed), then
the other text nodes in document order (the page, then the sections as the record lists
them; ``SourceGraph.document_order``), each segment ``"<title>. <1st sentence> <rest>"``;
each image's caption (``SourceGraph.captions``) before its graph tokens; ``", summary:"``
closes the input. Segments leave the captions out: the layout places them at the images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from itertools import combinations
from pathlib import Path

from google.protobuf.message import DecodeError

from g4mm.data.images import check_image, load_manifest, resolve_image
from g4mm.data.records import ReadStats, SourceGraph, TargetSpec, normalise_split
from g4mm.data.schema import SEQUENCE_FIELDS
from g4mm.data.tfrecord import iter_tfrecords, parse_sequence_example
from g4mm.graph import EdgeType, MultimodalGraph

__all__ = ["SEQUENCE_FIELDS", "MalformedRecordError", "iter_wikiweb2m", "read_wikiweb2m_record"]

log = logging.getLogger(__name__)

Edge = tuple[str, str, EdgeType]


class MalformedRecordError(ValueError):
    """A WikiWeb2M record has an unusable feature value; the message names field, section and
    value. :func:`read_wikiweb2m_record` turns it into a counted, logged ``"malformed_record"``
    skip naming the record."""


def _first(values: list | None, default: object = "") -> object:
    return values[0] if values else default


def _text(values: list | None) -> str:
    """The first value of a bytes feature as a stripped ``str`` (``""`` when absent)."""
    return str(_first(values)).strip()


def _join(*parts: str) -> str:
    """Non-blank parts joined with ``". "`` (title. body)."""
    return ". ".join(p for p in parts if p)


#: The raw layout's words around a WikiWeb2M sample (the official code's).
LEAD, CUE = "summarize: ", ", summary:"


def _section_segment(title: str, body: list[str], index: int) -> str:
    """What the LM reads of a section: ``"<title>. <body>"`` (``"Section <i+1>."`` if empty)."""
    return _join(title, " ".join(b for b in body if b)) or f"Section {index + 1}."


def _section_text(title: str, body: list[str], captions: list[str], index: int) -> str:
    """The text encoder's text of a section: its segment, then ``" Captions: c1; c2"``."""
    text = _section_segment(title, body, index)
    if captions:
        text = f"{text} Captions: {'; '.join(captions)}"
    return text


class _Page:
    """The per-section features of one record, with defaults for absent features."""

    def __init__(self, sequences: dict[str, list[list]], num_sections: int) -> None:
        self.seq = sequences
        self.n = num_sections

    def entry(self, name: str, i: int) -> list:
        entries = self.seq.get(name)
        return list(entries[i]) if entries is not None else []

    def text(self, name: str, i: int) -> str:
        return _text(self.entry(name, i))

    def integers(self, name: str, default: int, allowed: frozenset[int] | None = None) -> list[int]:
        """Feature ``name`` of every section as an int (``default`` where absent or empty).

        Raises:
            MalformedRecordError: a value is not an integer (see :func:`_as_int`) or not in
                ``allowed``, naming the field, the section and the value.
        """
        out = []
        for i in range(self.n):
            value = _first(self.entry(name, i), default)
            number = _as_int(value)
            if number is None or (allowed is not None and number not in allowed):
                expected = "an integer" if allowed is None else f"one of {sorted(allowed)}"
                raise MalformedRecordError(f"section {i}: {name} = {value!r} is not {expected}")
            out.append(number)
        return out


def _as_int(value: object) -> int | None:
    """``value`` as an int when it is one exactly: an int, an integral float (``1.0``) or a
    decimal string (``"1"``); ``None`` otherwise (``0.7``, ``"true"``, NaN...)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


_FLAG = frozenset({0, 1})


def read_wikiweb2m_record(
    data: bytes,
    source: str,
    images_dir: str | os.PathLike[str] | None,
    manifest: Mapping[str, Path] | None,
    stats: ReadStats,
    *,
    image_cache: dict[Path, str] | None = None,
    allow_outside_images: bool = False,
) -> SourceGraph | None:
    """One serialized WikiWeb2M ``SequenceExample`` -> a :class:`SourceGraph`, or ``None``.

    ``None`` (counted in ``stats.skipped``, unit = records, with a logged warning naming
    ``source`` where it is a data problem) for: ``"bad_record"`` (not a SequenceExample),
    ``"malformed_record"`` (sequence features of different lengths, or a
    ``section_parent_index`` / ``is_section_summarization_sample`` value that is not an integer,
    resp. not 0/1: see :class:`MalformedRecordError`), ``"unknown_split"``
    (context split not train / val / validation / test), ``"no_targets"``.
    Also counted: each image reference (``images_ok`` / ``images_missing`` /
    ``images_corrupt``; a bad image only drops its image node, never the sample; without
    ``images_dir`` every image is missing), ``"empty_target"`` (summarization sections with a
    blank 1st sentence, unit = targets), ``"bad_parent_index"`` (sections attached to the
    page instead, unit = sections).

    Args:
        data: the serialized record.
        source: ``"<file>:<record index>"``, used in messages and sample ids; ``<file>`` is the
            file's path relative to the input root (posix), or its name for a single file.
        images_dir: directory of the downloaded images, or ``None``.
        manifest: URL -> path map (:func:`~g4mm.data.images.load_manifest`), or ``None``.
        stats: counters to update.
        allow_outside_images: read images the manifest places outside ``images_dir``; off:
            such a reference is a counted corrupt image, never opened.
        image_cache: optional path -> check outcome memo shared across records (each reference
            is still counted).
    """
    try:
        context, sequences = parse_sequence_example(data)
    except DecodeError as err:
        log.warning("%s: not a SequenceExample (%s); record skipped", source, err)
        stats.skip("bad_record")
        return None
    lengths = {name: len(sequences[name]) for name in SEQUENCE_FIELDS if name in sequences}
    if len(set(lengths.values())) > 1:
        log.warning("%s: sequence features differ in length %s; record skipped", source, lengths)
        stats.skip("malformed_record")
        return None
    raw_split = _text(context.get("split"))
    split = normalise_split(raw_split)
    if split is None:
        log.warning("%s: unknown split %r; record skipped", source, raw_split)
        stats.skip("unknown_split")
        return None
    page = _Page(sequences, next(iter(lengths.values()), 0))
    try:
        is_sample = page.integers("is_section_summarization_sample", 0, _FLAG)
        parents = page.integers("section_parent_index", -1)
    except MalformedRecordError as err:
        log.warning("%s: %s; record skipped", source, err)
        stats.skip("malformed_record")
        return None
    title = _text(context.get("page_title"))
    page_text = (
        _join(title, _text(context.get("clean_page_description")))
        or _text(context.get("page_url"))
        or "Page."
    )

    node_ids, texts, images = ["page"], [page_text], [None]
    segments: list[str | None] = [page_text]
    node_captions: list[str | None] = [None]
    section_node: list[int] = []
    section_images: list[list[str]] = []  # ok image node ids per section
    edges: list[Edge] = []
    targets: list[TargetSpec] = []
    cache = image_cache if image_cache is not None else {}
    inside = None if allow_outside_images or images_dir is None else [images_dir]
    for i in range(page.n):
        s_title = page.text("section_title", i)
        first = page.text("section_clean_1st_sentence", i)
        rest = page.text("section_rest_sentence", i)
        raw_captions = [str(c).strip() for c in page.entry("section_image_captions", i)]
        captions = [c for c in raw_captions if c]
        sid = f"section{i}"
        section_node.append(len(node_ids))
        node_ids.append(sid)
        texts.append(_section_text(s_title, [first, rest], captions, i))
        segments.append(_section_segment(s_title, [first, rest], i))
        node_captions.append(None)
        images.append(None)
        ok_images: list[str] = []
        for j, url in enumerate(page.entry("section_image_url", i)):
            url = str(url).strip()
            if not url:
                continue
            path = resolve_image(url, images_dir, manifest) if images_dir is not None else None
            status = "missing" if path is None else cache.get(path) or check_image(path, inside)
            if path is not None:
                cache[path] = status
            stats.count_image(status)
            if status == "ok":
                iid = f"{sid}/image{j}"
                node_ids.append(iid)
                texts.append(None)
                segments.append(None)
                node_captions.append(raw_captions[j] if j < len(raw_captions) else "")
                images.append(str(path))
                edges.append((sid, iid, EdgeType.TEXT_IMAGE))
                ok_images.append(iid)
        edges.extend((a, b, EdgeType.IMAGE_IMAGE) for a, b in combinations(ok_images, 2))
        section_images.append(ok_images)
        if is_sample[i] == 1:
            if not first:
                stats.skip("empty_target")
            else:
                targets.append(
                    TargetSpec(
                        node=section_node[i],
                        split=split,
                        prompt=f"Page: {title}. Section: {s_title}. {rest}".strip(),
                        target_text=first,
                        node_text=_section_text(s_title, [rest], captions, i),
                        lead=LEAD,
                        cue=CUE,
                        segment=_section_segment(s_title, [rest], i),
                    )
                )
    for i in range(page.n):
        parent = parents[i]
        if parent != -1 and not (0 <= parent < page.n and parent != i):
            log.warning(
                "%s: section %d has bad parent index %d; attached to page", source, i, parent
            )
            stats.skip("bad_parent_index")
            parent = -1
        sid = f"section{i}"
        edges.append((sid, "page" if parent == -1 else f"section{parent}", EdgeType.TEXT_TEXT))
        if parent != -1:
            edges.extend(
                (a, b, EdgeType.IMAGE_IMAGE)
                for a in section_images[i]
                for b in section_images[parent]
            )
    if not targets:
        stats.skip("no_targets")
        return None
    graph = MultimodalGraph.from_edge_list(node_ids, texts, images, edges, name=source)
    return SourceGraph(
        graph=graph,
        targets=targets,
        source=source,
        segments=segments,
        captions=node_captions,
        document_order=True,
    )


def iter_wikiweb2m(
    path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None,
    stats: ReadStats,
    allow_outside_images: bool = False,
) -> Iterator[SourceGraph]:
    """The :class:`SourceGraph` of every page of a (gzipped) WikiWeb2M TFRecord file.

    ``source`` of each is ``"<file name>:<record index>"``; skipped records are counted in
    ``stats`` (see :func:`read_wikiweb2m_record`). The manifest of ``images_dir`` is loaded
    once and image checks are memoised per file.

    Raises:
        g4mm.data.tfrecord.TFRecordError: for corrupt framing (file, record and offset named).
        ValueError: for a malformed manifest.
    """
    manifest = load_manifest(images_dir)
    name = Path(path).name
    cache: dict[Path, str] = {}
    for index, data in enumerate(iter_tfrecords(path)):
        src = read_wikiweb2m_record(
            data, f"{name}:{index}", images_dir, manifest, stats, image_cache=cache,
            allow_outside_images=allow_outside_images,
        )
        if src is not None:
            yield src

"""What every source reader produces: a graph, its target nodes, and counters of what was dropped.

- :class:`TargetSpec`: one target node of a :class:`SourceGraph` (split, prompt, target, label);
- :class:`SourceGraph`: a :class:`~g4mm.graph.MultimodalGraph` whose image references are
  resolved absolute file paths, plus its targets and provenance;
- :class:`ReadStats`: image check outcomes and skip counters, mergeable across workers and
  serialisable to the ``images`` / ``skipped`` parts of ``report.json``.

Ray-free: plain dataclasses, picklable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # an annotation only: this module stays free of torch and torch_geometric,
    from g4mm.graph import MultimodalGraph  # so the preprocessing driver imports neither

__all__ = ["IMAGE_STATUSES", "SPLITS", "ReadStats", "SourceGraph", "TargetSpec", "normalise_split"]

#: The splits a target may belong to.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Outcomes of :func:`g4mm.data.images.check_image`.
IMAGE_STATUSES: tuple[str, ...] = ("ok", "missing", "corrupt")

_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def normalise_split(value: str | bytes | None) -> str | None:
    """``"train"``/``"val"``/``"test"`` for a split name (case and surrounding blanks ignored,
    ``"validation"`` -> ``"val"``), ``None`` for anything else (including ``None``)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return _SPLIT_ALIASES.get(value.strip().lower())


@dataclass
class TargetSpec:
    """One target node of a :class:`SourceGraph`: one training / evaluation sample.

    Args:
        node: index of the target node into ``SourceGraph.graph``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        prompt: text placed before the graph tokens.
        target_text: generative target (e.g. a section summary); for classification the class
            name; ``None`` when there is none.
        label: class id for classification, else ``None``.
        node_text: when not ``None``, replaces the target node's own text in THIS sample's
            text subgraph (leak prevention: e.g. a WikiWeb2M section without its 1st sentence
            when that sentence is the target). Other samples see the graph's text.
        lead: words the raw layout puts before the target's own text (``"summarize: "``).
        cue: words that close the raw layout, right before the target (``", summary:"``).
        segment: when not ``None``, what the LM reads as the target's own text in the raw
            layout (leak prevention, as ``node_text``, but the LM's text: a WikiWeb2M
            section without its 1st sentence and without its captions, which the layout
            places at the images). ``None``: the node's segment
            (:attr:`SourceGraph.segments`).
    """

    node: int
    split: str
    prompt: str
    target_text: str | None
    label: int | None = None
    node_text: str | None = None
    lead: str = ""
    cue: str = ""
    segment: str | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"TargetSpec.split must be one of {SPLITS}, got {self.split!r}")
        if self.label is not None and self.label < 0:
            raise ValueError(f"TargetSpec.label must be >= 0 or None, got {self.label}")


@dataclass
class SourceGraph:
    """A graph read from one source unit (a WikiWeb2M page, an MM-GRAPH directory, ...).

    Args:
        graph: the multimodal graph; image references are resolved absolute paths or ``None``.
        targets: the target nodes (one sample each).
        source: where it came from (file name and record index), used in messages and in
            sample ids (``"<source>#<node id>"``).
        class_names: class id -> name for classification sources, else ``None``.
        zero_shot_classes: class ids held out of training (their targets are never in
            ``"train"``), else ``None``.
        segments: ``[N]`` what the raw layout's LM reads for each text node, when it is not
            the node's text (WikiWeb2M: a section's text without the captions appended to it
            for the text encoder); ``None`` = the graph's texts.
        captions: ``[N]`` the caption of each image node (``None`` where it has none), read
            by the LM before that image's graph tokens; ``None`` = no captions.
        document_order: whether node index order is the source's reading order (WikiWeb2M:
            page, then sections as the page lists them), which the raw layout follows;
            otherwise it reads the neighbours nearest hop first, then by index.

    Raises:
        ValueError: if a target's node index is out of range, or ``segments`` /
            ``captions`` do not have one entry per node, naming the source.
    """

    graph: MultimodalGraph
    targets: list[TargetSpec]
    source: str
    class_names: list[str] | None = None
    zero_shot_classes: list[int] | None = None
    segments: list[str | None] | None = None
    captions: list[str | None] | None = None
    document_order: bool = False

    def __post_init__(self) -> None:
        n = self.graph.num_nodes
        for name in ("segments", "captions"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(
                    f"{self.source}: {name} has {len(values)} entries for {n} nodes"
                )
        for k, target in enumerate(self.targets):
            if not 0 <= target.node < n:
                raise ValueError(
                    f"{self.source}: target {k} refers to node {target.node}, out of range [0, {n})"
                )


@dataclass
class ReadStats:
    """Counters filled by the readers and the sample builder.

    Attributes:
        images_ok: image references whose file opened and decoded.
        images_missing: image references with no file (the image node is left out).
        images_corrupt: image references whose file failed to decode, e.g. a truncated JPEG
            (the image node is left out).
        skipped: reason -> count of what was skipped. The unit is stated by each reader
            (``unknown_split`` counts WikiWeb2M records; ``empty_target``, ``empty_text``,
            ``zero_shot_heldout_train``... count targets).
    """

    images_ok: int = 0
    images_missing: int = 0
    images_corrupt: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def count_image(self, status: str) -> None:
        """Add one image check outcome (``"ok"``, ``"missing"`` or ``"corrupt"``)."""
        if status not in IMAGE_STATUSES:
            raise ValueError(f"unknown image status {status!r}, expected one of {IMAGE_STATUSES}")
        attr = f"images_{status}"
        setattr(self, attr, getattr(self, attr) + 1)

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` things skipped for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: ReadStats | Mapping[str, Any]) -> ReadStats:
        """Add ``other`` (a :class:`ReadStats` or a :meth:`to_dict` dict) into this one, in
        place; returns ``self`` (so ``functools.reduce(ReadStats.merge, parts, ReadStats())``
        works)."""
        if not isinstance(other, ReadStats):
            other = ReadStats.from_dict(other)
        self.images_ok += other.images_ok
        self.images_missing += other.images_missing
        self.images_corrupt += other.images_corrupt
        for reason, n in other.skipped.items():
            self.skip(reason, n)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"images": {"ok", "missing", "corrupt"}, "skipped": {reason: n}}`` (the shape of
        those keys in ``report.json``); skip reasons sorted."""
        return {
            "images": {
                "ok": self.images_ok,
                "missing": self.images_missing,
                "corrupt": self.images_corrupt,
            },
            "skipped": dict(sorted(self.skipped.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReadStats:
        """Inverse of :meth:`to_dict` (missing keys count as 0)."""
        images = data.get("images", {})
        return cls(
            images_ok=int(images.get("ok", 0)),
            images_missing=int(images.get("missing", 0)),
            images_corrupt=int(images.get("corrupt", 0)),
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
        )

"""Sample rows (``g4mm.data.schema.SAMPLE_SCHEMA``) + cached frozen features -> model batches.

Frozen encoders never run here: node features are looked up by
:func:`g4mm.data.schema.feature_key` in the tables the embed stage wrote once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from g4mm.data.schema import feature_key
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.model.layout import LayoutSpec, build_layouts


def rows_from_columns(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """Accept a list of row dicts or a dict of columns (what Ray's ``iter_batches`` yields)."""
    if isinstance(batch, Mapping):
        columns = {k: list(v) for k, v in batch.items()}
        n = len(next(iter(columns.values()))) if columns else 0
        return [{k: columns[k][i] for k in columns} for i in range(n)]
    return [dict(row) for row in batch]


def _as_list(row: Mapping[str, Any], key: str) -> list:
    """A list column's value for one row (None -> [])."""
    value = row.get(key)
    return [] if value is None else list(value)


def length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 32
) -> list[list[int]]:
    """One epoch of index batches whose samples have similar lengths (little padding).

    The indices are shuffled, cut into windows of ``window * batch_size``, sorted by length
    inside each window and cut into batches of ``batch_size`` (a short last batch is dropped);
    the batches are then shuffled. Every sample is used at most once per epoch and the batch
    order stays random, but a batch holds neighbours in length, so a padded batch costs
    close to its real tokens. ``window=1`` is plain shuffled batching.

    Args:
        lengths: per-sample sequence length (e.g. :meth:`GraphCollator.token_lengths`).
        batch_size: samples per batch.
        seed: shuffling seed (use a new one per epoch).
        window: batches per sorting window; larger windows pad less but mix less.
    """
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size = {batch_size}, window = {window}: both must be >= 1")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = window * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(
            chunk[b : b + batch_size] for b in range(0, len(chunk) - batch_size + 1, batch_size)
        )
    rng.shuffle(batches)
    return batches


class Encoded(NamedTuple):
    """Unpadded LM inputs of some rows (:meth:`GraphCollator.encode`): the layout's ids and
    slots before the target (:mod:`g4mm.model.layout`), the target ids, and which rows the
    input budget cut."""

    prompts: list[list[int]]
    slots: list[list[int]]
    targets: list[list[int]] | None
    truncated: list[bool]

    def lengths(self) -> list[int]:
        """LM tokens per row (input with its slots, + target)."""
        if self.targets is None:
            return [len(p) for p in self.prompts]
        return [len(p) + len(t) for p, t in zip(self.prompts, self.targets, strict=True)]

    def select(self, rows: Sequence[int]) -> Encoded:
        """The encodings of ``rows`` (indices), in that order."""
        targets = None if self.targets is None else [self.targets[i] for i in rows]
        return Encoded(
            [self.prompts[i] for i in rows], [self.slots[i] for i in rows], targets,
            [self.truncated[i] for i in rows],
        )  # fmt: skip


def _row_edges(
    row: Mapping[str, Any], position: int, kind: str, num_nodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` int64 arrays of a row's ``kind`` edges (local node indices), checked.

    Raises:
        ValueError: the two lists differ in length, or an index is outside
            ``[0, num_nodes)`` (corrupt sample: numpy would wrap a negative index round to a
            node the edge never touched); names the row's ``sample_id`` and ``kind``.
    """
    src = np.asarray(_as_list(row, f"{kind}_edge_src"), dtype=np.int64)
    dst = np.asarray(_as_list(row, f"{kind}_edge_dst"), dtype=np.int64)
    sid = row.get("sample_id")
    where = f"sample {sid!r}" if sid is not None else f"batch row {position} (no sample_id)"
    where = f"{where}, {kind} edges"
    if src.shape != dst.shape:
        raise ValueError(
            f"{where}: {kind}_edge_src has {src.size} entries but {kind}_edge_dst {dst.size}"
        )
    bad = ((src < 0) | (src >= num_nodes) | (dst < 0) | (dst >= num_nodes)).nonzero()[0]
    if bad.size:
        e = int(bad[0])
        raise ValueError(
            f"{where}: edge {e} ({int(src[e])} -> {int(dst[e])}) is outside the row's "
            f"{num_nodes} {kind} nodes [0, {num_nodes})"
        )
    return src, dst


def _pad(
    seqs: list[list[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, W), mask (B, W))``, W the longest sequence; prompts are padded on the left,
    targets on the right, as the tokenizer pads with that padding side."""
    width = max((len(seq) for seq in seqs), default=0)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for i, seq in enumerate(seqs):
        if seq:
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[i, span], mask[i, span] = seq, True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _has_features(
    rows: list[dict], values_field: str, kind: str, features: Mapping[str, np.ndarray]
) -> list[list[bool]]:
    """Per row, whether each node's cached feature exists (the nodes the adapter sees)."""
    return [
        [feature_key(kind, str(v)) in features for v in _as_list(row, values_field)]
        for row in rows
    ]


@dataclass
class GraphCollator:
    """Builds :class:`Graph4MMInputs` from sample rows.

    What the LM reads before the target comes from :mod:`g4mm.model.layout` (``layout``: the
    raw or pooled layout, the input budget ``max_input_tokens``, the adapter's soft-token
    groups): token ids with placeholder slots, LEFT-padded, and ``slot_index`` naming the soft
    token of each slot. Targets get EOS appended and are RIGHT-padded/truncated to
    ``max_target_tokens``. Node features come from ``text_features`` / ``image_features``
    (key -> vector); a node whose feature is missing is masked out (no slot either) and
    counted in ``missing_features``.

    Node caps (the layout's ``max_text_nodes`` / ``max_image_nodes``): a row holding more
    nodes of a modality keeps its first ones and the rest are cut, counted per modality in
    ``truncated_nodes``. The sample builder stores the nodes in a seeded random order (the
    target's own text first), so the cut ones are random neighbours, not the farthest hops;
    rows built with the same caps as the collator's are never cut. The row's edges that touch
    a cut node are dropped with it. Rows whose input the budget cut are counted in
    ``truncated_inputs``. The counters are read (and reset) by :meth:`drain_counts`.

    Shapes of the result: see :class:`Graph4MMInputs`; node widths are ``max_text_nodes`` and
    ``max_image_nodes`` (at least 1 column each).

    Raises (from a call):
        ValueError: a row's ``<kind>_edge_src`` and ``<kind>_edge_dst`` differ in length, or
            hold an index outside ``[0, number of <kind> nodes in the row)``; the message
            names the row's ``sample_id`` (or its position in the batch) and the modality.
    """

    tokenizer: Any
    text_features: Mapping[str, np.ndarray]
    image_features: Mapping[str, np.ndarray]
    text_dim: int
    image_dim: int
    layout: LayoutSpec
    max_target_tokens: int = 32
    with_targets: bool = True
    missing_features: dict[str, int] = field(default_factory=lambda: {"text": 0, "image": 0})
    truncated_nodes: dict[str, int] = field(default_factory=lambda: {"text": 0, "image": 0})
    truncated_inputs: int = 0

    @property
    def max_text_nodes(self) -> int:
        return self.layout.max_text_nodes

    @property
    def max_image_nodes(self) -> int:
        return self.layout.max_image_nodes

    def __call__(
        self,
        batch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        encoded: Encoded | None = None,
    ) -> Graph4MMInputs:
        """Collate ``batch``; ``encoded`` (its rows' :meth:`encode`, e.g. kept from computing
        :meth:`token_lengths`) saves tokenizing them again."""
        rows = rows_from_columns(batch)
        encoded = encoded if encoded is not None else self.encode(rows)
        if len(encoded.prompts) != len(rows):
            raise ValueError(f"encoded holds {len(encoded.prompts)} prompts for {len(rows)} rows")
        self.truncated_inputs += sum(encoded.truncated)
        prompt_ids, prompt_mask = _pad(encoded.prompts, self.tokenizer.pad_token_id, left=True)
        slot_index, _ = _pad(encoded.slots, -1, left=True)
        text = self._modality(rows, "text", "text_nodes", self.text_features, self.text_dim,
                              self.max_text_nodes)  # fmt: skip
        image = self._modality(rows, "image", "image_paths", self.image_features, self.image_dim,
                               self.max_image_nodes)  # fmt: skip
        inputs = Graph4MMInputs(
            prompt_ids, prompt_mask, text, image, slot_index=slot_index,
            cross_adj=self._cross_adj(rows),
        )  # fmt: skip
        if self.with_targets:
            assert encoded.targets is not None
            inputs.target_ids, inputs.target_mask = _pad(
                encoded.targets, self.tokenizer.pad_token_id
            )
        return inputs

    def encode(self, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Encoded:
        """Unpadded LM inputs per row as collated: the layout's ids and slots
        (:func:`g4mm.model.layout.build_layouts`; the tokenizer's BOS first), targets (when
        ``with_targets``, else None) + EOS, cut to ``max_target_tokens``."""
        rows = rows_from_columns(batch)
        tok = self.tokenizer
        layouts = build_layouts(
            rows, self.layout, tok,
            text_real=_has_features(rows, "text_nodes", "text", self.text_features),
            image_real=_has_features(rows, "image_paths", "image", self.image_features),
        )  # fmt: skip
        prompts = [lay.ids for lay in layouts]
        slots = [lay.slots for lay in layouts]
        truncated = [lay.truncated for lay in layouts]
        if not self.with_targets:
            return Encoded(prompts, slots, None, truncated)
        prefix = self.layout.target_prefix
        ids = tok([prefix + str(r.get("target_text") or "") for r in rows],
                  add_special_tokens=False)["input_ids"]  # fmt: skip
        targets = [[*seq, tok.eos_token_id][: self.max_target_tokens] for seq in ids]
        return Encoded(prompts, slots, targets, truncated)

    def drain_counts(self) -> dict[str, int]:
        """Return the counters accumulated since the last call and reset them to 0.

        Keys: ``"missing_features.text"``, ``"missing_features.image"`` (nodes masked out
        because their cached feature is missing), ``"truncated_nodes.text"``,
        ``"truncated_nodes.image"`` (nodes cut by ``max_text_nodes`` / ``max_image_nodes``)
        and ``"truncated_inputs"`` (rows whose LM input ``max_input_tokens`` cut).
        Each collator counts only the batches it collated itself (one per process / rank).
        """
        out: dict[str, int] = {}
        for name, counter in (
            ("missing_features", self.missing_features),
            ("truncated_nodes", self.truncated_nodes),
        ):
            for kind in sorted(counter):
                out[f"{name}.{kind}"] = counter[kind]
                counter[kind] = 0
        out["truncated_inputs"], self.truncated_inputs = self.truncated_inputs, 0
        return out

    def token_lengths(self, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[int]:
        """Real LM tokens per row as collated (input with its slots + target, both capped),
        for :func:`length_bucketed_batches`."""
        return self.encode(batch).lengths()

    def _cross_adj(self, rows: list[dict]) -> torch.Tensor:
        """(B, Np, Nt) bool: image j belongs to text node i (``image_owner``), within caps."""
        nt, np_ = max(1, self.max_text_nodes), max(1, self.max_image_nodes)
        adj = np.zeros((len(rows), np_, nt), dtype=bool)
        for r, row in enumerate(rows):
            for j, owner in enumerate(_as_list(row, "image_owner")[:np_]):
                if owner is not None and 0 <= owner < nt:
                    adj[r, j, owner] = True
        return torch.from_numpy(adj)

    def _modality(
        self,
        rows: list[dict],
        kind: str,
        values_field: str,
        features: Mapping[str, np.ndarray],
        dim: int,
        max_nodes: int,
    ) -> ModalityInputs:
        b, n = len(rows), max(1, max_nodes)
        feats = np.zeros((b, n, dim), dtype=np.float32)
        mask = np.zeros((b, n), dtype=bool)
        adj = np.zeros((b, n, n), dtype=bool)
        hops = np.zeros((b, n), dtype=np.int64)
        for i, row in enumerate(rows):
            values = _as_list(row, values_field)
            self.truncated_nodes[kind] += max(0, len(values) - n)
            for j, value in enumerate(values[:n]):
                vector = features.get(feature_key(kind, str(value)))
                if vector is None:
                    self.missing_features[kind] += 1
                    continue
                feats[i, j], mask[i, j] = vector, True
            row_hops = _as_list(row, f"{kind}_hops")[:n]
            hops[i, : len(row_hops)] = row_hops
            src, dst = _row_edges(row, i, kind, len(values))
            keep = (src < n) & (dst < n)  # in range: only edges to cut nodes go
            adj[i, dst[keep], src[keep]] = True  # attention convention: dst receives from src
        adj &= mask[:, :, None] & mask[:, None, :]
        return ModalityInputs(
            feats=torch.from_numpy(feats),
            mask=torch.from_numpy(mask),
            adj=torch.from_numpy(adj),
            hops=torch.from_numpy(hops * mask),
        )

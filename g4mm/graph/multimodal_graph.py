"""The multimodal graph: nodes carrying text and/or an image reference, joined by typed edges.

A node is a document section, a product, a caption... It may carry a text, an image reference
(a path or URL, never pixels), or both. Edges are typed (:class:`EdgeType`): text-text edges
join two nodes that both carry text, image-image edges two nodes that both carry an image, and
text-image edges join a text to an image (they only matter for reachability / hop distance).

Edges follow the PyG convention: ``edge_index[0]`` is the source, ``edge_index[1]`` the target.
An undirected relation is stored as two directed edges.

The graph is treated as immutable after construction: derived tensors (modality masks, CSR
adjacency) are computed once and cached on the instance.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.index import index2ptr
from torch_geometric.utils import coalesce

__all__ = ["EdgeType", "MultimodalGraph"]


class EdgeType(enum.IntEnum):
    """Type of an edge of a :class:`MultimodalGraph` (stored as ``int64`` in ``edge_type``)."""

    TEXT_TEXT = 0
    IMAGE_IMAGE = 1
    TEXT_IMAGE = 2

    @classmethod
    def parse(cls, value: EdgeType | str | int) -> EdgeType:
        """Parse an edge type from an enum member, its value or a string.

        Strings are the member names (any case, e.g. ``"text_text"``) or the short forms
        ``"t-t"``, ``"i-i"``, ``"t-i"`` / ``"i-t"`` (also without the dash).

        Raises:
            ValueError: if ``value`` names no edge type.
        """
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            key = _SHORT_EDGE_TYPES.get(key.replace("_", ""), key)
            if key in cls.__members__:
                return cls[key]
            raise ValueError(f"unknown edge type {value!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"unknown edge type {value!r}")
        return cls(value)  # raises ValueError for an unknown int


_SHORT_EDGE_TYPES = {"TT": "TEXT_TEXT", "II": "IMAGE_IMAGE", "TI": "TEXT_IMAGE", "IT": "TEXT_IMAGE"}


def _has_content(values: Sequence[str | None]) -> Tensor:
    """Bool ``[N]``: entry is a string that is non-empty after ``strip()``."""
    return torch.tensor([v is not None and bool(v.strip()) for v in values], dtype=torch.bool)


@dataclass(eq=False)
class MultimodalGraph:
    """A graph whose nodes carry text and/or an image reference, with typed directed edges.

    Args:
        node_ids: external node ids, unique; node ``i`` is ``node_ids[i]``.
        texts: ``[N]`` text of each node, ``None`` (or blank) when it has none.
        images: ``[N]`` image reference (path or URL) of each node, ``None`` when it has none.
        edge_index: ``LongTensor [2, E]``, source row 0, target row 1 (PyG convention).
        edge_type: ``LongTensor [E]``, values of :class:`EdgeType`.
        labels: optional ``LongTensor [N]`` class labels, ``-1`` = unlabeled. (default: ``None``)
        name: name used in error messages, e.g. the source file. (default: ``"graph"``)

    Raises:
        ValueError: on any inconsistency; the message names the graph, the field and the value.
    """

    node_ids: list[str]
    texts: list[str | None]
    images: list[str | None]
    edge_index: Tensor
    edge_type: Tensor
    labels: Tensor | None = None
    name: str = "graph"
    _has_text: Tensor = field(init=False, repr=False)
    _has_image: Tensor = field(init=False, repr=False)
    _csr_cache: dict[int | None, tuple[Tensor, Tensor]] = field(
        init=False, repr=False, default_factory=dict
    )

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        n = len(self.node_ids)
        self._check_nodes(n)
        self.edge_index = self._check_index_tensor("edge_index", self.edge_index, dim=2)
        if self.edge_index.size(0) != 2:
            self._fail(f"edge_index must have shape [2, E], got {list(self.edge_index.shape)}")
        num_edges = self.edge_index.size(1)
        self.edge_type = self._check_index_tensor("edge_type", self.edge_type, dim=1)
        if self.edge_type.numel() != num_edges:
            self._fail(
                f"edge_type has length {self.edge_type.numel()} "
                f"but edge_index has {num_edges} edges"
            )
        if self.labels is not None:
            self.labels = self._check_index_tensor("labels", self.labels, dim=1)
            if self.labels.numel() != n:
                self._fail(f"labels has length {self.labels.numel()} but node_ids has {n}")
            bad = (self.labels < -1).nonzero().view(-1)
            if bad.numel() > 0:
                i = int(bad[0])
                self._fail(f"labels[{i}] = {int(self.labels[i])} (must be >= -1; -1 = unlabeled)")
        self._has_text = _has_content(self.texts)
        self._has_image = _has_content(self.images)
        self._check_edges(n)

    def _fail(self, message: str) -> NoReturn:
        raise ValueError(f"{self.name}: {message}")

    def _check_nodes(self, n: int) -> None:
        for field_name in ("texts", "images"):
            values = getattr(self, field_name)
            if len(values) != n:
                self._fail(f"{field_name} has length {len(values)} but node_ids has {n}")
            for i, v in enumerate(values):
                if v is not None and not isinstance(v, str):
                    self._fail(f"{field_name}[{i}] must be a str or None, got {type(v).__name__}")
        seen: dict[str, int] = {}
        for i, node_id in enumerate(self.node_ids):
            if not isinstance(node_id, str):
                self._fail(f"node_ids[{i}] must be a str, got {node_id!r}")
            if node_id in seen:
                self._fail(f"duplicate node id {node_id!r} in node_ids (at {seen[node_id]}, {i})")
            seen[node_id] = i

    def _check_index_tensor(self, field_name: str, value: object, dim: int) -> Tensor:
        if not isinstance(value, Tensor):
            self._fail(f"{field_name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            self._fail(f"{field_name} must be an integer tensor, got dtype {value.dtype}")
        if value.dim() != dim:
            self._fail(f"{field_name} must be {dim}-dimensional, got shape {list(value.shape)}")
        return value.long()

    def _check_edges(self, n: int) -> None:
        src, dst = self.edge_index
        for row, nodes in (("source", src), ("target", dst)):
            bad = ((nodes < 0) | (nodes >= n)).nonzero().view(-1)
            if bad.numel() > 0:
                e = int(bad[0])
                self._fail(
                    f"edge_index {row} of edge {e} is {int(nodes[e])}, out of range [0, {n})"
                )
        bad = ((self.edge_type < 0) | (self.edge_type > max(EdgeType))).nonzero().view(-1)
        if bad.numel() > 0:
            e = int(bad[0])
            self._fail(f"edge_type[{e}] = {int(self.edge_type[e])} is not an EdgeType")
        for etype, has, modality in (
            (EdgeType.TEXT_TEXT, self._has_text, "text"),
            (EdgeType.IMAGE_IMAGE, self._has_image, "image"),
        ):
            bad_end = ~(has[src] & has[dst])
            bad = ((self.edge_type == etype) & bad_end).nonzero().view(-1)
            if bad.numel() > 0:
                e = int(bad[0])
                u, v = int(src[e]), int(dst[e])
                w = u if not bool(has[u]) else v
                self._fail(
                    f"edge_type[{e}] = {etype.name} but endpoint {self.node_ids[w]!r} "
                    f"(node {w}) of edge ({u}, {v}) has no {modality}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_edge_list(
        cls,
        node_ids: Sequence[str],
        texts: Sequence[str | None],
        images: Sequence[str | None],
        edges: Iterable[tuple[str, str, EdgeType | str]],
        *,
        undirected: bool = True,
        labels: Sequence[int] | Tensor | None = None,
        name: str = "graph",
    ) -> MultimodalGraph:
        """Build a graph from external ids and ``(src_id, dst_id, edge_type)`` triples.

        Each undirected edge is stored in both directions; exact duplicate
        ``(src, dst, type)`` edges are dropped. The stored edges are sorted by
        ``(src, dst, type)``.

        Raises:
            ValueError: for an unknown node id or edge type (naming the id and edge number),
                and for everything :class:`MultimodalGraph` rejects.
        """
        index = {node_id: i for i, node_id in enumerate(node_ids)}
        src: list[int] = []
        dst: list[int] = []
        types: list[int] = []
        for e, edge in enumerate(edges):
            if len(edge) != 3:
                raise ValueError(f"{name}: edge {e} must be (src_id, dst_id, type), got {edge!r}")
            u, v, t = edge
            for end in (u, v):
                if end not in index:
                    raise ValueError(f"{name}: edge {e} refers to unknown node id {end!r}")
            try:
                etype = EdgeType.parse(t)
            except ValueError as err:
                raise ValueError(f"{name}: edge {e} ({u!r}, {v!r}): {err}") from None
            src.append(index[u])
            dst.append(index[v])
            types.append(int(etype))
        edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, -1)
        edge_type = torch.tensor(types, dtype=torch.long)
        if undirected:
            edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
            edge_type = torch.cat([edge_type, edge_type])
        # Exact duplicates (src, dst, type): unique over columns sorts lexicographically.
        triples = torch.unique(torch.cat([edge_index, edge_type.view(1, -1)]), dim=1)
        if isinstance(labels, Tensor):
            label_tensor: Tensor | None = labels
        else:
            label_tensor = None if labels is None else torch.tensor(list(labels), dtype=torch.long)
        return cls(
            node_ids=list(node_ids),
            texts=list(texts),
            images=list(images),
            edge_index=triples[:2].contiguous(),
            edge_type=triples[2].contiguous(),
            labels=label_tensor,
            name=name,
        )

    # ------------------------------------------------------------------ views
    @property
    def num_nodes(self) -> int:
        """Number of nodes ``N``."""
        return len(self.node_ids)

    @property
    def num_edges(self) -> int:
        """Number of directed edges ``E`` (an undirected edge counts twice)."""
        return self.edge_index.size(1)

    @property
    def has_text(self) -> Tensor:
        """Bool ``[N]``: the node's text is not ``None`` and non-empty after ``strip()``."""
        return self._has_text

    @property
    def has_image(self) -> Tensor:
        """Bool ``[N]``: the node has a non-blank image reference."""
        return self._has_image

    def to_pyg(self) -> Data:
        """This graph as a :class:`torch_geometric.data.Data`.

        Attributes: ``edge_index [2, E]``, ``edge_type [E]``, ``num_nodes``,
        ``has_text [N]``, ``has_image [N]`` and ``y [N]`` when labels are set.
        """
        data = Data(
            edge_index=self.edge_index,
            edge_type=self.edge_type,
            num_nodes=self.num_nodes,
            has_text=self._has_text,
            has_image=self._has_image,
        )
        if self.labels is not None:
            data.y = self.labels
        return data

    def csr(self, edge_type: EdgeType | None = None) -> tuple[Tensor, Tensor]:
        """Cached CSR adjacency ``(rowptr [N + 1], col [nnz])``, rows sorted by source.

        With ``edge_type=None``: the undirected union over ALL edge types (each edge in both
        directions, duplicates merged), the neighbourhood used for BFS / hop distance.
        With an ``edge_type``: the directed edges of that type only, ``col`` holding the
        targets of the edges whose source is the row. Built once per graph and type.
        """
        key = None if edge_type is None else int(edge_type)
        cached = self._csr_cache.get(key)
        if cached is None:
            if key is None:
                ei = torch.cat([self.edge_index, self.edge_index.flip(0)], dim=1)
            else:
                ei = self.edge_index[:, self.edge_type == key]
            ei = coalesce(ei, num_nodes=self.num_nodes)  # sorted by (row, col), unique
            cached = (index2ptr(ei[0], self.num_nodes), ei[1].contiguous())
            self._csr_cache[key] = cached
        return cached

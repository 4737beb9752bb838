"""What the frozen LM reads: the subgraph's text, with the graph tokens placed among it.

The paper's Fig. 2 as one room of its own. Every variant's LM input is built here, from one
sample row (:data:`g4mm.data.schema.SAMPLE_SCHEMA`) and the adapter's soft-token groups
(:class:`TokenGroup`): token ids with placeholder slots, and for each slot the index of the
soft token written there (:meth:`g4mm.model.Graph4MM.forward` scatters them, as LLaVA writes
image features into its ``<image>`` placeholders). ``at_images`` and ``after_text`` differ only
in where the placeholders stand.

**Raw layout** (``model.context: raw``, the paper's model; ``k = model.tokens_per_image``)::

    <bos> lead <target's own text> <caption> <k graph tokens: image j> ...   its own images
          <next text node's text>  <caption> <k graph tokens: image j> ...   reading order
          ...                                                                 (budget)
          cue
          [<Nq graph tokens>]                                          after_text only
    <target> <eos>                                                     (loss on these only)

    e.g. WikiWeb2M: "summarize: " <section, summary removed> <caption> <4 tokens of its image>
                    <page> <other section> <caption> <4 tokens> ... ", summary:" <summary>
    (``after_text``: the captions without tokens; ", summary:" <Nq graph tokens> <summary>)

- text nodes: those of G_t within ``max_text_nodes``, the target's own first (its text with
  the target removed: ``text_segments`` holds what the LM reads of each node), then the rest
  by ``text_order`` (document order on WikiWeb2M, nearest hop first then index elsewhere);
- images: those of G_p within ``max_image_nodes`` that have a feature; each one's caption is
  read after its owner's text (``image_owner``; images owned by no node of G_t after all the
  text); under ``at_images`` its graph tokens follow its caption, under ``after_text`` all graph
  tokens stand after the text and its cue, right before the target. (Before the cue, a tiny
  LM pretrained 800 steps to copy a hint from there reproduced 12-32 % of the hint's visual
  words; right before the answer, 100 %, measured: a frozen LM reads soft tokens best next to
  what they should steer.);
- hop phrases (``model.hop_phrases``, Graph4MM variants only): every text node but the
  target's own opens with :data:`HOP_PHRASE` (``" context from 2-hop neighbours:"``), the
  prompt route by which text keeps its structure (the paper's ablation discussion); the phrase
  counts against the budget as part of that node's text;
- budget: at most ``max_input_tokens`` tokens before the target (text and slots). The cue and
  the ``after_text`` slots are reserved first; the target's own text is cut only when it and
  its own images alone exceed what is left (its images keep their slots); the other nodes are
  added in reading order and the first that does not fit is cut (its text to the room left, a
  slot run whole or not at all) and ends the input (counted as truncated).

**Pooled layout** (``model.context: pooled``, an ablation: the LM reads no neighbour text)::

    <bos> prompt <graph tokens of every real node or query>   (prompt cut to fit the budget)

which is the sequence ``[prompt ; soft tokens ; target]`` of the adapters that read
neighbours only as pooled vectors. Tokens of absent nodes get no slot.

Every text piece is tokenised on its own, without special tokens (as the official code
tokenises each section); the tokenizer's own prefix (``<bos>``: :func:`special_prefix`)
opens the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HOP_PHRASE",
    "LayoutSpec",
    "LayoutTokens",
    "TokenGroup",
    "TokenTable",
    "build_layouts",
    "describe",
    "layout_text",
    "special_prefix",
]


@dataclass(frozen=True)
class TokenGroup:
    """One group of an adapter's soft tokens (its output (B, S, D) is its groups in order).

    Args:
        name: what the group is (``"queries"``, ``"image"``, ``"text"``, ``"image_gnn"``...).
        per: ``"image"`` / ``"text"``: one run of ``count`` tokens per node of that modality
            (node j's run is tokens ``j * count .. (j + 1) * count - 1`` of the group); None:
            one run for the whole sample.
        count: tokens per run.
    """

    name: str
    per: str | None
    count: int


@dataclass(frozen=True)
class TokenTable:
    """The token index of every run of ``groups`` for node widths ``num_text`` / ``num_image``
    (the collator's padded widths, which the adapter's outputs share)."""

    groups: tuple[TokenGroup, ...]
    num_text: int
    num_image: int

    def _runs(self, group: TokenGroup) -> int:
        return {"image": self.num_image, "text": self.num_text, None: 1}[group.per]

    @property
    def size(self) -> int:
        """S: soft tokens per sample."""
        return sum(g.count * self._runs(g) for g in self.groups)

    def run(self, group_index: int, node: int = 0) -> range:
        """Token indices of node ``node``'s run of group ``group_index``."""
        offset = sum(g.count * self._runs(g) for g in self.groups[:group_index])
        group = self.groups[group_index]
        return range(offset + node * group.count, offset + (node + 1) * group.count)

    def label(self, index: int) -> str:
        """What soft token ``index`` stands for, e.g. ``"image 2"`` or ``"queries"``."""
        offset = 0
        for group in self.groups:
            width = group.count * self._runs(group)
            if index < offset + width:
                if group.per is None:
                    return group.name
                node = (index - offset) // group.count
                kind = group.per if group.name == group.per else f"{group.name}, {group.per}"
                return f"{kind} {node}"
            offset += width
        raise IndexError(f"soft token {index} is outside a table of {self.size}")


@dataclass(frozen=True)
class LayoutSpec:
    """How rows become LM inputs: ``model.context``, ``model.token_placement``,
    ``data.max_input_tokens``, the node caps, and the adapter's soft-token groups."""

    context: str
    placement: str
    max_input_tokens: int
    max_text_nodes: int
    max_image_nodes: int
    groups: tuple[TokenGroup, ...]
    hop_phrases: bool = False

    def __post_init__(self) -> None:
        if self.context not in ("raw", "pooled"):
            raise ValueError(f"layout context = {self.context!r}: expected raw|pooled")
        if self.placement not in ("at_images", "after_text"):
            raise ValueError(f"token placement = {self.placement!r}: expected at_images|after_text")

    @classmethod
    def from_config(cls, cfg: Any, groups: Sequence[TokenGroup]) -> LayoutSpec:
        """From an ``ExperimentConfig`` and the adapter's ``token_groups``; hop phrases only
        where the variant has structure (:data:`g4mm.config.GRAPH4MM_VARIANTS`)."""
        from g4mm.config import GRAPH4MM_VARIANTS

        return cls(
            context=cfg.model.context,
            placement=cfg.model.token_placement,
            max_input_tokens=cfg.data.max_input_tokens,
            max_text_nodes=cfg.data.max_text_nodes,
            max_image_nodes=cfg.data.max_image_nodes,
            groups=tuple(groups),
            hop_phrases=bool(cfg.model.hop_phrases) and cfg.model.variant in GRAPH4MM_VARIANTS,
        )

    @property
    def table(self) -> TokenTable:
        """The adapter's token table at the collator's widths (at least one column each)."""
        return TokenTable(self.groups, max(1, self.max_text_nodes), max(1, self.max_image_nodes))

    @property
    def target_prefix(self) -> str:
        """Put before the target's text when it is tokenised: the raw layout's cue ends
        mid-sentence (``", summary:"``), so the target continues it after a space."""
        return " " if self.context == "raw" else ""


@dataclass
class LayoutTokens:
    """One row's LM input before the target.

    Attributes:
        ids: token ids; at a slot, a placeholder (the tokenizer's pad id).
        slots: per id, the soft token written there (an index into the adapter's output), or
            -1 for an ordinary token.
        truncated: whether the budget cut something that the layout would have read.
    """

    ids: list[int]
    slots: list[int]
    truncated: bool = False


@dataclass
class _Run:
    """A run of slots: soft tokens ``tokens`` of the table, for image ``node`` (None: not
    per image)."""

    tokens: range
    node: int | None = None


@dataclass
class _Image:
    """An image's caption and its runs: placed whole or not at all."""

    pieces: list[str | _Run]


@dataclass
class _Block:
    """A text node's text, then its images, in reading order."""

    pieces: list[str | _Image] = field(default_factory=list)


#: What opens a neighbour's text under ``model.hop_phrases`` (``{hop}``: its hop distance).
HOP_PHRASE = " context from {hop}-hop neighbours:"


def _as_list(row: Mapping[str, Any], key: str) -> list:
    value = row.get(key)
    return [] if value is None else list(value)


def _present(values: Sequence[Any], cap: int, real: Sequence[bool] | None) -> list[int]:
    """Local node indices kept: under the cap and, when ``real`` is given, marked real."""
    kept = range(min(len(values), cap))
    return [i for i in kept if real is None or (i < len(real) and real[i])]


def _raw_blocks(
    row: Mapping[str, Any],
    spec: LayoutSpec,
    image_real: Sequence[bool] | None,
    slots_at_images: bool,
) -> tuple[list[_Block], list[_Run]]:
    """The raw layout's blocks in reading order (the target's first) and the runs that go
    after the text."""
    table = spec.table
    segments = _as_list(row, "text_segments")
    order = _as_list(row, "text_order") or list(range(len(segments)))
    hops = _as_list(row, "text_hops")
    texts = _present(segments, spec.max_text_nodes, None)
    own = bool(texts) and bool(hops) and hops[0] == 0  # the target's own text node is node 0
    reading = ([0] if own else []) + sorted(
        (i for i in texts if not (own and i == 0)), key=lambda i: (order[i], i)
    )
    captions = _as_list(row, "image_captions")
    owners = _as_list(row, "image_owner")
    images = _present(_as_list(row, "image_paths"), spec.max_image_nodes, image_real)
    image_groups = [g for g, group in enumerate(spec.groups) if group.per == "image"]
    after: list[_Run] = []
    for g, group in enumerate(spec.groups):
        if group.per is None:
            after.append(_Run(table.run(g)))
        elif group.per == "image" and not slots_at_images:
            after.extend(_Run(table.run(g, j), j) for j in images)
        elif group.per == "text":
            raise ValueError(f"the raw layout reads text nodes as text: group {group.name!r}")

    def image_pieces(j: int) -> list[_Image]:
        pieces: list[str | _Run] = []
        caption = str(captions[j]).strip() if j < len(captions) and captions[j] else ""
        if caption:
            pieces.append(" " + caption)
        if slots_at_images:
            pieces.extend(_Run(table.run(g, j), j) for g in image_groups)
        return [_Image(pieces)] if pieces else []

    by_owner: dict[int, list[int]] = {}
    for j in images:
        owner = int(owners[j]) if j < len(owners) and owners[j] is not None else -1
        by_owner.setdefault(owner if owner in texts else -1, []).append(j)
    lead = str(row.get("lead") or "")
    blocks = []
    for position, i in enumerate(reading):
        text = str(segments[i] or "").strip()
        if position == 0 and own:
            first = lead + text
        elif text and spec.hop_phrases and i < len(hops):
            first = HOP_PHRASE.format(hop=int(hops[i])) + " " + text
        else:
            first = " " + text if text else ""
        block = _Block([first] if first else [])
        for j in by_owner.get(i, []):
            block.pieces.extend(image_pieces(j))
        blocks.append(block)
    if not own:  # the target has no text of its own in G_t: the lead opens the input alone
        blocks.insert(0, _Block([lead] if lead else []))
    orphans: list[str | _Image] = [p for j in by_owner.get(-1, []) for p in image_pieces(j)]
    if orphans:
        blocks.append(_Block(orphans))
    return blocks, after


def _pooled_blocks(
    row: Mapping[str, Any],
    spec: LayoutSpec,
    text_real: Sequence[bool] | None,
    image_real: Sequence[bool] | None,
) -> tuple[list[_Block], list[_Run]]:
    """``[prompt ; every run of the real nodes and queries]``: the prompt is the only block."""
    table = spec.table
    texts = _present(_as_list(row, "text_nodes"), spec.max_text_nodes, text_real)
    images = _present(_as_list(row, "image_paths"), spec.max_image_nodes, image_real)
    after = []
    for g, group in enumerate(spec.groups):
        nodes = {"image": images, "text": texts, None: [0]}[group.per]
        after.extend(_Run(table.run(g, j)) for j in nodes)
    return [_Block([str(row.get("prompt") or "")])], after


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text (OPT, LLaMA: ``[bos]``; GPT-2: ``[]``)."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[len(with_special) - len(plain) :] != plain:
        raise ValueError(
            f"{type(tokenizer).__name__} adds special tokens after a text ({with_special} vs "
            f"{plain}): the layout only knows tokenizers that add them in front"
        )
    return with_special[: len(with_special) - len(plain)]


#: A text cut to fewer tokens than this is left out instead (the official code stops at 2).
MIN_CUT = 3


def _assemble(
    blocks: list[_Block], after: list[_Run], cue: list[int], tokens: Mapping[str, list[int]],
    prefix: list[int], spec: LayoutSpec, pad_id: int,
) -> LayoutTokens:
    """``prefix``, the blocks in order within the budget (module docstring), ``after``, cue."""
    ids, slots = list(prefix), [-1] * len(prefix)

    def size(piece: str | _Run | _Image) -> int:
        if isinstance(piece, _Image):
            return sum(map(size, piece.pieces))
        return len(piece.tokens) if isinstance(piece, _Run) else len(tokens[piece])

    def add(piece: str | _Run | _Image, limit: int | None = None) -> None:
        if isinstance(piece, _Image):
            for part in piece.pieces:
                add(part)
        elif isinstance(piece, _Run):
            ids.extend([pad_id] * len(piece.tokens))
            slots.extend(piece.tokens)
        else:
            values = tokens[piece][:limit]
            ids.extend(values)
            slots.extend([-1] * len(values))

    room = spec.max_input_tokens - len(prefix) - len(cue) - sum(len(r.tokens) for r in after)
    truncated = False
    own, rest = (blocks[0].pieces, blocks[1:]) if blocks else ([], [])
    text, images = (own[0], own[1:]) if own and isinstance(own[0], str) else (None, own)
    while images and sum(map(size, images)) > room:  # its images alone exceed the budget
        images, truncated = images[:-1], True
    if text is not None:
        keep = max(0, room - sum(map(size, images)))
        truncated |= size(text) > keep
        add(text, keep)
        room -= min(size(text), keep)
    for piece in images:
        add(piece)
        room -= size(piece)
    for block in rest:
        for piece in block.pieces:
            need = size(piece)
            if need > room:
                if isinstance(piece, str) and room >= MIN_CUT:
                    add(piece, room)
                return _closed(ids, slots, after, cue, add, truncated=True)
            add(piece)
            room -= need
    return _closed(ids, slots, after, cue, add, truncated)


def _closed(ids, slots, after, cue, add, truncated: bool) -> LayoutTokens:
    ids.extend(cue)
    slots.extend([-1] * len(cue))
    for run in after:
        add(run)
    return LayoutTokens(ids, slots, truncated)


def build_layouts(
    rows: Sequence[Mapping[str, Any]],
    spec: LayoutSpec,
    tokenizer: Any,
    text_real: Sequence[Sequence[bool]] | None = None,
    image_real: Sequence[Sequence[bool]] | None = None,
) -> list[LayoutTokens]:
    """The LM input before the target of every row (module docstring).

    Args:
        rows: sample rows.
        spec: the layout and the adapter's token groups.
        tokenizer: the LM's tokenizer (its pad id marks slots).
        text_real, image_real: per row, which nodes have a feature (absent ones get no
            slot and, for images, no caption); None = every node under the caps.
    """
    if spec.max_input_tokens < 1:
        raise ValueError(f"max_input_tokens = {spec.max_input_tokens}: must be >= 1")
    parts = []
    for r, row in enumerate(rows):
        images = None if image_real is None else image_real[r]
        if spec.context == "raw":
            blocks, after = _raw_blocks(row, spec, images, spec.placement == "at_images")
            cue = str(row.get("cue") or "")
        else:
            texts = None if text_real is None else text_real[r]
            blocks, after = _pooled_blocks(row, spec, texts, images)
            cue = ""
        parts.append((blocks, after, cue))
    texts = sorted({t for blocks, _, _ in parts for t in _texts(blocks)} | {c for *_, c in parts})
    tokens = dict(zip(texts, _ids(tokenizer, texts), strict=True))
    prefix = special_prefix(tokenizer)
    pad = tokenizer.pad_token_id
    return [
        _assemble(blocks, after, tokens[cue], tokens, prefix, spec, pad)
        for blocks, after, cue in parts
    ]


def _texts(blocks: list[_Block]) -> list[str]:
    """Every text piece of ``blocks`` (texts and captions)."""
    out = []
    for block in blocks:
        for piece in block.pieces:
            parts = piece.pieces if isinstance(piece, _Image) else [piece]
            out.extend(p for p in parts if isinstance(p, str))
    return out


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text without special tokens (one batch call; ``""`` has none)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def layout_text(
    row: Mapping[str, Any], spec: LayoutSpec, fill: Callable[[int | None], str]
) -> str:
    """The raw layout of ``row`` as plain text, every run of slots replaced by
    ``fill(image index)`` (``fill(None)`` for a run that is not per image), no budget and no
    special tokens: the tiny LM's copy documents (:func:`g4mm.data.synthetic.lm_copy_documents`)
    are pretrained on what the layout will put before it, words where the graph tokens go."""
    if spec.context != "raw":
        raise ValueError("layout_text renders the raw layout")
    blocks, after = _raw_blocks(row, spec, None, spec.placement == "at_images")

    def render(piece: str | _Run | _Image) -> str:
        if isinstance(piece, _Image):
            return "".join(map(render, piece.pieces))
        return piece if isinstance(piece, str) else fill(piece.node)

    body = "".join(render(p) for block in blocks for p in block.pieces)
    return body + str(row.get("cue") or "") + "".join(render(r) for r in after)


def describe(ids: Sequence[int], slots: Sequence[int], table: TokenTable, tokenizer: Any) -> str:
    """The LM input decoded, each run of slots as ``<k graph tokens: image j>``."""
    out: list[str] = []
    start = 0
    while start < len(ids):
        end = start
        if slots[start] < 0:
            while end < len(ids) and slots[end] < 0:
                end += 1
            out.append(tokenizer.decode(list(ids[start:end])))
        else:
            label = table.label(slots[start])
            while end < len(ids) and slots[end] >= 0 and table.label(slots[end]) == label:
                end += 1
            out.append(f"<{end - start} graph tokens: {label}>")
        start = end
    return "".join(out)

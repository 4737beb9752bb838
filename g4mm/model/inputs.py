"""The batch contract between the data layer and the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class ModalityInputs:
    """One modality's subgraphs for a batch, densely padded.

    Shapes:
        feats (B, N, F) frozen-encoder features; mask (B, N) bool, True for real nodes;
        adj (B, N, N) bool with ``adj[b, i, j]`` True iff node i receives from node j (no
        self-loops needed); hops (B, N) long, BFS distance of each node to the target.
    """

    feats: Tensor
    mask: Tensor
    adj: Tensor
    hops: Tensor

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> ModalityInputs:
        """A copy with ``fn`` applied to every tensor."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> ModalityInputs:
        return self.map_tensors(lambda t: t.to(device))


@dataclass
class Graph4MMInputs:
    """A batch for :class:`g4mm.model.Graph4MM`.

    The LM sequence is ``[prompt ; target]``, where the prompt is what the layout
    (:mod:`g4mm.model.layout`) builds: text tokens with placeholder slots, into which the
    model writes the adapter's soft tokens (``slot_index``). The prompt is LEFT-padded and the
    target RIGHT-padded, so every sample's targets sit at the same positions.

    Shapes:
        prompt_ids (B, P) long, prompt_mask (B, P) bool; text, image: :class:`ModalityInputs`;
        target_ids (B, T) long and target_mask (B, T) bool, or None for generation;
        slot_index (B, P) long: at a slot, the index of the soft token written there (into
        the adapter's (B, S, D) output), -1 at an ordinary token and at padding;
        cross_adj (B, Np, Nt) bool: image node j belongs to text node i (its own node or its
        TEXT_IMAGE neighbour), or None (no such edges known).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    text: ModalityInputs
    image: ModalityInputs
    target_ids: Tensor | None = None
    target_mask: Tensor | None = None
    slot_index: Tensor | None = None
    cross_adj: Tensor | None = None

    def __post_init__(self) -> None:
        if self.slot_index is None:  # no slots: the soft tokens would never reach the LM
            self.slot_index = torch.full_like(self.prompt_ids, -1)

    @property
    def batch_size(self) -> int:
        return self.prompt_ids.shape[0]

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Graph4MMInputs:
        """A copy with ``fn`` applied to every tensor (absent targets stay None)."""

        def apply(value: Tensor | None) -> Tensor | None:
            return fn(value) if value is not None else None

        return Graph4MMInputs(
            prompt_ids=fn(self.prompt_ids),
            prompt_mask=fn(self.prompt_mask),
            text=self.text.map_tensors(fn),
            image=self.image.map_tensors(fn),
            target_ids=apply(self.target_ids),
            target_mask=apply(self.target_mask),
            slot_index=apply(self.slot_index),
            cross_adj=apply(self.cross_adj),
        )

    def to(self, device: torch.device | str) -> Graph4MMInputs:
        return self.map_tensors(lambda t: t.to(device))

    def tensors(self) -> list[Tensor]:
        """Every tensor of the batch in a fixed order (prompt, target, then each modality's
        fields), e.g. to copy one batch into another's buffers of the same shapes."""
        flat = [self.prompt_ids, self.prompt_mask, self.slot_index]
        if self.target_ids is not None and self.target_mask is not None:
            flat += [self.target_ids, self.target_mask]
        for modality in (self.text, self.image):
            flat += [getattr(modality, f.name) for f in fields(modality)]
        if self.cross_adj is not None:
            flat.append(self.cross_adj)
        return flat

    def padded_to(self, prompt_width: int, target_width: int) -> Graph4MMInputs:
        """The same batch with prompts LEFT-padded to ``prompt_width`` columns and targets
        RIGHT-padded to ``target_width`` (ids 0, mask False), so differently sized batches can
        share one shape. The model's loss and target logits at real positions do not change:
        padding is masked out of every attention, position and loss. Shapes: prompt (B, P) ->
        (B, prompt_width); target (B, T) -> (B, target_width)."""
        if self.target_ids is None or self.target_mask is None:
            raise ValueError("padded_to needs a batch with targets")
        extra_p = prompt_width - self.prompt_ids.shape[1]
        extra_t = target_width - self.target_ids.shape[1]
        if extra_p < 0 or extra_t < 0:
            raise ValueError(
                f"padded_to({prompt_width}, {target_width}) is narrower than the batch "
                f"(prompt {self.prompt_ids.shape[1]}, target {self.target_ids.shape[1]})"
            )
        if extra_p == 0 and extra_t == 0:
            return self

        def pad(t: Tensor, left: int, right: int, value: int = 0) -> Tensor:
            return torch.nn.functional.pad(t, (left, right), value=value)

        return replace(
            self,
            prompt_ids=pad(self.prompt_ids, extra_p, 0),
            prompt_mask=pad(self.prompt_mask, extra_p, 0),
            slot_index=pad(self.slot_index, extra_p, 0, value=-1),
            target_ids=pad(self.target_ids, 0, extra_t),
            target_mask=pad(self.target_mask, 0, extra_t),
        )

    def append_slots(self, slots: Sequence[Sequence[int]], pad_id: int) -> Graph4MMInputs:
        """The batch with row b's soft tokens ``slots[b]`` (indices into the adapter's output)
        placed right after its prompt, the pooled layout of :mod:`g4mm.model.layout`: for
        batches not built by the collator (benchmarks, tests). Shapes: prompt (B, P) ->
        (B, P + max_b |slots[b]|)."""
        width = self.prompt_ids.shape[1] + max((len(s) for s in slots), default=0)
        ids = torch.full((self.batch_size, width), pad_id, dtype=self.prompt_ids.dtype)
        mask = torch.zeros((self.batch_size, width), dtype=torch.bool)
        index = torch.full((self.batch_size, width), -1, dtype=torch.long)
        for b, row_slots in enumerate(slots):
            keep = self.prompt_mask[b].bool()
            real_ids, real_slots = self.prompt_ids[b, keep], self.slot_index[b, keep]
            n, k = real_ids.numel(), len(row_slots)
            ids[b, width - n - k : width - k] = real_ids
            index[b, width - n - k : width - k] = real_slots
            index[b, width - k :] = torch.tensor(list(row_slots), dtype=torch.long)
            mask[b, width - n - k :] = True
        return replace(self, prompt_ids=ids, prompt_mask=mask, slot_index=index)

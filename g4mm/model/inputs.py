"""The batch contract between the data layer and the model."""

from __future__ import annotations

from collections.abc import Callable
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

    The LM sequence is ``[prompt ; graph tokens ; target]``: the prompt is LEFT-padded and the
    target RIGHT-padded, so every sample's graph tokens and targets sit at the same positions.

    Shapes:
        prompt_ids (B, P) long, prompt_mask (B, P) bool; text, image: :class:`ModalityInputs`;
        target_ids (B, T) long and target_mask (B, T) bool, or None for generation.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    text: ModalityInputs
    image: ModalityInputs
    target_ids: Tensor | None = None
    target_mask: Tensor | None = None

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
        )

    def to(self, device: torch.device | str) -> Graph4MMInputs:
        return self.map_tensors(lambda t: t.to(device))

    def tensors(self) -> list[Tensor]:
        """Every tensor of the batch in a fixed order (prompt, target, then each modality's
        fields), e.g. to copy one batch into another's buffers of the same shapes."""
        flat = [self.prompt_ids, self.prompt_mask]
        if self.target_ids is not None and self.target_mask is not None:
            flat += [self.target_ids, self.target_mask]
        for modality in (self.text, self.image):
            flat += [getattr(modality, f.name) for f in fields(modality)]
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

        def pad(t: Tensor, left: int, right: int) -> Tensor:
            return torch.nn.functional.pad(t, (left, right), value=0)

        return replace(
            self,
            prompt_ids=pad(self.prompt_ids, extra_p, 0),
            prompt_mask=pad(self.prompt_mask, extra_p, 0),
            target_ids=pad(self.target_ids, 0, extra_t),
            target_mask=pad(self.target_mask, 0, extra_t),
        )

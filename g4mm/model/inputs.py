"""The batch contract between the data layer and the model."""

from __future__ import annotations

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

    def to(self, device: torch.device | str) -> ModalityInputs:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


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

    def to(self, device: torch.device | str) -> Graph4MMInputs:
        def move(value):
            return value.to(device) if value is not None else None

        return Graph4MMInputs(
            prompt_ids=move(self.prompt_ids),
            prompt_mask=move(self.prompt_mask),
            text=self.text.to(device),
            image=self.image.to(device),
            target_ids=move(self.target_ids),
            target_mask=move(self.target_mask),
        )

"""Graph4MM's model: hop attention, MM-QFormer, adapters, baselines and the LM wrapper.

Ray-free by design: this package runs in a plain Python process (also on a GPU box without Ray).
"""

from g4mm.model.adapters import GRAPH4MM_VARIANTS, Graph4MMAdapter, StructureEncoder
from g4mm.model.backbones import (
    BACKBONES,
    BackboneNotFoundError,
    load_lm,
    load_vision,
    resolve_backbone,
)
from g4mm.model.baselines import BASELINE_VARIANTS, ConcatAdapter, GNNConcatAdapter
from g4mm.model.encoders import mean_pooled_text_features, pooled_image_features
from g4mm.model.graph4mm import VARIANTS, Graph4MM, Graph4MMOutput, build_adapter
from g4mm.model.hop_attention import (
    HopAwareAttention,
    HopDiffusedAttention,
    diffusion_coefficients,
)
from g4mm.model.inputs import Graph4MMInputs, ModalityInputs
from g4mm.model.qformer import MaskedAttention, MMQFormer, MMQFormerLayer

__all__ = [
    "BACKBONES",
    "BASELINE_VARIANTS",
    "GRAPH4MM_VARIANTS",
    "VARIANTS",
    "BackboneNotFoundError",
    "ConcatAdapter",
    "GNNConcatAdapter",
    "Graph4MM",
    "Graph4MMAdapter",
    "Graph4MMInputs",
    "Graph4MMOutput",
    "HopAwareAttention",
    "HopDiffusedAttention",
    "MMQFormer",
    "MMQFormerLayer",
    "MaskedAttention",
    "ModalityInputs",
    "StructureEncoder",
    "build_adapter",
    "diffusion_coefficients",
    "load_lm",
    "load_vision",
    "mean_pooled_text_features",
    "pooled_image_features",
    "resolve_backbone",
]

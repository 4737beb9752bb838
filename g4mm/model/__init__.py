"""Graph4MM's model: hop attention, MM-QFormer, adapters, baselines and the LM wrapper.

Ray-free by design: this package runs in a plain Python process (also on a GPU box without Ray).

Exports resolve lazily (PEP 562): importing a submodule (e.g. the backbone registry, which the
preprocessing cache key needs) does not import torch_geometric, transformers and the rest.
"""

from __future__ import annotations

from g4mm._lazy import lazy_exports

_EXPORTS = {
    "GRAPH4MM_VARIANTS": "g4mm.model.adapters",
    "Graph4MMAdapter": "g4mm.model.adapters",
    "StructureEncoder": "g4mm.model.adapters",
    "BACKBONES": "g4mm.model.backbones",
    "BackboneNotFoundError": "g4mm.model.backbones",
    "load_lm": "g4mm.model.backbones",
    "load_tokenizer": "g4mm.model.backbones",
    "load_vision": "g4mm.model.backbones",
    "resolve_backbone": "g4mm.model.backbones",
    "BASELINE_VARIANTS": "g4mm.model.baselines",
    "ConcatAdapter": "g4mm.model.baselines",
    "GNNConcatAdapter": "g4mm.model.baselines",
    "ImageTokenAdapter": "g4mm.model.baselines",
    "MMGLGNNAdapter": "g4mm.model.baselines",
    "NoTokens": "g4mm.model.baselines",
    "mean_pooled_text_features": "g4mm.model.encoders",
    "pooled_image_features": "g4mm.model.encoders",
    "VARIANTS": "g4mm.model.graph4mm",
    "Graph4MM": "g4mm.model.graph4mm",
    "Graph4MMOutput": "g4mm.model.graph4mm",
    "adapter_token_groups": "g4mm.model.graph4mm",
    "build_adapter": "g4mm.model.graph4mm",
    "HopAwareAttention": "g4mm.model.hop_attention",
    "HopDiffusedAttention": "g4mm.model.hop_attention",
    "diffusion_coefficients": "g4mm.model.hop_attention",
    "Graph4MMInputs": "g4mm.model.inputs",
    "ModalityInputs": "g4mm.model.inputs",
    "LayoutSpec": "g4mm.model.layout",
    "TokenGroup": "g4mm.model.layout",
    "build_layouts": "g4mm.model.layout",
    "MaskedAttention": "g4mm.model.qformer",
    "MMQFormer": "g4mm.model.qformer",
    "MMQFormerLayer": "g4mm.model.qformer",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

"""Graph4MM: multimodal graph learning with Hop-Diffused Attention and MM-QFormer.

Subpackages ``g4mm.model``, ``g4mm.graph``, ``g4mm.data`` and ``g4mm.eval`` are Ray-free; Ray
lives in ``g4mm.pipeline``, ``g4mm.train`` (its ``ray_*`` modules), ``jobs/`` and ``tuning/``.
"""

__version__ = "0.1.0"

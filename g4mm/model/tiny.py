"""Tiny offline backbones in Hugging Face format: a BPE tokenizer, a small causal LM, a ViT.

Nothing here downloads anything. The artefacts are saved with ``save_pretrained`` and loaded
back through :mod:`g4mm.model.backbones` exactly like ``facebook/opt-125m`` would be.

Run ``python -m g4mm.model.tiny --help`` to build them into an artifact directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

# The PIL image processor by its own name where transformers has one (5.x): there the plain
# name needs torchvision, which the CPU install lacks, and asking for it prints a fallback
# warning on every run. Same processing either way (the fallback is this class).
CLIPImageProcessor = (
    transformers.CLIPImageProcessorPil
    if hasattr(transformers, "CLIPImageProcessorPil")
    else transformers.CLIPImageProcessor
)

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``; prepends ``<s>`` like OPT's tokenizer does."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
    )


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_opt(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
) -> OPTForCausalLM:
    """A randomly initialised OPT-architecture LM sized for CPU work."""
    config = OPTConfig(
        hidden_size=hidden_size,
        word_embed_proj_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        ffn_dim=4 * hidden_size,
        max_position_embeddings=max_positions,
        dropout=0.0,
        attention_dropout=0.0,
        **_special_ids(tokenizer),
    )
    return OPTForCausalLM(config)


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA-architecture LM (RoPE, GQA) sized for CPU work."""
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **_special_ids(tokenizer),
    )
    return LlamaForCausalLM(config)


def tiny_clip_vision(
    image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2
) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """A randomly initialised CLIP ViT (pooled output = post-LN CLS) and its image processor."""
    config = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        projection_dim=hidden_size,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return CLIPVisionModel(config), processor


def save_tiny_backbones(
    artifact_dir: str | Path, corpus: Iterable[str], image_size: int = 32, seed: int = 0
) -> dict[str, Path]:
    """Train the tokenizer on ``corpus``, build the tiny LM and ViT, ``save_pretrained`` both.

    Returns the directories, which :func:`g4mm.model.backbones.resolve_backbone` finds under
    the names ``tiny`` (lm) and ``tiny`` (vision).
    """
    import torch

    torch.manual_seed(seed)
    root = Path(artifact_dir) / "backbones"
    lm_dir, vision_dir = root / "tiny-lm", root / "tiny-vision"
    tokenizer = train_tokenizer(corpus)
    tiny_opt(tokenizer).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    vision, processor = tiny_clip_vision(image_size)
    vision.save_pretrained(vision_dir)
    processor.save_pretrained(vision_dir)
    return {"lm": lm_dir, "vision": vision_dir}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the tiny offline backbones (tokenizer, OPT-style LM, CLIP ViT)."
    )
    parser.add_argument("--artifact-dir", default="artifacts", help="where backbones/ goes")
    parser.add_argument(
        "--corpus", type=Path, help="text file, one document per line, to train the tokenizer"
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.corpus is None:
        parser.error("--corpus is required (the preprocess job passes the generated corpus)")
    lines = args.corpus.read_text(encoding="utf-8").splitlines()
    dirs = save_tiny_backbones(args.artifact_dir, lines, args.image_size, args.seed)
    for kind, path in dirs.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()

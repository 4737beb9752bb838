"""Build the tiny offline backbones from a dataset's own corpus, once, into the artifact dir.

The tokenizer is trained on the corpus, then a small OPT-architecture LM is pretrained briefly
on it (next-token prediction over packed 64-token chunks), so the frozen LM is a language model
of the domain rather than random weights. The vision encoder is a small CLIP ViT pretrained
briefly to recognise colour, shape, count and texture on freshly rendered images (never the
dataset's own images), the role CLIP's pretraining plays for the paper. Both are saved with
``save_pretrained`` and then loaded through the backbone registry like any HF checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from g4mm.data.synthetic import (
    COLOURS,
    PRODUCT_COLOURS,
    SHAPES,
    TEXTURES,
    random_render_attributes,
    render_image,
)
from g4mm.model.backbones import BACKBONES
from g4mm.model.tiny import tiny_clip_vision, tiny_opt, train_tokenizer

log = logging.getLogger(__name__)


def pretrain_lm(
    model: torch.nn.Module,
    token_ids: list[int],
    steps: int = 300,
    seq_len: int = 64,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Next-token pretraining on random windows of the packed corpus; returns the losses."""
    data = torch.tensor(token_ids, dtype=torch.long)
    if data.numel() <= seq_len + 1:
        raise ValueError(f"corpus has {data.numel()} tokens: too few to pretrain on")
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([data[s : s + seq_len] for s in starts.tolist()])  # (B, L)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


VISION_TASKS: dict[str, list] = {
    "colour": [*COLOURS, *PRODUCT_COLOURS],
    "shape": [*SHAPES, "ring"],
    "count": [1, 2, 3],
    "texture": list(TEXTURES),
}


def pretrain_vision(
    vision: torch.nn.Module,
    processor: Any,
    image_size: int,
    steps: int = 200,
    pool_size: int = 1024,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Multi-task attribute classification on rendered images, through the pooled output.

    One linear head per attribute in :data:`VISION_TASKS` on ``pooler_output``; the heads are
    thrown away afterwards. Returns the final training accuracy per attribute.
    """
    rng = np.random.default_rng(seed)
    attrs = [random_render_attributes(rng) for _ in range(pool_size)]
    images = [render_image(a, image_size, rng) for a in attrs]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # (P, 3, H, W)
    labels = {
        task: torch.tensor([values.index(getattr(a, task)) for a in attrs])
        for task, values in VISION_TASKS.items()
    }
    width = vision.config.hidden_size
    heads = torch.nn.ModuleDict(
        {t: torch.nn.Linear(width, len(v)) for t, v in VISION_TASKS.items()}
    )
    params = [*vision.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    vision.train()
    correct = dict.fromkeys(VISION_TASKS, 0.0)
    for step in range(steps):
        idx = torch.randint(0, pool_size, (batch_size,), generator=gen)
        pooled = vision(pixel_values=pixels[idx]).pooler_output  # (B, D)
        loss = torch.zeros(())
        for task, head in heads.items():
            logits = head(pooled)
            loss = loss + torch.nn.functional.cross_entropy(logits, labels[task][idx])
            if step == steps - 1:
                correct[task] = (logits.argmax(-1) == labels[task][idx]).float().mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
    vision.eval()
    return correct


def _atomic_save(target: Path, save) -> None:
    """Save into a temporary sibling directory, then rename: readers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        save(tmp)
        if (target / "config.json").is_file():  # someone else finished first
            return
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny_backbones(
    cfg: Any,
    corpus: Iterable[str],
    pretrain_steps: int = 300,
    image_size: int | None = None,
    vision_steps: int = 200,
) -> dict[str, str]:
    """Build whichever of the ``tiny`` LM / vision backbones ``cfg.model`` asks for and lacks.

    Returns ``{"lm": status, "vision": status}`` with status ``built``, ``cached`` or
    ``not tiny``. ``cfg`` is an ``ExperimentConfig``.
    """
    root = Path(cfg.data.artifact_dir)
    status = {"lm": "not tiny", "vision": "not tiny"}
    if cfg.model.lm == "tiny":
        lm_dir = root / BACKBONES[("lm", "tiny")].local_subdir
        if (lm_dir / "config.json").is_file():
            status["lm"] = "cached"
        else:
            texts = [t for t in corpus if t and t.strip()]
            start = time.perf_counter()
            torch.manual_seed(cfg.data.seed)
            tokenizer = train_tokenizer(texts, vocab_size=2000)
            model = tiny_opt(tokenizer)
            ids = [
                i for text in texts for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
            ]
            losses = pretrain_lm(model, ids, steps=pretrain_steps, seed=cfg.data.seed)
            model.eval()

            def save_lm(path: Path) -> None:
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)

            _atomic_save(lm_dir, save_lm)
            log.info(
                "built tiny LM in %.1fs: %d tokens, loss %.2f -> %.2f",
                time.perf_counter() - start, len(ids), losses[0], losses[-1],
            )  # fmt: skip
            status["lm"] = "built"
    if cfg.model.vision == "tiny":
        vision_dir = root / BACKBONES[("vision", "tiny")].local_subdir
        if (vision_dir / "config.json").is_file():
            status["vision"] = "cached"
        else:
            torch.manual_seed(cfg.data.seed)
            size = image_size or cfg.data.image_size
            vision, processor = tiny_clip_vision(size)
            start = time.perf_counter()
            accuracy = pretrain_vision(vision, processor, size, steps=vision_steps,
                                       seed=cfg.data.seed)  # fmt: skip
            log.info("built tiny vision encoder in %.1fs: train accuracy %s",
                     time.perf_counter() - start, accuracy)  # fmt: skip

            def save_vision(path: Path) -> None:
                vision.save_pretrained(path)
                processor.save_pretrained(path)

            _atomic_save(vision_dir, save_vision)
            status["vision"] = "built"
    return status

"""Evaluation generation throughput with and without the KV cache, one run.

With the cache: :meth:`g4mm.model.Graph4MM.generate` (greedy, HF ``generate`` over
``[prompt ; soft tokens]``), the evaluation path. Without it: the same greedy decoding with one
full LM forward over the whole sequence per new token. (``generate(..., use_cache=False)`` is
not a no-cache baseline: HF's ``generate`` forces the cache on for decoder-only models fed
``inputs_embeds``, which is how Graph4MM feeds its soft tokens.)

The LM is OPT-125M-shaped with random weights (``bench/train_step.py``'s model), in eval mode
under ``torch.inference_mode`` with bf16 autocast on CUDA, as ``g4mm.eval`` runs it. EOS is
suppressed so every sample generates exactly ``--new-tokens`` tokens in both settings. A
separate short fp32 run checks that both give the same tokens.

Usage:
    python bench/generate.py [--batch 16] [--new-tokens 32] [--json PATH]
    python bench/generate.py --quick         # tiny shapes, seconds on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_threads, device_label, pick_device, print_table, sync
from train_step import FULL, QUICK, build_model, make_batch

HEADERS = ["KV cache", "batch", "prompt tokens", "new tokens", "ms / batch", "new tok/s", "ratio"]


def greedy_without_cache(model, inputs, new_tokens: int) -> torch.Tensor:
    """Greedy tokens (B, new_tokens), one full forward over the whole sequence per token, EOS
    suppressed (as ``min_new_tokens`` does for the cached path)."""
    embeds, mask, _ = model._sequence(inputs, with_targets=False)
    embed = model.lm.get_input_embeddings()
    eos = model.lm.generation_config.eos_token_id
    tokens = []
    for _ in range(new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.lm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]  # fmt: skip
        if eos is not None:
            logits[:, eos] = float("-inf")
        token = logits.argmax(-1)
        tokens.append(token)
        embeds = torch.cat([embeds, embed(token)[:, None].to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(tokens, dim=1)


def decode(model, inputs, new_tokens: int, use_cache: bool) -> torch.Tensor:
    if use_cache:
        return model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return greedy_without_cache(model, inputs, new_tokens)


def autocast_for(device: torch.device, enabled: bool = True):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_generate(model, inputs, new_tokens: int, use_cache: bool, repeats: int, device):
    """Median seconds of one decoding call (after one warm-up call) and its tokens."""
    times, out = [], None
    with torch.inference_mode(), autocast_for(device):
        for i in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            out = decode(model, inputs, new_tokens, use_cache)
            sync(device)
            if i:  # the first call warms up
                times.append(time.perf_counter() - start)
    return statistics.median(times), out


def same_tokens_fp32(model, inputs, new_tokens: int) -> bool:
    """Cached and uncached greedy agree token for token in fp32 (first 2 samples)."""
    head = inputs.map_tensors(lambda t: t[:2])
    with torch.inference_mode():
        cached = decode(model, head, new_tokens, True)
        uncached = decode(model, head, new_tokens, False)
    return bool(torch.equal(cached, uncached))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    cpu_threads(device, args.threads)
    shape = QUICK if args.quick else FULL
    batch = args.batch or (4 if args.quick else 16)
    new_tokens = args.new_tokens or (8 if args.quick else 32)
    repeats = args.repeats or 3
    model = build_model(shape, device).eval()
    rng = random.Random(0)
    longest = args.max_prompt or shape.max_prompt
    prompts = [rng.randint(longest // 2, longest) for _ in range(batch)]
    gen = torch.Generator().manual_seed(0)
    inputs = make_batch(prompts, [1] * batch, shape, gen)
    inputs.target_ids = inputs.target_mask = None
    inputs = inputs.to(device)
    meta = {"device": device_label(device), "batch": batch, "new_tokens": new_tokens}
    print(f"device: {meta['device']}; prompts {min(prompts)}-{max(prompts)} tokens + "
          f"{shape.queries} soft tokens, greedy", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for use_cache in (True, False):
        seconds, out = time_generate(model, inputs, new_tokens, use_cache, repeats, device)
        rows.append({
            "cache": "on (HF generate)" if use_cache else "off (full forward per token)",
            "batch": batch, "prompt": f"{min(prompts)}-{max(prompts)} + {shape.queries}",
            "new_tokens": out.shape[1], "ms": seconds * 1e3,
            "tok_s": batch * out.shape[1] / seconds,
        })  # fmt: skip
    rows[0]["ratio"] = rows[0]["tok_s"] / rows[1]["tok_s"]
    rows[1]["ratio"] = 1.0
    meta["ratio"] = rows[0]["ratio"]
    meta["same_tokens"] = same_tokens_fp32(model, inputs, min(new_tokens, 8))
    return {"meta": meta, "rows": rows}


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [r["cache"], r["batch"], r["prompt"], r["new_tokens"], r["ms"], r["tok_s"],
         f"x{r['ratio']:.1f}"]
        for r in rows
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes (seconds on a CPU)")
    p.add_argument("--batch", type=int, help="samples per generate call (default 16; quick 4)")
    p.add_argument("--new-tokens", type=int, help="generated tokens (default 32; quick 8)")
    p.add_argument(
        "--max-prompt",
        type=int,
        help="prompts uniform in [max/2, max] tokens "
        "(default 1004, the paper's input minus the 20 soft tokens)",
    )
    p.add_argument("--repeats", type=int, help="timed calls per setting (median; default 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--json", type=Path, help="also write rows + metadata here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    print_table(HEADERS, table_rows(result["rows"]))
    meta = result["meta"]
    print(
        f"KV cache x{meta['ratio']:.1f} new tokens/s; cached == uncached greedy tokens (fp32): "
        f"{meta['same_tokens']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

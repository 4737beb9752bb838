"""Can soft tokens steer a frozen LM? Free soft tokens fitted to single samples, per backbone.

For each backbone (``--lms``, registry names: ``tiny``, ``smollm2-135m``, ...) and each of the
first ``--samples`` validation rows of a preprocessed directory, the frozen LM reads that
sample's raw layout as text (:func:`g4mm.model.layout.layout_text`: target's section, captions,
neighbours in reading order, cue) followed by ``--tokens`` free soft tokens at the LM's width,
then the target. Only the soft tokens train (Adam, ``--steps`` steps, ``--lr``), on that one
sample's target NLL::

    loss(P) = -1/T sum_t log p_LM(y_t | text, P, y_<t),   P in R^{k x D} free

Reported per backbone: the target NLL with zero soft tokens' worth of help (P = 0 rows: the
text alone, the LM's own guess) and after fitting; greedy decoding after fitting against the
target (token accuracy, exact match); and the seconds per sample of one frozen forward +
input-gradient backward (the frozen LM's share of a Graph4MM training step), batch 1, on this
machine's CPU threads. The tiny LM was gated on copying from its context; this is the check
that a real pretrained LM nobody here trained can be steered at all. It is not the Graph4MM
adapter (which must *predict* such tokens from the graph): it bounds what the adapter can do.

Usage:
    python bench/steerability.py --prep artifacts/prep/<key> [--lms tiny smollm2-135m]
        [--artifact-dir artifacts] [--samples 4] [--steps 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_threads, device_label, pick_device, print_table

from g4mm.data.prepared import read_rows
from g4mm.model.backbones import load_lm
from g4mm.model.layout import LayoutSpec, TokenGroup, layout_text

HEADERS = ["LM", "params (M)", "NLL text only", "NLL fitted", "greedy token acc", "exact",
           "s / sample fwd+bwd"]  # fmt: skip


def sample_texts(prep: str, count: int) -> list[tuple[str, str]]:
    """``(context, target)`` of the first ``count`` validation rows (sorted by sample id)."""
    spec = LayoutSpec("raw", "after_text", 10**9, 12, 5, (TokenGroup("queries", None, 1),))
    rows = read_rows(prep, "val")[:count]
    return [(layout_text(row, spec, lambda _: ""), " " + row["target_text"]) for row in rows]


def fit_one(lm, tok, context: str, target: str, tokens: int, steps: int, lr: float,
            device: torch.device) -> dict:  # fmt: skip
    """Fit ``tokens`` free soft tokens between ``context`` and ``target`` (module docstring)."""
    embed = lm.get_input_embeddings()
    ctx = tok(context, return_tensors="pt")["input_ids"].to(device)  # (1, C), with its <bos>
    tgt = tok(target, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        ctx_emb, tgt_emb = embed(ctx), embed(tgt)  # (1, C, D), (1, T, D)
    soft = torch.zeros(1, tokens, ctx_emb.shape[-1], device=device, requires_grad=True)
    opt = torch.optim.Adam([soft], lr=lr)
    t = tgt.shape[1]

    def nll() -> torch.Tensor:
        seq = torch.cat([ctx_emb, soft, tgt_emb], dim=1)  # (1, C + k + T, D)
        logits = lm(inputs_embeds=seq, logits_to_keep=t + 1).logits[:, :-1]  # (1, T, V)
        return torch.nn.functional.cross_entropy(logits.reshape(t, -1).float(), tgt.reshape(t))

    with torch.no_grad():
        before = nll().item()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nll()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - start) / steps
    with torch.no_grad():
        after = nll().item()
        prefix = torch.cat([ctx_emb, soft], dim=1)
        out = lm.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2],
                          dtype=torch.long, device=device), max_new_tokens=t, do_sample=False,
                          pad_token_id=tok.pad_token_id, eos_token_id=None)  # fmt: skip
    generated = out[0, -t:] if out.shape[1] >= t else out[0]
    hits = sum(int(a == b) for a, b in zip(generated.tolist(), tgt[0].tolist(), strict=False))
    return {"before": before, "after": after, "token_acc": hits / t,
            "exact": float(generated.tolist() == tgt[0].tolist()), "s_per_step": per_step,
            "context_tokens": ctx.shape[1], "target_tokens": t}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prep", required=True, help="a preprocessed directory (its val rows)")
    parser.add_argument("--lms", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--artifact-dir", default="artifacts")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8, help="free soft tokens")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="CPU torch threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cpu_threads(device, args.threads)
    texts = sample_texts(args.prep, args.samples)
    print(f"{device_label(device)}; {len(texts)} samples of {args.prep}, {args.tokens} soft "
          f"tokens, {args.steps} Adam steps (lr {args.lr})", flush=True)  # fmt: skip
    rows, results = [], {}
    for name in args.lms:
        torch.manual_seed(0)
        lm, tok = load_lm(name, args.artifact_dir)
        lm = lm.to(device).eval().requires_grad_(False)
        fits = []
        for i, (context, target) in enumerate(texts):
            fits.append(fit_one(lm, tok, context, target, args.tokens, args.steps, args.lr,
                                device))  # fmt: skip
            print(f"[{name}] sample {i}: NLL {fits[-1]['before']:.3f} -> {fits[-1]['after']:.3f}",
                  flush=True)  # fmt: skip
        mean = {k: statistics.fmean(f[k] for f in fits) for k in fits[0]}
        results[name] = {"mean": mean, "samples": fits}
        params = sum(p.numel() for p in lm.parameters()) / 1e6
        rows.append([name, f"{params:.1f}", f"{mean['before']:.3f}", f"{mean['after']:.3f}",
                     f"{mean['token_acc']:.2f}", f"{mean['exact']:.2f}",
                     f"{mean['s_per_step']:.3f}"])  # fmt: skip
    print_table(HEADERS, rows)
    base = results[args.lms[0]]["mean"]["s_per_step"]
    for name in args.lms[1:]:
        ratio = results[name]["mean"]["s_per_step"] / base
        print(f"{name}: x{ratio:.1f} the seconds per sample of {args.lms[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_label(device), **results},
                                              indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweep reports (Ray-free): Optuna parameter importances, the ablation table, PNG plots.

- :func:`param_importances`: an Optuna study rebuilt from the completed trials (the same
  distributions the search sampled from) and ``optuna.importance.get_param_importances``
  (fANOVA when scikit-learn is installed, else PED-ANOVA, which needs nothing more). Too few
  trials, or all trials scoring the same, give a note instead of numbers.
- :func:`ablation_table`: the paper's layout, one row per variant and one column per test
  metric (BLEU-4 / ROUGE-L / CIDEr, or accuracy in %); from the best completed trial of each
  variant in a search, or the mean ± std over seeds in ``--grid variants``.
- :func:`plot_sweep`: the metric against alpha, against K, and per variant.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from g4mm.config import VARIANTS
from g4mm.tune.records import TrialRecord
from g4mm.tune.space import SearchSpace

__all__ = [
    "METRIC_TITLES",
    "MIN_IMPORTANCE_TRIALS",
    "VARIANT_TITLES",
    "ablation_table",
    "param_importances",
    "plot_sweep",
    "slot_accuracy_table",
    "write_ablation",
    "write_importances",
]

#: Completed trials needed before importances are computed.
MIN_IMPORTANCE_TRIALS = 3

#: Row labels and order of the ablation table (baselines first, the full model last, as in
#: the paper's tables).
VARIANT_TITLES: dict[str, str] = {
    "text_only": "Text only (subgraph text)",
    "mmgl_concat": "MMGL (subgraph T&I)",
    "mmgl_gnn": "MMGL (subgraph T&I + GNN)",
    "hop_aware": "Graph4MM Hop-Aware",
    "no_text_structure": "Graph4MM w/o text structure",
    "no_image_structure": "Graph4MM w/o image structure",
    "hop_diffused": "Graph4MM Hop-Diffused (full)",
}
assert set(VARIANT_TITLES) == set(VARIANTS)

#: Column titles; accuracies are shown in percent like the paper.
METRIC_TITLES: dict[str, str] = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "rougeL": "ROUGE-L",
    "cider": "CIDEr",
    "accuracy": "Acc (%)",
    "seen_accuracy": "Seen Acc (%)",
    "zero_shot_accuracy": "Zero-shot Acc (%)",
    "zero_shot_accuracy_all_classes": "Zero-shot Acc, all classes (%)",
}
METRIC_TITLES.update(
    {f"paper_{k}": f"{v} (paper)" for k, v in list(METRIC_TITLES.items())[:6]}
)
_PERCENT = {"accuracy", "seen_accuracy", "zero_shot_accuracy", "zero_shot_accuracy_all_classes"}


# ---------------------------------------------------------------------------- importances


def param_importances(
    records: Sequence[TrialRecord], space: SearchSpace, mode: str
) -> dict[str, Any]:
    """Parameter importances of the completed trials' scores.

    Returns:
        ``{"evaluator", "trials", "importances": {param: share} (empty if not computed),
        "note"}``; parameters present in only some trials (conditional ones) are left out by
        Optuna and named in the note.
    """
    done = [r for r in records if r.status == "completed" and r.has_score]
    out: dict[str, Any] = {"evaluator": None, "trials": len(done), "importances": {}, "note": ""}
    if len(done) < MIN_IMPORTANCE_TRIALS:
        out["note"] = (
            f"{len(done)} completed trial(s) with a score: importances need at least "
            f"{MIN_IMPORTANCE_TRIALS}; run more trials"
        )
        return out
    if len({r.score for r in done}) == 1:
        out["note"] = f"all {len(done)} completed trials scored {done[0].score}: nothing to explain"
        return out
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    # a seed is a replicate, not a hyperparameter: its "importance" is noise the variant's
    # seeds share (a grid of 5 variants x 3 seeds gave seed 0.50)
    dists = {k: v for k, v in space.distributions().items() if space.targets.get(k) != "train.seed"}
    for r in done:
        params = {k: v for k, v in r.params.items() if k in dists}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=r.score,
            )
        )
    evaluator, name = _evaluator()
    common = set.intersection(*(set(t.params) for t in study.trials))
    varied = sorted(p for p in common if len({t.params[p] for t in study.trials}) > 1)
    partial = sorted(set().union(*(set(t.params) for t in study.trials)) - common)
    out["evaluator"] = name
    notes = []
    if partial:
        notes.append(f"left out (sampled in only some trials): {', '.join(partial)}")
    if not varied:
        notes.append("no parameter varied across the completed trials")
        out["note"] = "; ".join(notes)
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=varied
            )
    except Exception as exc:  # an evaluator refusing a degenerate study is not fatal
        notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
        out["note"] = "; ".join(notes)
        return out
    out["importances"] = {k: float(v) for k, v in values.items()}
    if len(done) < 10:
        notes.append(f"only {len(done)} completed trials: indicative at best")
    out["note"] = "; ".join(notes)
    return out


def _evaluator() -> tuple[Any, str]:
    """fANOVA (Optuna's default) when scikit-learn is importable, else PED-ANOVA."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return PedAnovaImportanceEvaluator(), "ped-anova"
    return FanovaImportanceEvaluator(seed=0), "fanova"


def write_importances(out_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """``importances.json`` plus ``importances.png`` when there are numbers to plot."""
    out_dir = Path(out_dir)
    path = out_dir / "importances.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    values = result.get("importances") or {}
    if values:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 0.5 * len(values) + 1.5))
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color="tab:blue")
        ax.set_xlabel(f"importance ({result.get('evaluator')})")
        ax.set_title(f"parameter importances, {result.get('trials')} completed trials")
        fig.tight_layout()
        fig.savefig(out_dir / "importances.png", dpi=100)
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------ ablation


def ablation_table(
    records: Sequence[TrialRecord], metric_names: Sequence[str], mode: str, aggregate: str
) -> list[dict[str, Any]]:
    """Rows of the ablation table, one per variant that has a completed trial.

    Args:
        metric_names: the eval metrics (``eval.metrics``); their ``test_*`` values are shown.
        aggregate: ``"best"`` (the completed trial with the best score; search mode) or
            ``"mean"`` (mean and sample std over the completed trials; grid mode, one per seed).

    Returns:
        ``{"variant", "title", "trials", "trial_ids", "<metric>": value, "<metric>_std": std}``
        per row, in :data:`VARIANT_TITLES` order.
    """
    rows = []
    for variant, title in VARIANT_TITLES.items():
        done = [
            r for r in records if r.params.get("variant") == variant and r.status == "completed"
        ]
        if not done:
            continue
        if aggregate == "best":
            sign = 1.0 if mode == "max" else -1.0
            done = [max(done, key=lambda r: sign * r.score if r.has_score else -math.inf)]
        row: dict[str, Any] = {
            "variant": variant,
            "title": title,
            "trials": len(done),
            "trial_ids": [r.trial_id for r in done],
        }
        for m in metric_names:
            values = [r.metrics[f"test_{m}"] for r in done if f"test_{m}" in r.metrics]
            scale = 100.0 if m in _PERCENT else 1.0
            row[m] = statistics.fmean(values) * scale if values else None
            row[f"{m}_std"] = statistics.stdev(values) * scale if len(values) > 1 else None
        rows.append(row)
    return rows


def write_ablation(
    out_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str],
    caption: str,
    extra_lines: Sequence[str] = (),
) -> tuple[Path, Path]:
    """``ablation.md`` (variant x metrics, the paper's layout, then ``extra_lines``) and
    ``ablation.csv``."""
    out_dir = Path(out_dir)
    titles = [METRIC_TITLES.get(m, m) for m in metric_names]
    lines = [
        f"# Ablation: {caption}",
        "",
        "| Variant | " + " | ".join(titles) + " | trials |",
        "|---|" + "---|" * len(titles) + "---|",
    ]
    for row in rows:
        cells = []
        for m in metric_names:
            value, std = row.get(m), row.get(f"{m}_std")
            digits = 2 if m in _PERCENT else 4
            cell = "–" if value is None else f"{value:.{digits}f}"
            if value is not None and std is not None:
                cell += f" ± {std:.{digits}f}"
            cells.append(cell)
        lines.append(f"| {row['title']} | " + " | ".join(cells) + f" | {row['trials']} |")
    if not rows:
        lines.append("| (no completed trial) |" + " |" * len(titles) + " |")
    lines.extend(extra_lines)
    md = out_dir / "ablation.md"
    md.write_text("\n".join(lines) + "\n")
    csv_path = out_dir / "ablation.csv"
    header = ["variant", "title", "trials", *metric_names, *(f"{m}_std" for m in metric_names)]
    body = [",".join(header)]
    for row in rows:
        body.append(",".join("" if row.get(k) is None else str(row.get(k)) for k in header))
    csv_path.write_text("\n".join(body) + "\n")
    return md, csv_path


def slot_accuracy_table(rows: Sequence[Mapping[str, Any]], trials_dir: Path) -> list[str]:
    """Markdown lines: per ablation row, the word accuracy of each slot of the synthetic-docs
    target sentence (:func:`g4mm.data.synthetic.slot_accuracy`) on the test predictions of
    its trials (``<trials_dir>/<trial_id>/predictions.jsonl``), mean over those trials."""
    from g4mm.data.synthetic import TARGET_SLOTS, slot_accuracy

    lines = [
        "",
        'Word accuracy per slot of "the <topic> section under <parent> shows <count> <colour> '
        '<shape>s" (test predictions, mean over the trials):',
        "",
        "| Variant | " + " | ".join(TARGET_SLOTS) + " | trials |",
        "|---|" + "---|" * len(TARGET_SLOTS) + "---|",
    ]
    for row in rows:
        per_trial = []
        for trial_id in row["trial_ids"]:
            path = trials_dir / trial_id / "predictions.jsonl"
            if path.is_file():
                records = [json.loads(line) for line in path.read_text().splitlines() if line]
                per_trial.append(slot_accuracy((r["prediction"], r["reference"]) for r in records))
        cells = [
            f"{statistics.fmean(t[slot] for t in per_trial):.2f}" if per_trial else "–"
            for slot in TARGET_SLOTS
        ]
        lines.append(f"| {row['title']} | " + " | ".join(cells) + f" | {len(per_trial)} |")
    return lines


# --------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _param_for(space: SearchSpace, target: str) -> str | None:
    return next((p.name for p in space.params if p.target == target), None)


def plot_sweep(
    out_dir: str | os.PathLike[str],
    records: Sequence[TrialRecord],
    space: SearchSpace,
    score_name: str,
) -> list[Path]:
    """``metric_vs_alpha.png``, ``metric_vs_num_hops.png`` and ``metric_by_variant.png``.

    Filled markers are completed trials, hollow ones trials stopped early (their last value).
    A parameter that was not searched, or took one value in every scored trial (a grid over
    variants), gets no plot.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    scored = [r for r in records if r.has_score]
    variants = [v for v in VARIANT_TITLES if any(r.params.get("variant") == v for r in scored)]
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(VARIANT_TITLES)}
    paths = []
    for target, label, stem in (
        ("model.alpha", "alpha (restart probability)", "metric_vs_alpha"),
        ("model.num_hops", "K (diffusion terms)", "metric_vs_num_hops"),
    ):
        name = _param_for(space, target)
        points = [r for r in scored if name is not None and name in r.params]
        if len({r.params[name] for r in points}) < 2:  # not searched (a grid), or one value
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in points:
            colour = colours.get(r.params.get("variant"), "tab:gray")
            filled = r.status == "completed"
            ax.scatter(
                r.params[name],
                r.score,
                s=40,
                edgecolors=colour,
                facecolors=colour if filled else "none",
            )
        for v in variants:
            if any(r.params.get("variant") == v for r in points):
                ax.scatter([], [], color=colours[v], label=v)
        ax.legend(fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(score_name)
        ax.set_title(f"{score_name} vs {label.split(' ')[0]}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out_dir / f"{stem}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, v in enumerate(variants):
        mine = [r for r in scored if r.params.get("variant") == v]
        for j, r in enumerate(mine):
            x = i + (j - (len(mine) - 1) / 2) * 0.08
            filled = r.status == "completed"
            ax.scatter(
                x, r.score, s=40, edgecolors=colours[v], facecolors=colours[v] if filled else "none"
            )
    if not variants:
        ax.text(0.5, 0.5, "no scored trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(score_name)
    ax.set_title(f"{score_name} per variant (hollow: stopped early)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths.append(out_dir / "metric_by_variant.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths

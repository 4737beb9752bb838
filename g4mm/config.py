"""Typed experiment configuration: dataclasses, named YAML configs, ``--set`` overrides, validation.

One :class:`ExperimentConfig` flows from the command line to every stage (preprocess, embed,
train, evaluate, tune); no stage re-reads argv or the environment. It is built from

1. a named config shipped in ``g4mm/configs/<name>.yaml`` (see :func:`available_configs`) or a
   path to any ``.yaml``/``.yml`` file; a file may say ``base: <name or relative path>`` to
   inherit another config and override parts of it (sections are deep-merged);
2. dotted overrides ``SECTION.KEY=VALUE`` applied afterwards, the value parsed as YAML
   (``0.3`` -> float, ``[a, b]`` -> list, ``null`` -> None, ``1e-3`` -> float);
3. :meth:`ExperimentConfig.validate`, which every loader calls: types are checked and
   normalised (int -> float where a float is expected, YAML lists -> tuples, ``use_gpu: true``
   -> ``"true"``), then value rules (``0 < model.alpha < 1``, ...) are enforced. Failures raise
   :class:`ConfigError`, whose message names the dotted field and the offending value and, for
   misspelled names, suggests the closest valid one.

Example::

    cfg = load_config("smoke", ["model.alpha=0.3", "train.lr=1e-3"])
    cfg.save_yaml("runs/x/config.yaml")       # load_config("runs/x/config.yaml") == cfg

This module depends on the standard library and PyYAML only (no Ray, torch or transformers), so
it can be imported anywhere, including by the Ray driver before any worker starts.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_DIR",
    "CONTEXTS",
    "DATASETS",
    "METRICS",
    "PROTOCOLS",
    "SECTIONS",
    "TOKEN_PLACEMENTS",
    "VARIANTS",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "TuneConfig",
    "add_config_arguments",
    "available_configs",
    "config_from_args",
    "load_config",
    "parse_override",
    "resolve_config_path",
]

#: Directory holding the named configs shipped as package data.
CONFIG_DIR: Path = Path(__file__).resolve().parent / "configs"

#: Data sources understood by ``g4mm.data``.
DATASETS: tuple[str, ...] = (
    "synthetic-docs",
    "synthetic-products",
    "wikiweb2m",
    "mmgraph",
    "parquet",
)

#: The Graph4MM variants: structure-aware adapters (hop attention + MM-QFormer); the only ones
#: whose raw layout may carry hop phrases (``model.hop_phrases``).
GRAPH4MM_VARIANTS: tuple[str, ...] = (
    "hop_diffused",
    "hop_aware",
    "no_text_structure",
    "no_image_structure",
)

#: Model variants (the tuner's ``variant`` axis); see DESIGN.md section 3.
VARIANTS: tuple[str, ...] = (
    *GRAPH4MM_VARIANTS,
    "mmgl_concat",
    "mmgl_gnn",
    "text_only",
)

#: Evaluation metrics that ``eval.metrics`` may name.
METRICS: tuple[str, ...] = (
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "rougeL",
    "cider",
    "accuracy",
    "seen_accuracy",
    "zero_shot_accuracy",
)

#: The caption metrics of ``eval.metrics``; each is reported once per scoring protocol.
CAPTION_METRIC_NAMES: tuple[str, ...] = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")

#: How captions are scored (``eval.protocol``): ``coco`` (pycocoevalcap's PTB-tokenised
#: pipeline, keys ``bleu4``...), ``paper`` (the official Graph4MM code's, keys ``paper_bleu4``...:
#: :mod:`g4mm.eval.paper_protocol`), or ``both``.
PROTOCOLS: tuple[str, ...] = ("both", "coco", "paper")


def metric_keys(metrics: Sequence[str], protocol: str) -> list[str]:
    """The keys an evaluation reports for ``eval.metrics`` under ``eval.protocol``.

    Each caption metric ``m`` becomes ``m`` (COCO) and/or ``paper_m`` (the paper's protocol);
    classification metrics are reported as named, ``zero_shot_accuracy`` with its
    all-classes twin (:func:`g4mm.eval.evaluate.classification_metrics`). E.g.
    ``(["bleu4", "cider"], "both")`` -> ``["bleu4", "cider", "paper_bleu4", "paper_cider"]``.
    """
    caption = [m for m in metrics if m in CAPTION_METRIC_NAMES]
    keys = []
    for m in metrics:
        if m not in CAPTION_METRIC_NAMES:
            keys += [m, f"{m}_all_classes"] if m == "zero_shot_accuracy" else [m]
    if protocol in ("coco", "both"):
        keys = caption + keys
    if protocol in ("paper", "both"):
        keys += [f"paper_{m}" for m in caption]
    return keys


#: Training losses that ``tune.metric`` may name besides the entries of ``eval.metrics``.
LOSS_METRICS: tuple[str, ...] = ("loss", "val_loss")

#: What the frozen LM reads (``model.context``) and where raw layouts put graph tokens.
CONTEXTS: tuple[str, ...] = ("raw", "pooled")
TOKEN_PLACEMENTS: tuple[str, ...] = ("at_images", "after_text")
DIFFUSION_IMPLS: tuple[str, ...] = ("dense", "sparse")
GNN_TYPES: tuple[str, ...] = ("gcn", "gat")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
TRACKERS: tuple[str, ...] = ("mlflow", "none")
COMPILE_SCOPES: tuple[str, ...] = ("lm", "lm+adapter", "forward")
CUDA_GRAPH_MODES: tuple[str, ...] = ("reduce-overhead", "max-autotune")
COMPILE_MODES: tuple[str, ...] = ("default", *CUDA_GRAPH_MODES, "max-autotune-no-cudagraphs")
USE_GPU_CHOICES: tuple[str, ...] = ("auto", "true", "false")
TUNE_MODES: tuple[str, ...] = ("max", "min")
CLASS_SCORES: tuple[str, ...] = ("mean", "sum")
TRIAL_RUNNERS: tuple[str, ...] = ("auto", "in_process", "ray_train")

_YAML_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")


class ConfigError(ValueError):
    """An invalid, unknown or malformed configuration value.

    Attributes:
        errors: the individual problems (one message each); ``str(err)`` joins them.
    """

    def __init__(self, message: str | Sequence[str]) -> None:
        errors = [message] if isinstance(message, str) else list(message)
        self.errors: list[str] = errors
        if len(errors) == 1:
            text = errors[0]
        else:
            text = f"{len(errors)} config errors:\n" + "\n".join(f"  - {e}" for e in errors)
        super().__init__(text)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where samples come from and how subgraphs are cut.

    Attributes:
        dataset: source, one of :data:`DATASETS`.
        input: path of the raw source (WikiWeb2M TFRecords, MM-GRAPH files, parquet); unused by
            the synthetic sources.
        images: directory of image files when the source stores references, else None.
        artifact_dir: where preprocessed and embedded shards are cached.
        tau: hop radius of the text and image subgraphs around each target node.
        max_text_nodes: cap on text nodes per subgraph (target included).
        max_image_nodes: cap on image nodes per subgraph (0 = no images).
        max_input_tokens: what the frozen LM reads before the target, in LM tokens: the
            layout's text and its graph-token slots (:mod:`g4mm.model.layout`; 1,024 in the
            official code), cut from the far end; also the text encoder's cut of each node
            text.
        max_target_tokens: target text length cap in LM tokens.
        num_pages: number of pages generated by ``synthetic-docs``.
        num_products: number of products generated by ``synthetic-products``.
        image_size: side in pixels of the rendered synthetic images.
        seed: generator / split seed.
        num_blocks: number of Ray Data blocks (parallelism of preprocessing).
        allow_outside_images: read images whose reference resolves outside the input and
            images directories (an absolute path, ``..``, a symlink out). Off by default: such
            a reference is a counted corrupt image, never opened, so a dataset cannot make a
            run read (and embed) files elsewhere on the machine.
    """

    dataset: str = "synthetic-docs"
    input: str | None = None
    images: str | None = None
    artifact_dir: str = "artifacts"
    tau: int = 2
    max_text_nodes: int = 12
    max_image_nodes: int = 5
    max_input_tokens: int = 256
    max_target_tokens: int = 32
    num_pages: int = 200
    num_products: int = 600
    image_size: int = 32
    seed: int = 0
    num_blocks: int = 8
    allow_outside_images: bool = False


@dataclass
class ModelConfig:
    """Backbones and the trained adapters (hop attention + MM-QFormer).

    Attributes:
        variant: model variant, one of :data:`VARIANTS`.
        lm: frozen causal LM backbone name (registry name such as ``tiny``/``opt-125m``).
        vision: frozen vision encoder backbone name.
        text_encoder: ``"lm"`` (mean-pooled hidden states of the frozen LM) or a backbone name.
        hidden_dim: adapter width d; must be divisible by ``num_heads``.
        num_heads: attention heads of hop attention and MM-QFormer.
        alpha: restart probability of the diffusion, theta_i = alpha (1 - alpha)^i, in (0, 1).
        num_hops: K, diffusion terms i = 0..K (0 = identity term only).
        max_hop: hop-aware embedding table clamp (hops beyond share one embedding).
        context: what the LM reads (:mod:`g4mm.model.layout`): ``"raw"`` (the paper's model:
            the subgraph's text itself, target first, then the other text nodes in document
            order, with the graph tokens placed among it) or ``"pooled"`` (an ablation: the
            target's own prompt, then soft tokens only; neighbour text reaches the LM as
            pooled vectors alone).
        token_placement: where ``raw`` puts the graph tokens: ``"at_images"`` (each image's
            ``tokens_per_image`` tokens after that image's caption, as the official code) or
            ``"after_text"`` (``num_query_tokens`` tokens after the text, the paper's
            wording).
        tokens_per_image: graph tokens per image under ``at_images`` (official: 4).
        hop_phrases: under ``raw``, each text node other than the target is read after the
            phrase ``" context from {h}-hop neighbours:"`` (h its hop distance in G_t), the
            prompt route by which text keeps structure that the paper's ablation discussion
            names. Applied only where structure is on: the Graph4MM variants
            (:data:`GRAPH4MM_VARIANTS`, ``no_text_structure`` included: the phrases are the
            route that ablation leaves), never the structure-free baselines (``mmgl_concat``,
            ``mmgl_gnn``, ``text_only`` read the text as MMGL does), so a variant grid with it
            on compares as the paper does. Off by default (the official code has no phrases).
        num_query_tokens: learnable MM-QFormer query tokens: the graph tokens of
            ``after_text`` and ``pooled`` (the sweep's query-token axis there; under
            ``at_images`` the axis is ``tokens_per_image``).
        qformer_layers: MM-QFormer layers L.
        ffn_mult: FFN hidden width = ``ffn_mult * hidden_dim``.
        dropout: dropout probability in [0, 1).
        diffusion_impl: ``"dense"`` (padded batch matrices) or ``"sparse"`` (edge lists).
        gnn_type: GNN of the ``mmgl_gnn`` baseline, ``"gcn"`` or ``"gat"``.
        gnn_layers: layers of that GNN.
    """

    variant: str = "hop_diffused"
    lm: str = "tiny"
    vision: str = "tiny"
    text_encoder: str = "lm"
    context: str = "raw"
    token_placement: str = "at_images"
    tokens_per_image: int = 4
    hop_phrases: bool = False
    hidden_dim: int = 256
    num_heads: int = 4
    alpha: float = 0.1
    num_hops: int = 3
    max_hop: int = 8
    num_query_tokens: int = 8
    qformer_layers: int = 1
    ffn_mult: int = 4
    dropout: float = 0.1
    diffusion_impl: str = "dense"
    gnn_type: str = "gcn"
    gnn_layers: int = 2


@dataclass
class TrainConfig:
    """Optimisation and Ray Train scaling.

    Attributes:
        seed: training seed.
        num_workers: Ray Train workers (DDP ranks).
        use_gpu: ``"auto"`` (GPU when the cluster has one), ``"true"`` or ``"false"``; YAML
            booleans are normalised to ``"true"``/``"false"``.
        cpus_per_worker: CPUs reserved per worker.
        batch_size: per-worker micro-batch size.
        grad_accum: micro-batches accumulated per optimizer step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        max_steps: optimizer steps.
        eval_every: validate every this many optimizer steps.
        grad_clip: gradient-norm clip (0 disables clipping).
        precision: ``"auto"`` (bf16 on GPUs with native bf16, else fp32), ``"bf16"`` (an error
            where not native), ``"fp32"``.
        output_dir: directory under which run directories are created.
        storage_path: Ray Train storage path (shared filesystem / bucket) or None for local.
        max_failures: worker-group restarts tolerated (-1 = unlimited, as in Ray).
        num_to_keep: checkpoints kept.
        compile: run the frozen LM body through ``torch.compile`` (eager fallback on failure).
        compile_scope: what ``compile`` compiles: ``"lm"`` (the frozen LM body),
            ``"lm+adapter"``, ``"forward"`` (adapter, packing, LM, head and loss as one graph;
            not with the CUDA-graph modes, measured pathological there).
        compile_mode: ``torch.compile`` mode: ``"default"``, ``"reduce-overhead"`` (CUDA
            graphs: no per-kernel launch cost, one graph recorded per sequence shape, so for
            fixed or few lengths), ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``.
        frozen_dtype: storage dtype of the frozen backbones: ``"auto"`` (bf16 when training
            under bf16 autocast on a GPU, else fp32), ``"bf16"``, ``"fp32"``.
        bucket_window: length bucketing of training batches: samples are sorted by token
            length inside windows of ``bucket_window`` batches, so a padded batch costs little
            more than its real tokens (:func:`g4mm.data.collate.length_bucketed_batches`);
            0 = plain shuffled batches.
        step_graph: record the whole optimizer step (zero grads, forward, loss, backward,
            clip, AdamW) as one CUDA graph per padded batch shape and replay it
            (:mod:`g4mm.train.step_graph`): removes the per-kernel launch cost that bounds
            small batches on a GPU. Data-parallel runs do not use DDP: rank 0's weights
            are broadcast and gradients averaged by one all-reduce per step; not with the
            CUDA-graph compile modes (``compile_mode`` default / max-autotune-no-cudagraphs
            compose).
        step_graph_pad: with ``step_graph``, prompt and target widths are padded up to
            multiples of this, so batches share recorded shapes (more padding, fewer graphs).
        tracking: where each run is tracked besides its run directory: ``"mlflow"`` (params,
            every evaluation's metrics by step, test metrics, the run's files as artifacts;
            :mod:`g4mm.tracking`) or ``"none"``.
        tracking_uri: the MLflow tracking store: None = ``sqlite:///<output_dir>/mlflow.db``
            (a local SQLite file); ``http://host:5000`` for a server every node can reach
            (a cluster), or any URI MLflow accepts.
        cudnn_attention: let SDPA try its cuDNN attention first (off by default: cuDNN
            builds an execution plan for every new sequence shape, 118 vs 43 ms per step at
            batch 8 with bucketed variable lengths on one H100). With ``step_graph`` each
            padded shape is recorded once, so the plan is built once per shape; whether the
            kernel is then faster is measured by ``bench/train_step.py`` (its cuDNN rows).
    """

    seed: int = 0
    num_workers: int = 2
    use_gpu: str = "auto"
    cpus_per_worker: float = 0.5
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    max_steps: int = 1000
    eval_every: int = 200
    grad_clip: float = 1.0
    precision: str = "auto"
    output_dir: str = "runs"
    storage_path: str | None = None
    max_failures: int = 2
    num_to_keep: int = 2
    compile: bool = False
    compile_scope: str = "lm"
    compile_mode: str = "default"
    frozen_dtype: str = "auto"
    bucket_window: int = 0
    step_graph: bool = False
    step_graph_pad: int = 64
    cudnn_attention: bool = False
    tracking: str = "mlflow"
    tracking_uri: str | None = None


@dataclass
class EvalConfig:
    """Generation and metrics.

    Attributes:
        batch_size: generation batch size.
        max_new_tokens: generated tokens per sample.
        num_beams: beam width (1 = greedy).
        max_samples: evaluate at most this many samples (None = all).
        metrics: metric names, each one of :data:`METRICS`.
        protocol: how caption metrics are scored, one of :data:`PROTOCOLS` (``both``: the
            COCO keys and the paper's ``paper_*`` keys side by side; :func:`metric_keys`).
        class_score: how a class name is scored in classification: ``mean`` log-likelihood
            per token (the default: a sum favours short names) or ``sum``
            (:mod:`g4mm.eval.classify`).
    """

    batch_size: int = 16
    max_new_tokens: int = 32
    num_beams: int = 1
    max_samples: int | None = None
    metrics: list[str] = field(default_factory=lambda: ["bleu4", "rougeL", "cider"])
    protocol: str = "both"
    class_score: str = "mean"

    @property
    def keys(self) -> list[str]:
        """The metric keys this evaluation reports (:func:`metric_keys`)."""
        return metric_keys(self.metrics, self.protocol)


@dataclass
class TuneConfig:
    """Ray Tune sweep (Optuna search + ASHA scheduling).

    Attributes:
        num_samples: trials.
        max_concurrent: trials run at once.
        metric: metric optimised; one of ``eval.metrics`` or :data:`LOSS_METRICS`.
        mode: ``"max"`` or ``"min"``.
        space: search space: a name in ``tuning/spaces/`` or a path to a space YAML
            (None = ``default``).
        backbones: LM backbones the sweep may choose from.
        grace_period: ASHA grace period (in evaluation rounds).
        reduction_factor: ASHA reduction factor (>= 2).
        seed: search seed.
        cpus_per_trial: CPUs reserved per trial.
        gpus_per_trial: GPUs reserved per trial (fractions allowed).
        trial_runner: how a trial trains: ``"in_process"`` (the in-process trainer inside the
            trial, reporting each evaluation), ``"ray_train"`` (a ``TorchTrainer`` per trial with
            ``train.num_workers`` DDP workers) or ``"auto"`` (``ray_train`` when the cluster has
            at least ``train.num_workers`` > 1 GPUs, else ``in_process``).
    """

    num_samples: int = 8
    max_concurrent: int = 2
    metric: str = "cider"
    mode: str = "max"
    space: str | None = None
    backbones: list[str] = field(default_factory=lambda: ["tiny"])
    grace_period: int = 1
    reduction_factor: int = 2
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    trial_runner: str = "auto"


#: Section name -> dataclass, in file order.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "tune": TuneConfig,
}

_TOP_LEVEL_KEYS: tuple[str, ...] = (*SECTIONS, "name")


# --------------------------------------------------------------------------------------------
# YAML dialect: like yaml.safe_load, but "1e-4" / "1.0e5" are floats (PyYAML's YAML 1.1 resolver
# reads them as strings). The dumper knows the same rule, so it quotes such strings.
# --------------------------------------------------------------------------------------------

_SCI_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads exponent-only numbers (``1e-4``) as floats, and refuses
    aliases (``*name``): a config has no use for them, and nested aliases expand a few hundred
    bytes of YAML into gigabytes (the "billion laughs" document)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(
                f"YAML alias *{event.anchor} at line {event.start_mark.line + 1}: aliases are "
                "not allowed in configs (write the value out)"
            )
        return super().compose_node(parent, index)


class _Dumper(yaml.SafeDumper):
    """Safe dumper consistent with :class:`_Loader` (quotes strings that look like floats)."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _SCI_FLOAT, list("-+0123456789"))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass


def _yaml_dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------
# Type checking / coercion
# --------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a section dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_SECTION_TYPES: dict[str, dict[str, Any]] = {name: _field_types(c) for name, c in SECTIONS.items()}


def _type_name(tp: Any) -> str:
    """Human name of an annotation: ``int``, ``str or null``, ``list of str``, ..."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return f"list of {len(args)} {_type_name(args[0])}s"
    return getattr(tp, "__name__", str(tp))


def _coerce(dotted: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp`` and return it normalised.

    int -> float where a float is expected; integral floats -> int where an int is expected;
    list -> tuple for tuple fields; bool is never accepted as a number.

    Raises:
        ConfigError: ``"<dotted> = <value!r>: expected <type>"``.
    """

    def fail() -> ConfigError:
        return ConfigError(f"{dotted} = {value!r}: expected {_type_name(tp)}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return _coerce(dotted, value, a)
            except ConfigError:
                pass
        raise fail()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        try:
            return [_coerce(dotted, v, args[0]) for v in value]
        except ConfigError:
            raise fail() from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise fail()
        try:
            return tuple(_coerce(dotted, v, a) for v, a in zip(value, args, strict=True))
        except ConfigError:
            raise fail() from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise TypeError(f"unsupported config annotation {tp!r} for {dotted}")  # pragma: no cover


def _normalise(dotted: str, value: Any) -> Any:
    """Field-specific normalisation applied after type coercion."""
    if dotted == "train.use_gpu":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return value.strip().lower()
    return value


def _coerce_field(section: str, key: str, value: Any) -> Any:
    """Type-check and normalise one field value (``train.use_gpu`` also accepts a bool)."""
    dotted = f"{section}.{key}"
    if dotted == "train.use_gpu" and isinstance(value, bool):
        return _normalise(dotted, value)
    return _normalise(dotted, _coerce(dotted, value, _SECTION_TYPES[section][key]))


# --------------------------------------------------------------------------------------------
# Suggestions
# --------------------------------------------------------------------------------------------


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _suggest_section(name: str) -> str:
    guess = _closest(name, _TOP_LEVEL_KEYS)
    if guess is not None:
        return f"; did you mean '{guess}'?"
    return f"; expected one of {list(_TOP_LEVEL_KEYS)}"


def _unknown_section(name: Any) -> ConfigError:
    return ConfigError(f"unknown section {str(name)!r}{_suggest_section(str(name))}")


def _unknown_key(section: str, key: str) -> ConfigError:
    """``unknown key 'model.alpah'; did you mean 'model.alpha'?`` (searching other sections too)."""
    dotted = f"{section}.{key}"
    guess = _closest(key, list(_SECTION_TYPES[section]))
    if guess is not None:
        return ConfigError(f"unknown key {dotted!r}; did you mean '{section}.{guess}'?")
    for other, fields_ in _SECTION_TYPES.items():
        if other != section and key in fields_:
            return ConfigError(f"unknown key {dotted!r}; did you mean '{other}.{key}'?")
    everywhere = [f"{s}.{k}" for s, fs in _SECTION_TYPES.items() for k in fs]
    guess = _closest(dotted, everywhere)
    hint = (
        f"; did you mean '{guess}'?" if guess else f"; valid keys: {list(_SECTION_TYPES[section])}"
    )
    return ConfigError(f"unknown key {dotted!r}{hint}")


def _choice_error(dotted: str, value: Any, choices: Sequence[str]) -> str:
    msg = f"{dotted} = {value!r} is not one of {list(choices)}"
    guess = _closest(value, choices) if isinstance(value, str) else None
    return msg + (f"; did you mean '{guess}'?" if guess else "")


# --------------------------------------------------------------------------------------------
# Raw-dict helpers (the shape of a YAML file / to_dict())
# --------------------------------------------------------------------------------------------


def _check_keys(raw: Mapping[str, Any], where: str = "") -> None:
    """Raise on unknown sections/keys or non-mapping sections in a raw config dict."""
    suffix = f" (in {where})" if where else ""
    for top, body in raw.items():
        if top == "name":
            continue
        if top not in SECTIONS:
            raise ConfigError(str(_unknown_section(top)) + suffix)
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(f"{top} = {body!r}: expected a mapping of keys{suffix}")
        for key in body:
            if key not in _SECTION_TYPES[top]:
                raise ConfigError(str(_unknown_key(top, str(key))) + suffix)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``over``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``"section.key=value"`` into ``("section.key", value)``, the value read as YAML.

    ``name=VALUE`` (the top-level experiment name) is accepted too.

    Raises:
        ConfigError: no ``=``, no section, an empty part or an unparsable value.
    """
    if "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected SECTION.KEY=VALUE (no '=')")
    key, _, value_text = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if key != "name" and (len(parts) != 2 or not all(parts)):
        raise ConfigError(
            f"malformed override {text!r}: expected SECTION.KEY=VALUE, e.g. model.alpha=0.3"
        )
    try:
        value = _yaml_load(value_text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"override {text!r}: cannot parse value as YAML ({problem})") from None
    return key, value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, where: str = "") -> None:
    """Set ``raw[section][key] = value`` after checking the names exist."""
    suffix = f" (in {where})" if where else ""
    if dotted == "name":
        raw["name"] = value
        return
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        raise ConfigError(str(_unknown_section(section)) + suffix)
    if key not in _SECTION_TYPES[section]:
        raise ConfigError(str(_unknown_key(section, key)) + suffix)
    body = raw.get(section)
    if not isinstance(body, dict):
        body = {} if body is None else body
        raw[section] = body
    if not isinstance(body, dict):
        raise ConfigError(f"{section} = {body!r}: expected a mapping of keys")
    body[key] = value


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        dotted, value = parse_override(text)
        _set_dotted(raw, dotted, value, where=f"--set {text!r}")
    return raw


# --------------------------------------------------------------------------------------------
# The experiment config
# --------------------------------------------------------------------------------------------


@dataclass
class ExperimentConfig:
    """The whole experiment: one object passed from the CLI to every stage.

    Attributes:
        data: :class:`DataConfig`.
        model: :class:`ModelConfig`.
        train: :class:`TrainConfig`.
        eval: :class:`EvalConfig`.
        tune: :class:`TuneConfig`.
        name: experiment name (run directories and Ray run names derive from it); a loaded YAML
            that does not set it is named after its file stem.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    name: str = "default"

    # ---- conversion ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe nested dict (tuples become lists); inverse of :meth:`from_dict`."""

        def plain(v: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        out: dict[str, Any] = {"name": self.name}
        for section in SECTIONS:
            obj = getattr(self, section)
            out[section] = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return out

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"model.alpha": 0.1, ...}``: handy for logging and Ray Tune result columns."""
        d = self.to_dict()
        flat: dict[str, Any] = {"name": d.pop("name")}
        for section, body in d.items():
            flat.update({f"{section}.{k}": v for k, v in body.items()})
        return flat

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, validate: bool = True) -> ExperimentConfig:
        """Build from a (possibly partial) nested dict; missing fields keep their defaults.

        Args:
            d: ``{"name": ..., "data": {...}, "model": {...}, ...}``; None or ``{}`` = defaults.
            validate: run :meth:`validate` (type checks always run).

        Raises:
            ConfigError: unknown section or key, wrong type, or (with ``validate``) a rule broken.
        """
        d = {} if d is None else d
        if not isinstance(d, Mapping):
            raise ConfigError(f"config = {d!r}: expected a mapping of sections")
        _check_keys(d)
        errors: list[str] = []
        kwargs: dict[str, Any] = {}
        for section, section_cls in SECTIONS.items():
            values: dict[str, Any] = {}
            for key, value in (d.get(section) or {}).items():
                try:
                    values[key] = _coerce_field(section, key, value)
                except ConfigError as exc:
                    errors.extend(exc.errors)
            kwargs[section] = section_cls(**values)
        if "name" in d:
            kwargs["name"] = d["name"]
        if errors:
            raise ConfigError(errors)
        cfg = cls(**kwargs)
        if validate:
            cfg.validate()
        else:
            cfg._check_types()
        return cfg

    def updated(self, changes: Mapping[str, Any]) -> ExperimentConfig:
        """Return a validated copy with dotted-key changes applied, e.g. ``{"model.alpha": 0.3}``.

        Values are taken as Python values (not YAML text); tuning code builds trial configs so.
        """
        raw = self.to_dict()
        for dotted, value in changes.items():
            if dotted != "name" and dotted.count(".") != 1:
                raise ConfigError(f"malformed key {dotted!r}: expected SECTION.KEY")
            _set_dotted(raw, dotted, value)
        return ExperimentConfig.from_dict(raw)

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the full config as YAML (``load_config(path)`` gives back an equal config).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# Graph4MM experiment config (written by g4mm.config; load with --config PATH)\n"
        path.write_text(header + _yaml_dump(self.to_dict()), encoding="utf-8")
        return path

    # ---- validation ------------------------------------------------------------------------

    def _check_types(self) -> None:
        """Type-check every field, normalising values in place (int -> float, list -> tuple)."""
        errors: list[str] = []
        if not isinstance(self.name, str):
            errors.append(f"name = {self.name!r}: expected str")
        for section, section_cls in SECTIONS.items():
            obj = getattr(self, section)
            if not isinstance(obj, section_cls):
                errors.append(f"{section} = {obj!r}: expected {section_cls.__name__}")
                continue
            for key in _SECTION_TYPES[section]:
                try:
                    setattr(obj, key, _coerce_field(section, key, getattr(obj, key)))
                except ConfigError as exc:
                    errors.extend(exc.errors)
        if errors:
            raise ConfigError(errors)

    def validate(self) -> ExperimentConfig:
        """Check types and value rules; normalise types in place.

        Rules: ``0 < model.alpha < 1``; ``model.num_hops >= 0``; ``data.tau >= 0``;
        ``model.num_query_tokens >= 1``; ``model.hidden_dim % model.num_heads == 0``; sizes,
        batch sizes and learning rate positive and finite; ``train.grad_clip >= 0``;
        ``train.warmup_steps < train.max_steps``; ``tune.mode = 'min'`` for a loss metric;
        ``0 <= model.dropout < 1``; choice fields within their choices.

        Returns:
            ``self``, for chaining.

        Raises:
            ConfigError: listing every broken rule, each naming the dotted field and its value.
        """
        self._check_types()
        errors: list[str] = []
        d, m, t, e, u = self.data, self.model, self.train, self.eval, self.tune

        def at_least(dotted: str, value: float, low: float) -> None:
            if not (math.isfinite(value) and value >= low):  # NaN compares False both ways
                errors.append(f"{dotted} = {value!r}: must be a finite number >= {low}")

        def positive(dotted: str, value: float) -> None:
            if not (math.isfinite(value) and value > 0):
                errors.append(f"{dotted} = {value!r}: must be a finite number > 0")

        def choice(dotted: str, value: str, choices: Sequence[str]) -> None:
            if value not in choices:
                errors.append(_choice_error(dotted, value, choices))

        def nonempty(dotted: str, value: str | None) -> None:
            if value is not None and not value.strip():
                errors.append(f"{dotted} = {value!r}: must not be empty")

        nonempty("name", self.name)

        # data
        choice("data.dataset", d.dataset, DATASETS)
        nonempty("data.input", d.input)
        nonempty("data.images", d.images)
        nonempty("data.artifact_dir", d.artifact_dir)
        at_least("data.tau", d.tau, 0)
        at_least("data.max_text_nodes", d.max_text_nodes, 1)
        at_least("data.max_image_nodes", d.max_image_nodes, 0)
        for key in ("max_input_tokens", "max_target_tokens", "num_pages", "num_products"):
            at_least(f"data.{key}", getattr(d, key), 1)
        at_least("data.image_size", d.image_size, 1)
        at_least("data.seed", d.seed, 0)
        at_least("data.num_blocks", d.num_blocks, 1)

        # model
        choice("model.variant", m.variant, VARIANTS)
        for key in ("lm", "vision", "text_encoder"):
            nonempty(f"model.{key}", getattr(m, key))
        at_least("model.hidden_dim", m.hidden_dim, 1)
        at_least("model.num_heads", m.num_heads, 1)
        if m.hidden_dim >= 1 and m.num_heads >= 1 and m.hidden_dim % m.num_heads:
            errors.append(
                f"model.hidden_dim = {m.hidden_dim}: must be divisible by "
                f"model.num_heads = {m.num_heads}"
            )
        if not 0.0 < m.alpha < 1.0:
            errors.append(f"model.alpha = {m.alpha!r}: must lie strictly in (0, 1)")
        at_least("model.num_hops", m.num_hops, 0)
        at_least("model.max_hop", m.max_hop, 1)
        at_least("model.num_query_tokens", m.num_query_tokens, 1)
        at_least("model.tokens_per_image", m.tokens_per_image, 1)
        choice("model.context", m.context, CONTEXTS)
        choice("model.token_placement", m.token_placement, TOKEN_PLACEMENTS)
        if m.context == "pooled" and m.token_placement != "after_text":
            errors.append(
                f"model.context = 'pooled' with model.token_placement = {m.token_placement!r}: "
                "the pooled layout puts its graph tokens after the prompt; set "
                "model.token_placement = after_text"
            )
        if m.hop_phrases and m.context != "raw":
            errors.append(
                f"model.hop_phrases with model.context = {m.context!r}: hop phrases stand "
                "before neighbour text, which only the raw layout reads; set model.context = raw"
            )
        at_least("model.qformer_layers", m.qformer_layers, 1)
        at_least("model.ffn_mult", m.ffn_mult, 1)
        if not 0.0 <= m.dropout < 1.0:
            errors.append(f"model.dropout = {m.dropout!r}: must lie in [0, 1)")
        choice("model.diffusion_impl", m.diffusion_impl, DIFFUSION_IMPLS)
        choice("model.gnn_type", m.gnn_type, GNN_TYPES)
        at_least("model.gnn_layers", m.gnn_layers, 1)

        # train
        at_least("train.seed", t.seed, 0)
        at_least("train.num_workers", t.num_workers, 1)
        choice("train.use_gpu", t.use_gpu, USE_GPU_CHOICES)
        positive("train.cpus_per_worker", t.cpus_per_worker)
        at_least("train.batch_size", t.batch_size, 1)
        at_least("train.grad_accum", t.grad_accum, 1)
        if not (t.lr > 0 and math.isfinite(t.lr)):
            errors.append(f"train.lr = {t.lr!r}: must be a finite number > 0")
        at_least("train.weight_decay", t.weight_decay, 0)
        if not all(0.0 <= b < 1.0 for b in t.betas):
            errors.append(f"train.betas = {list(t.betas)!r}: each must lie in [0, 1)")
        at_least("train.warmup_steps", t.warmup_steps, 0)
        at_least("train.max_steps", t.max_steps, 1)
        at_least("train.eval_every", t.eval_every, 1)
        if 0 <= t.max_steps <= t.warmup_steps:
            errors.append(
                f"train.warmup_steps = {t.warmup_steps}: must be < train.max_steps = "
                f"{t.max_steps} (the learning rate would never leave its warm-up)"
            )
        if not t.grad_clip >= 0:
            errors.append(f"train.grad_clip = {t.grad_clip!r}: must be >= 0 (0 disables)")
        choice("train.precision", t.precision, PRECISIONS)
        choice("train.tracking", t.tracking, TRACKERS)
        choice("train.frozen_dtype", t.frozen_dtype, PRECISIONS)
        choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
        choice("train.compile_scope", t.compile_scope, COMPILE_SCOPES)
        if t.compile_scope == "forward" and t.compile_mode in CUDA_GRAPH_MODES:
            errors.append(
                f"train.compile_scope = 'forward' with train.compile_mode = {t.compile_mode!r}: "
                "CUDA graphs over the whole forward ran at 4.8 samples/s against 298 for "
                "compile_scope = 'lm+adapter' on one H100 (bench/RESULTS.md); use compile_scope "
                "'lm' or 'lm+adapter' with CUDA graphs"
            )
        at_least("train.bucket_window", t.bucket_window, 0)
        at_least("train.step_graph_pad", t.step_graph_pad, 1)
        if t.step_graph and t.compile and t.compile_mode in CUDA_GRAPH_MODES:
            errors.append(
                f"train.step_graph with train.compile_mode = {t.compile_mode!r}: the step is "
                "already one CUDA graph; compile with mode 'default' or "
                "'max-autotune-no-cudagraphs' inside it, or turn step_graph off"
            )
        nonempty("train.output_dir", t.output_dir)
        nonempty("train.storage_path", t.storage_path)
        at_least("train.max_failures", t.max_failures, -1)
        at_least("train.num_to_keep", t.num_to_keep, 1)

        # eval
        at_least("eval.batch_size", e.batch_size, 1)
        at_least("eval.max_new_tokens", e.max_new_tokens, 1)
        at_least("eval.num_beams", e.num_beams, 1)
        if e.max_samples is not None:
            at_least("eval.max_samples", e.max_samples, 1)
        if not e.metrics:
            errors.append("eval.metrics = []: must name at least one metric")
        for i, metric in enumerate(e.metrics):
            choice(f"eval.metrics[{i}]", metric, METRICS)
        if len(set(e.metrics)) != len(e.metrics):
            errors.append(f"eval.metrics = {e.metrics!r}: contains duplicates")
        choice("eval.protocol", e.protocol, PROTOCOLS)
        choice("eval.class_score", e.class_score, CLASS_SCORES)

        # tune
        at_least("tune.num_samples", u.num_samples, 1)
        at_least("tune.max_concurrent", u.max_concurrent, 1)
        if all(metric in METRICS for metric in e.metrics) and e.protocol in PROTOCOLS:
            choice("tune.metric", u.metric, [*e.keys, *LOSS_METRICS])
        choice("tune.mode", u.mode, TUNE_MODES)
        if u.metric in LOSS_METRICS and u.mode != "min":
            errors.append(
                f"tune.mode = {u.mode!r} with tune.metric = {u.metric!r}: a loss is minimised; "
                "set tune.mode = 'min'"
            )
        nonempty("tune.space", u.space)
        if not u.backbones:
            errors.append("tune.backbones = []: must name at least one backbone")
        for i, backbone in enumerate(u.backbones):
            nonempty(f"tune.backbones[{i}]", backbone)
        at_least("tune.grace_period", u.grace_period, 1)
        at_least("tune.reduction_factor", u.reduction_factor, 2)
        at_least("tune.seed", u.seed, 0)
        positive("tune.cpus_per_trial", u.cpus_per_trial)
        at_least("tune.gpus_per_trial", u.gpus_per_trial, 0)
        choice("tune.trial_runner", u.trial_runner, TRIAL_RUNNERS)

        if errors:
            raise ConfigError(errors)
        return self


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def available_configs() -> list[str]:
    """Names of the configs shipped in ``g4mm/configs/`` (sorted)."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.stem for p in CONFIG_DIR.iterdir() if p.suffix in _YAML_SUFFIXES)


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(_YAML_SUFFIXES)


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Map a config name (``smoke``) or a ``.yaml``/``.yml`` path to an existing file.

    Raises:
        ConfigError: missing file, or unknown name (listing available names, with a suggestion).
    """
    text = os.fspath(name_or_path)
    if _is_path(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {text}")
        return path
    names = available_configs()
    if text in names:
        for suffix in _YAML_SUFFIXES:
            candidate = CONFIG_DIR / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    guess = _closest(text, names)
    hint = f"; did you mean '{guess}'?" if guess else ""
    raise ConfigError(
        f"unknown config {text!r}{hint} (available: {', '.join(names) or 'none'}; "
        "or pass a path ending in .yaml/.yml)"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at top level, got {raw!r}")
    return raw


def _load_tree(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` with its ``base:`` chain resolved and merged (base first)."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"config inheritance cycle: {chain}")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    _check_keys(raw, where=str(path))
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"base = {base!r} (in {path}): expected a config name or .yaml path")
    if _is_path(base):
        base_path = (path.parent / Path(base).expanduser()).resolve()
        if not base_path.is_file():
            raise ConfigError(f"base {base!r} (in {path}) not found: {base_path}")
    else:
        base_path = resolve_config_path(base)
    return _deep_merge(_load_tree(base_path, (*stack, path)), raw)


def load_config(
    name_or_path: str | os.PathLike[str] = "default", overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Load a named or file config, apply ``SECTION.KEY=VALUE`` overrides, validate.

    Args:
        name_or_path: a name from :func:`available_configs` or a path ending in .yaml/.yml.
        overrides: strings such as ``"model.alpha=0.3"``; values parsed as YAML; applied in order.

    Returns:
        The validated config. Its ``name`` is the file's ``name:`` if set, else the file stem.

    Raises:
        ConfigError: unknown name/section/key, malformed override, wrong type or broken rule.
    """
    path = resolve_config_path(name_or_path)
    leaf = _read_yaml(path)
    raw = _load_tree(path)
    if "name" not in leaf:
        raw["name"] = path.stem
    _apply_overrides(raw, overrides)
    return ExperimentConfig.from_dict(raw)


# --------------------------------------------------------------------------------------------
# argparse helpers
# --------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser, default: str = "default") -> None:
    """Add ``--config NAME|PATH`` and repeatable ``--set SECTION.KEY=VALUE`` to ``parser``.

    The parsed values land in ``args.config`` and ``args.overrides``; turn them into a config
    with :func:`config_from_args`.
    """
    names = (", ".join(available_configs()) or "none found").replace("%", "%%")
    parser.add_argument(
        "--config",
        default=default,
        metavar="NAME|PATH",
        help=(
            f"experiment config: a shipped name ({names}) or a path to a .yaml/.yml file "
            "(may say 'base: NAME' to inherit). Default: %(default)s"
        ),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="SECTION.KEY=VALUE",
        help=(
            "override one config field after loading; repeatable; VALUE is parsed as YAML, "
            "e.g. --set model.alpha=0.3 --set train.lr=1e-3 --set eval.metrics=[bleu4,cider]"
        ),
    )


def config_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> ExperimentConfig:
    """Build the config from ``args.config`` and ``args.overrides`` (from add_config_arguments).

    Args:
        args: parsed arguments.
        parser: if given, a :class:`ConfigError` becomes ``parser.error(...)`` (usage + exit 2).
    """
    try:
        return load_config(
            getattr(args, "config", "default"), getattr(args, "overrides", None) or ()
        )
    except ConfigError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
        raise  # pragma: no cover - parser.error exits

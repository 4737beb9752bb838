"""Search spaces as YAML files: define-by-run for Optuna, with conditional parameters.

A space file lists parameters in sampling order; each sets one config field::

    parameters:
      variant:   {type: categorical, target: model.variant, choices: [hop_diffused, hop_aware]}
      alpha:     {type: float, target: model.alpha, low: 0.01, high: 0.99,
                  when: {variant: [hop_diffused]}}
      num_hops:  {type: int, target: model.num_hops, low: 0, high: 8,
                  when: {variant: [hop_diffused]}}
      backbone:  {type: categorical, target: model.lm, choices_from: tune.backbones}
      lr:        {type: float, target: train.lr, low: 1.0e-5, high: 1.0e-2, log: true}

- ``type``: ``categorical`` (``choices``, or ``choices_from`` a list field of the experiment
  config), ``float`` or ``int`` (``low`` <= value <= ``high``, optional ``log`` and ``step``).
- ``when``: sample the parameter only when every named earlier categorical parameter took
  one of the listed values; otherwise it does not exist in that trial (Optuna's define-by-run
  style), and the config keeps its own value. A ``when`` key that is a config field
  (``model.token_placement: [at_images]``) is a condition on the experiment config: where it
  fails the parameter is not part of the sweep at all (:meth:`SearchSpace.resolve`).

A trial's config is the experiment config with each sampled value written to its ``target``
(:func:`trial_config`). This module needs only PyYAML (Optuna is imported where a study is
rebuilt), so spaces can be checked without Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from g4mm.config import SECTIONS, ConfigError, ExperimentConfig, _yaml_load

__all__ = [
    "GRID_TARGETS",
    "PARAM_TYPES",
    "Param",
    "SearchSpace",
    "SpaceError",
    "available_spaces",
    "load_space",
    "resolve_space_path",
    "trial_config",
]

PARAM_TYPES: tuple[str, ...] = ("categorical", "float", "int")
_PARAM_KEYS = frozenset(
    {"type", "target", "choices", "choices_from", "low", "high", "log", "step", "when"}
)
_SPACE_KEYS = frozenset({"description", "parameters"})
#: Parameters of ``--grid variants`` and the config fields they set.
GRID_TARGETS: dict[str, str] = {"variant": "model.variant", "seed": "train.seed"}


class SpaceError(ConfigError):
    """A malformed search space, or one whose values the experiment config rejects."""


def _known_field(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    cls = SECTIONS.get(section)
    return cls is not None and key in {f.name for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Param:
    """One searched parameter.

    Attributes:
        name: the parameter's name (a leaderboard column, an Optuna parameter).
        target: the dotted config field it sets, e.g. ``model.alpha``.
        type: one of :data:`PARAM_TYPES`.
        choices: categorical values (after ``choices_from`` is resolved).
        choices_from: dotted config field holding the choices (resolved by
            :meth:`SearchSpace.resolve`).
        low, high: numeric bounds, both inclusive.
        log: sample on a log scale.
        step: discretisation step (None = continuous floats / step 1 ints).
        when: earlier categorical parameter -> the values for which this one exists.
        when_config: dotted config field -> the values for which this one is in the sweep.
    """

    name: str
    target: str
    type: str
    choices: tuple[Any, ...] = ()
    choices_from: str | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    when_config: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled before it."""
        return all(values.get(name) in allowed for name, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Draw a value through an Optuna ``trial`` (``suggest_categorical/float/int``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        step = int(self.step) if self.step else 1
        return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=step)

    def distribution(self) -> Any:
        """The matching ``optuna.distributions`` object (for rebuilding a study)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        step = int(self.step or 1)
        return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)

    def candidates(self) -> list[Any]:
        """Values that bound the parameter (each choice, or ``low`` and ``high``)."""
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def describe(self) -> str:
        """One line: ``alpha: float [0.01, 0.99] -> model.alpha (when variant in [...])``."""
        if self.type == "categorical":
            dist = f"one of {list(self.choices) or self.choices_from}"
        else:
            dist = f"{self.type} [{self.low}, {self.high}]" + (" log" if self.log else "")
        conditions = {**self.when_config, **self.when}
        cond = "".join(f" when {k} in {list(v)}" for k, v in conditions.items())
        return f"{self.name}: {dist} -> {self.target}{cond}"


@dataclass(frozen=True)
class SearchSpace:
    """An ordered tuple of :class:`Param`; calling it samples a trial (define-by-run).

    Instances pickle (OptunaSearch saves its space with the experiment state for resume).
    """

    params: tuple[Param, ...]
    name: str = "custom"
    description: str = ""

    def __call__(self, trial: Any) -> None:
        """Optuna define-by-run: suggest every parameter that is active in this trial."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def first_points(self, target: str = "model.lm") -> list[dict[str, Any]]:
        """One Optuna warm-start point per choice of the unconditional categorical parameter
        that sets ``target`` (the backbone axis), the other parameters left to the sampler: a
        seeded 2-trial search over ``tune.backbones: [tiny, smollm2-135m]`` drew ``tiny``
        twice, comparing no backbone. Empty when that axis has fewer than two choices."""
        for param in self.params:
            if param.target == target and param.type == "categorical" and not param.when:
                return [{param.name: c} for c in param.choices] if len(param.choices) > 1 else []
        return []

    @property
    def targets(self) -> dict[str, str]:
        """Parameter name -> dotted config field."""
        return {p.name: p.target for p in self.params}

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def resolve(self, cfg: ExperimentConfig) -> SearchSpace:
        """Fill ``choices_from`` from ``cfg`` and check every bound value against ``cfg``.

        Raises:
            SpaceError: an empty choice list, a ``when`` value outside its parameter's choices,
                or a value the config rejects (naming the parameter and the config's message).
        """
        flat = cfg.to_flat_dict()
        params, errors = [], []
        for p in self.params:
            if any(flat[k] not in allowed for k, allowed in p.when_config.items()):
                continue  # not a parameter of sweeps of this config
            if p.choices_from is not None:
                choices = flat[p.choices_from]
                if not isinstance(choices, (list, tuple)) or not choices:
                    errors.append(
                        f"{p.name}: choices_from {p.choices_from} = {choices!r}: "
                        "expected a non-empty list"
                    )
                    continue
                p = dataclasses.replace(p, choices=tuple(choices))
            params.append(p)
        resolved = dataclasses.replace(self, params=tuple(params))
        for p in resolved.params:
            for name, allowed in p.when.items():
                other = resolved.get(name)
                if other is None:
                    errors.append(f"{p.name}: when {name}: {name} is not part of this sweep")
                    continue
                bad = [v for v in allowed if v not in other.choices]
                if bad:
                    errors.append(
                        f"{p.name}: when {name} in {bad}: not among {name}'s choices "
                        f"{list(other.choices)}"
                    )
            for value in p.candidates():
                try:
                    cfg.updated({p.target: value})
                except ConfigError as exc:
                    errors.extend(f"{p.name} = {value!r}: {e}" for e in exc.errors)
        if errors:
            raise SpaceError([f"search space {self.name!r}: {e}" for e in errors])
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """The YAML shape (``load_space`` of its dump gives back an equal space)."""
        out: dict[str, Any] = {}
        for p in self.params:
            d: dict[str, Any] = {"type": p.type, "target": p.target}
            if p.type == "categorical":
                d["choices"] = list(p.choices)
            else:
                d.update(low=p.low, high=p.high)
                if p.log:
                    d["log"] = True
                if p.step is not None:
                    d["step"] = p.step
            if p.when or p.when_config:
                d["when"] = {k: list(v) for k, v in {**p.when_config, **p.when}.items()}
            out[p.name] = d
        return {"description": self.description, "parameters": out}

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        path.write_text(f"# search space {self.name!r} as used by this sweep\n{text}")
        return path


# ------------------------------------------------------------------------------ loading


def available_spaces(spaces_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the ``*.yaml`` spaces in ``spaces_dir``."""
    root = Path(spaces_dir)
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def resolve_space_path(name_or_path: str | None, spaces_dir: str | os.PathLike[str]) -> Path:
    """A space name (``default``) in ``spaces_dir``, or a path to a ``.yaml``/``.yml`` file.

    Raises:
        SpaceError: the file does not exist (listing the available names).
    """
    text = name_or_path or "default"
    path = Path(text) if text.endswith((".yaml", ".yml")) else Path(spaces_dir) / f"{text}.yaml"
    if not path.is_file():
        names = ", ".join(available_spaces(spaces_dir)) or "none"
        raise SpaceError(
            f"search space {text!r} not found at {path} (available: {names}; "
            "or pass a path ending in .yaml)"
        )
    return path


def _number(where: str, key: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where}: {key} = {value!r}: expected a number")
    if integer and not float(value).is_integer():
        raise SpaceError(f"{where}: {key} = {value!r}: expected an integer")
    return int(value) if integer else float(value)


def _parse_param(where: str, name: str, body: Any, earlier: dict[str, Param]) -> Param:
    if not isinstance(body, Mapping):
        raise SpaceError(f"{where}: expected a mapping of settings, got {body!r}")
    unknown = sorted(set(body) - _PARAM_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown keys {unknown}; expected some of {sorted(_PARAM_KEYS)}")
    kind, target = body.get("type"), body.get("target")
    if kind not in PARAM_TYPES:
        raise SpaceError(f"{where}: type = {kind!r}: expected one of {list(PARAM_TYPES)}")
    if not isinstance(target, str) or not _known_field(target):
        raise SpaceError(f"{where}: target = {target!r}: expected a config field like model.alpha")
    when: dict[str, tuple[Any, ...]] = {}
    when_config: dict[str, tuple[Any, ...]] = {}
    for other, allowed in (body.get("when") or {}).items():
        values = tuple(allowed if isinstance(allowed, list) else [allowed])
        if "." in str(other) and _known_field(str(other)):
            when_config[str(other)] = values
        elif other in earlier and earlier[other].type == "categorical":
            when[other] = values
        else:
            raise SpaceError(
                f"{where}: when {other!r}: must name an earlier categorical parameter or a "
                "config field (e.g. model.token_placement)"
            )
    if kind == "categorical":
        choices, source = body.get("choices"), body.get("choices_from")
        if (choices is None) == (source is None):
            raise SpaceError(f"{where}: give exactly one of choices / choices_from")
        if source is not None and not (isinstance(source, str) and _known_field(source)):
            raise SpaceError(f"{where}: choices_from = {source!r}: expected a config field")
        if choices is not None and (not isinstance(choices, list) or not choices):
            raise SpaceError(f"{where}: choices = {choices!r}: expected a non-empty list")
        extra = {k for k in ("low", "high", "log", "step") if k in body}
        if extra:
            raise SpaceError(f"{where}: {sorted(extra)} do not apply to a categorical parameter")
        return Param(
            name, target, kind, tuple(choices or ()), source, when=when, when_config=when_config
        )
    integer = kind == "int"
    if "low" not in body or "high" not in body:
        raise SpaceError(f"{where}: a {kind} parameter needs low and high")
    low = _number(where, "low", body["low"], integer)
    high = _number(where, "high", body["high"], integer)
    if low > high:
        raise SpaceError(f"{where}: low = {low} > high = {high}")
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log = {log!r}: expected true or false")
    if log and low <= 0:
        raise SpaceError(f"{where}: log scale needs low > 0 (low = {low})")
    step = body.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
        if step <= 0 or log:
            raise SpaceError(f"{where}: step = {step}: must be > 0 and not combined with log")
    if "choices" in body or "choices_from" in body:
        raise SpaceError(f"{where}: choices apply to categorical parameters only")
    return Param(
        name, target, kind, low=low, high=high, log=log, step=step, when=when,
        when_config=when_config,
    )  # fmt: skip


def load_space(
    name_or_path: str | None, spaces_dir: str | os.PathLike[str] = "tuning/spaces"
) -> SearchSpace:
    """Read and check a space file (see the module docstring for the format).

    Raises:
        SpaceError: missing file, bad YAML, unknown keys, a bad bound, an unknown config field,
            two parameters setting one field, or a ``when`` naming no earlier categorical.
    """
    path = resolve_space_path(name_or_path, spaces_dir)
    try:
        raw = _yaml_load(path.read_text(encoding="utf-8"))  # safe, and no aliases
    except yaml.YAMLError as exc:
        raise SpaceError(f"cannot parse search space {path}: {exc}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("parameters"), Mapping):
        raise SpaceError(f"{path}: expected a mapping with a 'parameters' mapping")
    unknown = sorted(set(raw) - _SPACE_KEYS)
    if unknown:
        raise SpaceError(f"{path}: unknown keys {unknown}; expected {sorted(_SPACE_KEYS)}")
    if not raw["parameters"]:
        raise SpaceError(f"{path}: 'parameters' is empty")
    params: dict[str, Param] = {}
    for name, body in raw["parameters"].items():
        where = f"{path}: parameter {name!r}"
        param = _parse_param(where, str(name), body, params)
        clash = next((p.name for p in params.values() if p.target == param.target), None)
        if clash is not None:
            raise SpaceError(f"{where}: target {param.target} is already set by {clash!r}")
        params[param.name] = param
    description = str(raw.get("description") or "")
    return SearchSpace(tuple(params.values()), name=path.stem, description=description)


def trial_config(
    base: ExperimentConfig | Mapping[str, Any],
    params: Mapping[str, Any],
    targets: Mapping[str, str],
) -> ExperimentConfig:
    """``base`` with each sampled parameter written to its target field (validated).

    Keys of ``params`` without a target (Tune's own bookkeeping) are ignored.
    """
    if not isinstance(base, ExperimentConfig):
        base = ExperimentConfig.from_dict(base)
    changes = {targets[k]: v for k, v in params.items() if k in targets}
    return base.updated(changes)


def grid_params(variants: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The ``--grid variants`` trials in order: every variant with every seed."""
    return [{"variant": v, "seed": int(s)} for v in variants for s in seeds]

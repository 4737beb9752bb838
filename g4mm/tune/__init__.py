"""Sweeps over Graph4MM configs: search spaces, trial configs, leaderboards and reports.

Ray-free modules (importable anywhere, also without Ray):

- :mod:`g4mm.tune.space`: search spaces read from YAML (define-by-run for Optuna, conditional
  parameters), the grid of ablation variants, and trial configs built from sampled values;
- :mod:`g4mm.tune.plan`: a sweep's settings (:class:`~g4mm.tune.plan.SweepSpec`);
- :mod:`g4mm.tune.records`: one :class:`~g4mm.tune.records.TrialRecord` per trial, the
  leaderboard (CSV + Markdown) and the best trial's config;
- :mod:`g4mm.tune.report`: Optuna parameter importances, the ablation table in the paper's
  layout, and the PNG plots; :mod:`g4mm.tune.outputs` writes them all plus the summary.

Ray modules (import Ray): :mod:`g4mm.tune.ray_trial` (what one trial runs),
:mod:`g4mm.tune.ray_search` (the ``tune.Tuner`` with OptunaSearch + ASHA, grid, resume),
:mod:`g4mm.tune.ray_progress` (console progress) and :mod:`g4mm.tune.ray_results` (trial
records from Tune's saved state).
The command line is ``tuning/search.py``.
"""

from g4mm.tune.space import Param, SearchSpace, SpaceError, load_space

__all__ = ["Param", "SearchSpace", "SpaceError", "load_space"]

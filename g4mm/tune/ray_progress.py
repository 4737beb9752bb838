"""Console progress of a sweep (Ray module): one line per trial event."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from g4mm.tune.ray_trial import TEST_PHASE

__all__ = ["SweepProgress"]


class SweepProgress(tune.Callback):
    """One line per trial event: start (with its parameters), evaluation, end; ``n/N done``."""

    def __init__(self, metric: str, total: int, names: Sequence[str]) -> None:
        self.metric, self.total, self.names = metric, total, list(names)
        self.start = time.perf_counter()

    def _say(self, text: str) -> None:
        print(f"[sweep +{time.perf_counter() - self.start:.0f}s] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        params = ", ".join(
            f"{k}={_short(trial.config[k])}" for k in self.names if k in trial.config
        )
        self._say(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any
    ) -> None:
        value = _short(result.get(self.metric))
        if result.get("phase") == TEST_PHASE:
            tests = ", ".join(
                f"{k}={_short(v)}"
                for k, v in result.items()
                if k.startswith("test_") and k != "test_loss"
            )
            self._say(f"trial {trial.trial_id} tested: best {self.metric}={value}; {tests}")
        else:
            self._say(
                f"trial {trial.trial_id} eval {result.get('training_iteration')} "
                f"(step {_short(result.get('step'))}): {self.metric}={value}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        last = trial.last_result or {}
        how = "completed" if last.get("phase") == TEST_PHASE else "stopped early by ASHA"
        self._say(f"trial {trial.trial_id} {how}")
        self._done(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._say(f"trial {trial.trial_id} FAILED (see {trial.error_file or 'its trial dir'})")
        self._done(trials, trial)

    def _done(self, trials: list, trial: Trial) -> None:
        finished = {t.trial_id for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)}
        finished.add(trial.trial_id)
        self._say(f"{len(finished)}/{self.total} trials done")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.4g}"
    return str(value)

"""What a person watching a sweep sees while it runs: one line per trial start and end, with its settings,
its score beside the baseline's, and the time left (instead of Tune's tables, which name a "best trial"
without the baseline)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray import tune


class Progress(tune.Callback):
    """``trial k of N`` lines for the console; ``label`` turns a trial's config into its short name."""

    def __init__(self, total: int, metric: str, baseline: float, max_steps: int, label):
        self.total, self.metric, self.baseline, self.max_steps, self.label = total, metric, baseline, max_steps, label
        self.started: dict[str, int] = {}
        self.done = 0
        self.first_start: float | None = None

    def _name(self, trial) -> str:
        try:
            return self.label(trial.config) or trial.trial_id
        except Exception:  # a label is a courtesy: never a reason to stop the sweep
            return trial.trial_id

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.started:
            return  # a restarted trial
        self.started[trial.trial_id] = len(self.started) + 1
        self.first_start = self.first_start or time.monotonic()
        print(f"[sdsweep] trial {self.started[trial.trial_id]} of {self.total} started: {self._name(trial)}",
              flush=True)  # fmt: skip

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        result = trial.last_result or {}
        value, step = result.get(self.metric), result.get("step")
        short = self.metric.removeprefix("eval/")
        score = ""
        if isinstance(value, int | float) and math.isfinite(value):
            score = f", {short} {value:.4f} (baseline {self.baseline:.4f})"
        stopped = ""
        if isinstance(step, int | float) and step < self.max_steps:
            stopped = f", stopped early by the scheduler at step {int(step)}"
        print(f"[sdsweep] trial {self.done} of {self.total} done: {self._name(trial)}{score}{stopped}{self._eta()}",
              flush=True)  # fmt: skip

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        reason = "see its MLflow run"
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            lines = [line for line in Path(error_file).read_text(errors="replace").splitlines() if line.strip()]
            reason = lines[-1][:200] if lines else reason
        print(f"[sdsweep] trial {self.done} of {self.total} failed: {self._name(trial)}: {reason}{self._eta()}",
              flush=True)  # fmt: skip

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0 or self.first_start is None or self.done == 0:
            return ""
        seconds = (time.monotonic() - self.first_start) / self.done * left
        return f"; about {seconds / 60:.0f} min left" if seconds >= 90 else f"; about {seconds:.0f} s left"

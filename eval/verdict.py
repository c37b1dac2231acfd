"""Whether a trial beats the baseline: its difference on the same prompts and seeds, with the spread of that
difference, and the sentence a person reads.

A trial and the baseline are scored on the same prompts with the same seeds, so their scores pair up prompt
by prompt (``scores/final.json`` of each run). The difference of the means is the mean of the per-prompt
differences; its spread is a 95 % bootstrap interval over prompts (resampling the paired differences, fixed
seed, so a report rebuilt from the same runs says the same). A trial *beats* the baseline only when the whole
interval is on the better side of zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 4000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Delta:
    """A trial's score minus the baseline's on the same prompts (positive: higher than the baseline)."""

    mean: float
    low: float  # the bootstrap interval's bounds; NaN with fewer than 2 paired prompts
    high: float
    n: int  # prompts scored by both
    stderr: float

    def beats(self, mode: str) -> bool:
        """True when the interval lies wholly on the better side of zero (``mode``: "max" or "min")."""
        if self.n < 2 or math.isnan(self.low):
            return False
        return self.low > 0 if mode == "max" else self.high < 0

    def text(self) -> str:
        if self.n < 2:
            return f"{signed(self.mean)} (one prompt: no spread)"
        return f"{signed(self.mean)} (95% CI {signed(self.low)} to {signed(self.high)} over {self.n} prompts)"


def signed(value: float) -> str:
    """``+0.0123``; a difference too small for 4 decimals in scientific notation (``-1.0e-05``), not
    ``-0.0000``."""
    return f"{value:+.4f}" if value == 0 or abs(value) >= 5e-5 or math.isnan(value) else f"{value:+.1e}"


def paired_delta(trial: list[float | None], baseline: list[float | None], seed: int = 0) -> Delta:
    """Mean per-prompt difference ``trial - baseline`` over the prompts both have, with a bootstrap interval."""
    pairs = [(t, b) for t, b in zip(trial, baseline, strict=True) if t is not None and b is not None]
    if not pairs:
        return Delta(math.nan, math.nan, math.nan, 0, math.nan)
    diffs = np.array([t - b for t, b in pairs], dtype=np.float64)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return Delta(mean, math.nan, math.nan, 1, math.nan)
    rng = np.random.default_rng(seed)
    samples = rng.choice(diffs, size=(BOOTSTRAP_SAMPLES, len(diffs)), replace=True).mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    stderr = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return Delta(mean, float(low), float(high), len(diffs), stderr)


@dataclass(frozen=True)
class Verdict:
    metric: str
    mode: str
    winner: str | None  # the best trial by the metric's mean, or None when no trial has the metric
    winner_run_id: str | None
    winner_value: float
    baseline_value: float
    delta: Delta | None
    beaten_by: tuple[str, ...]  # every trial whose interval is wholly better than the baseline
    lines: tuple[str, ...]  # what the console and the report say
    deltas: dict | None = None  # trial name -> its Delta to the baseline (None without per-prompt scores)


def decide(metric: str, mode: str, baseline: dict, trials: list[dict], about: str = "") -> Verdict:
    """The verdict of a sweep. ``baseline`` and each trial: ``{"name", "run_id", "value", "items"}`` with
    ``items`` the metric per prompt (or None when the run has none); ``about`` says which preset, model and
    scorers produced the numbers."""
    short = metric.removeprefix("eval/")
    scored = [t for t in trials if t.get("value") is not None and math.isfinite(t["value"])]
    lines: list[str] = []
    if not scored:
        lines.append(f"No trial finished with {short}: nothing to compare with the baseline.")
        return Verdict(metric, mode, None, None, math.nan, baseline.get("value", math.nan), None, (), tuple(lines))
    best = (max if mode == "max" else min)(scored, key=lambda t: t["value"])
    deltas = {
        t["name"]: paired_delta(t["items"], baseline["items"]) if t.get("items") and baseline.get("items") else None
        for t in scored
    }
    beaten_by = tuple(name for name, d in deltas.items() if d is not None and d.beats(mode))
    delta = deltas[best["name"]]
    better = "higher" if mode == "max" else "lower"
    who = best["name"] + (f" ({best['label']})" if best.get("label") else "")  # the run and its settings
    head = f"Best trial by {short} ({better} is better): {who}, {best['value']:.4f}"
    base = f"baseline (no fine-tune) {baseline['value']:.4f}"
    if delta is None:
        lines.append(f"{head}; {base}. No per-prompt scores to measure the spread of the difference.")
    else:
        lines.append(f"{head} vs {base}: difference {delta.text()}.")
        if best["name"] in beaten_by:
            lines.append(f"It beats the baseline: the whole interval is {better} than the baseline.")
        elif beaten_by:
            lines.append(f"Its interval includes no difference; these trials beat the baseline beyond the spread: "
                         f"{', '.join(beaten_by)}.")  # fmt: skip
        else:
            worse = all(
                (t["value"] < baseline["value"]) if mode == "max" else (t["value"] > baseline["value"]) for t in scored
            )
            lines.append(
                "No trial beats the baseline beyond the spread of its per-prompt differences"
                + ("; every trial scores worse than the baseline." if worse else ".")
            )
    if about:
        lines.append(about)
    return Verdict(metric, mode, best["name"], best.get("run_id"), best["value"], baseline["value"], delta,
                   beaten_by, tuple(lines), deltas)  # fmt: skip

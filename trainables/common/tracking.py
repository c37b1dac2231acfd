"""What a trial gets from the launcher besides its hyperparameters, and its own MLflow child run.

The launcher resolves every path and URI to an absolute one before trials start: Tune runs each trial
with its trial directory as the working directory, so a relative ``sqlite:///mlflow.db`` would point
somewhere else in every trial.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.evaluate import EvalPrompt, EvalSet, SamplingConfig
from eval.scorers import ScorerSpec


@dataclass(frozen=True)
class TrialContext:
    """Sweep-wide inputs shared by every trial (passed with ``tune.with_parameters``)."""

    model: str  # hub id or absolute local folder of the base Stable Diffusion model
    tracking_uri: str  # absolute MLflow tracking URI
    experiment_id: str
    parent_run_id: str
    eval: EvalSet  # prompts with seeds, reference images, the metrics that apply to the data kind
    sampling: SamplingConfig
    scorers: ScorerSpec
    data: Any = None  # trainables.data.base.PreparedData, or a Ray ObjectRef to one
    mixed_precision: str = "no"  # the trials' precision; the baseline samples at the same one on GPU
    num_class_images: int = 100  # class images per prior-preservation set when a trial does not say
    tags: dict[str, str] = field(default_factory=dict)

    def prepared(self):
        """The sweep's prepared data (fetched from Ray's object store when it is a reference)."""
        data = self.data
        if data is not None and type(data).__name__ == "ObjectRef":
            import ray

            data = ray.get(data)
        return data


@contextlib.contextmanager
def child_run(ctx: TrialContext, run_name: str, kind: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start an MLflow run nested under the sweep's parent run; mark it FAILED if the body raises, KILLED
    if Tune stopped it early.

    ``run_id`` in ``tags`` resumes an existing run (a trial restored from its checkpoint).
    """
    import mlflow

    mlflow.set_tracking_uri(ctx.tracking_uri)
    all_tags = {"mlflow.parentRunId": ctx.parent_run_id, "sdsweep.kind": kind, **ctx.tags, **(tags or {})}
    run_id = all_tags.pop("run_id", None)
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else ctx.experiment_id,
        run_name=None if run_id else run_name,
        tags=all_tags,
    )
    try:
        yield run
    except SystemExit:  # Tune stopped the trial early (a scheduler's decision, not an error)
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as err:
        _record_failure(err)
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _record_failure(err: BaseException) -> None:
    """Tag the run with the error's last line and, for an error a retry would meet again (a bad value, a NaN
    loss), ``sdsweep.fatal``: a restarted trial re-raises it instead of training again. Never raises."""
    import mlflow

    from trainables.common.config import TrialError

    lines = str(err).strip().splitlines() or [type(err).__name__]
    try:
        mlflow.set_tag("sdsweep.error", f"{type(err).__name__}: {lines[-1]}"[:5000])
        if isinstance(err, TrialError | ValueError | TypeError):
            mlflow.set_tag("sdsweep.fatal", lines[-1][:5000])
    except Exception:  # the tracking server may be what failed
        pass


def find_trial_run(ctx: TrialContext, trial_id: str):
    """This trial's child run from an earlier attempt (a restarted worker or a resumed sweep), or None."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(ctx.tracking_uri).search_runs(
        [ctx.experiment_id],
        filter_string=f"tags.`sdsweep.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'",
        max_results=2,
    )
    return runs[0] if runs else None


def last_logged_step(run_id: str | None = None, tracking_uri: str | None = None) -> int:
    """The last step whose train/loss the run (default: the active one) holds, 0 for a new run: a restarted
    trial does not log those steps again."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if run_id is None:
        run = mlflow.active_run()
        if run is None:
            return 0
        run_id = run.info.run_id
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss")
    return max((m.step for m in history), default=0)


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Log the finite numeric metrics of one step to the active run (one batched request)."""
    import mlflow

    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    if finite:
        mlflow.log_metrics(finite, step=step, timestamp=int(time.time() * 1000))


def log_samples(prompts: list[EvalPrompt], images: list, step: int, final: bool) -> None:
    """Log eval samples: a per-prompt image history (``key``/``step``, browsable with MLflow's step slider)
    and, at the end, ``samples/final/<index>_<name>.png`` which reports read back."""
    import mlflow

    for index, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        mlflow.log_image(image, key=f"sample_{index:02d}_{slug(prompt.name)}", step=step)
        if final:
            mlflow.log_image(image, artifact_file=f"samples/final/{index:02d}_{slug(prompt.name)}.png")


def slug(text: str) -> str:
    """An ASCII name safe for files and MLflow keys: ``heldout/七 seven`` -> ``heldout-seven``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")
    return cleaned or "prompt"


def trial_dir(default_name: str) -> tuple[Path, str, str]:
    """This trial's directory, name and id; outside Tune (a direct call) the working directory,
    ``default_name`` and ``"local"``."""
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "get_trial_dir is meant to only be called inside a Tuner"
        context = tune.get_context()
        directory, name, trial_id = context.get_trial_dir(), context.get_trial_name(), context.get_trial_id()
    if directory is None:
        return Path.cwd(), default_name, "local"
    return Path(directory), name, trial_id

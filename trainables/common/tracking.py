"""What a trial gets from the launcher besides its hyperparameters, and its own MLflow child run.

The launcher resolves every path and URI to an absolute one before trials start: Tune runs each trial
with its trial directory as the working directory, so a relative ``sqlite:///mlflow.db`` would point
somewhere else in every trial.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.evaluate import EvalPrompt, EvalSet, SamplingConfig
from eval.scorers import ScorerSpec
from trainables.common.outbox import OUTBOX_DIR, Outbox, is_transient


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
    # a trial as a Ray Train job: its data-parallel workers and what each one gets
    workers_per_trial: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    storage_path: str | None = None  # the sweep's Tune run folder; each trial's Train run lives under it
    max_failures: int = 2  # restarts of a trial's worker group, each from its last checkpoint
    knobs: dict[str, list] = field(default_factory=dict)  # inference settings tried after training (eval.knobs)

    def prepared(self):
        """The sweep's prepared data (fetched from Ray's object store when it is a reference)."""
        data = self.data
        if data is not None and type(data).__name__ == "ObjectRef":
            key = data.hex()
            if key not in _PREPARED:  # once per process: later trials in a reused process read it from here
                import ray

                _PREPARED.clear()
                _PREPARED[key] = ray.get(data)
            data = _PREPARED[key]
        return data


_PREPARED: dict[str, Any] = {}  # the sweep's prepared data, by object ref


def eval_params(ctx: TrialContext) -> dict[str, Any]:
    """How a run's eval scores were made, logged with its params so a reader can reproduce them: the
    sampling settings and the scorer models (the prompts and seeds are in ``scores/final.json``)."""
    s = ctx.sampling
    return {
        "eval_sampling_steps": s.steps,
        "eval_guidance_scale": s.guidance_scale,
        "eval_resolution": s.resolution,
        **({"eval_scheduler": s.scheduler} if s.scheduler != "default" else {}),
        "eval_prompts": len(ctx.eval.prompts),
        "scorers": ctx.scorers.text(),
    }


# seconds a finished trial waits for MLflow to take its backlog before leaving it on disk
FLUSH_TIMEOUT_S = float(os.environ.get("SDSWEEP_MLFLOW_FLUSH_S", "300"))
# seconds a trial waits at start for an unreachable tracking server before failing
START_TIMEOUT_S = float(os.environ.get("SDSWEEP_MLFLOW_START_S", "600"))

_outbox: Outbox | None = None  # the open child run's writes (one run per trial process at a time)


def retry_transient(call, what: str, timeout_s: float = START_TIMEOUT_S):
    """``call()``, retried with backoff while MLflow is unreachable, for at most ``timeout_s``."""
    backoff, deadline = 0.5, time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except Exception as err:
            if not is_transient(err) or time.monotonic() > deadline:
                raise
            print(f"[sdsweep] MLflow unreachable while {what}; retrying in {backoff:.0f} s", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(30.0, backoff * 2)


def outbox_root() -> Path:
    """Where trials spool their MLflow writes: a folder on the trial's node, outside the trial folder Ray Tune
    copies to storage while the outbox adds and removes files in it ($SDSWEEP_OUTBOX_DIR, else the temp dir).
    A restarted trial on the same node finds its undelivered writes there by run id."""
    import tempfile

    return Path(os.environ.get("SDSWEEP_OUTBOX_DIR") or tempfile.gettempdir()) / "sdsweep"


@contextlib.contextmanager
def child_run(ctx: TrialContext, run_name: str, kind: str, tags: dict[str, str] | None = None,
              folder: Path | None = None) -> Iterator[Any]:  # fmt: skip
    """Open an MLflow run nested under the sweep's parent run; every write to it goes through an
    :class:`~trainables.common.outbox.Outbox` in ``folder`` (default: the working directory), so training
    never waits on the tracking server. The run ends FAILED if the body raises, KILLED if Tune stopped it
    early, else FINISHED.

    ``run_id`` in ``tags`` continues an existing run (a restarted or resumed trial).
    """
    global _outbox
    from mlflow.tracking import MlflowClient

    # fail a request in seconds and let the outbox's backoff decide how long to wait, not MLflow's retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = MlflowClient(ctx.tracking_uri)
    all_tags = {"mlflow.parentRunId": ctx.parent_run_id, "sdsweep.kind": kind, **ctx.tags, **(tags or {})}
    run_id = all_tags.pop("run_id", None)
    if run_id:
        retry_transient(lambda: client.update_run(run_id, status="RUNNING"), "reopening the trial's run")
        run = retry_transient(lambda: client.get_run(run_id), "reopening the trial's run")
    else:
        run = retry_transient(
            lambda: client.create_run(ctx.experiment_id, run_name=run_name, tags=all_tags), "creating the trial's run"
        )
    base = Path(folder) if folder is not None else Path.cwd()
    _outbox = Outbox(ctx.tracking_uri, run.info.run_id, base / OUTBOX_DIR / run.info.run_id)
    set_tags(_where())  # the node of this attempt (a restarted trial may run elsewhere)
    status = "FINISHED"
    try:
        yield run
    except SystemExit:  # Tune stopped the trial early (a scheduler's decision, not an error)
        status = "KILLED"
        raise
    except BaseException as err:
        status = "FAILED"
        _record_failure(err)
        raise
    finally:
        outbox, _outbox = _outbox, None
        outbox.put("end", {"status": status})
        outbox.close(FLUSH_TIMEOUT_S)


def _where() -> dict[str, str]:
    """The host and Ray node this process runs on."""
    import socket

    tags = {"sdsweep.host": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            tags["sdsweep.node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # the tag is information, not a reason to fail a trial
        pass
    return tags


def _record_failure(err: BaseException) -> None:
    """Tag the run with the error's last line and, for an error a retry would meet again (a bad value, a NaN
    loss), ``sdsweep.fatal``: a restarted trial re-raises it instead of training again."""
    import tempfile
    import traceback

    from trainables.common.config import TrialError

    lines = str(err).strip().splitlines() or [type(err).__name__]
    tags = {"sdsweep.error": f"{type(err).__name__}: {lines[-1]}"[:5000]}
    if isinstance(err, TrialError | ValueError | TypeError):
        tags["sdsweep.fatal"] = lines[-1][:5000]
    set_tags(tags)
    if _outbox is not None:  # the whole error, for whoever reads the run later
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "error.txt"
            path.write_text("".join(traceback.format_exception(err)), encoding="utf-8")
            _outbox.put("files", {"artifact_path": "failure"}, {path.name: path})


def drain_writes(timeout_s: float = 60.0) -> None:
    """Deliver the open run's backlog before Tune may end the process; skipped while MLflow is unreachable."""
    if _outbox is not None:
        _outbox.drain(timeout_s)


def current_run_id() -> str | None:
    return _outbox.run_id if _outbox is not None else None


def log_params(params: dict[str, Any]) -> None:
    if _outbox is not None:
        _outbox.put("params", {"params": {k: str(v)[:6000] for k, v in params.items()}})


def set_tags(tags: dict[str, str]) -> None:
    if _outbox is not None:
        _outbox.put("tags", {"tags": {k: str(v) for k, v in tags.items()}})


def find_trial_run(ctx: TrialContext, trial_id: str):
    """This trial's child run from an earlier attempt (a restarted worker or a resumed sweep), or None."""
    from mlflow.tracking import MlflowClient

    query = f"tags.`sdsweep.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'"
    client = MlflowClient(ctx.tracking_uri)
    runs = retry_transient(
        lambda: client.search_runs([ctx.experiment_id], filter_string=query, max_results=2), "looking up the trial"
    )
    return runs[0] if runs else None


def last_logged_step(run_id: str | None = None, tracking_uri: str | None = None) -> int:
    """The last step whose train/loss the run (default: the open one) holds or has queued, 0 for a new run:
    a restarted trial does not log those steps again."""
    from mlflow.tracking import MlflowClient

    queued = 0
    if run_id is None:
        if _outbox is None:
            return 0
        run_id, tracking_uri, queued = _outbox.run_id, _outbox.tracking_uri, _outbox.pending_max_step()
    client = MlflowClient(tracking_uri)
    history = retry_transient(lambda: client.get_metric_history(run_id, "train/loss"), "reading the run's history")
    return max(queued, max((m.step for m in history), default=0))


def run_has_metric(key: str) -> bool:
    """Whether the open run already holds (or has queued) ``key``."""
    from mlflow.tracking import MlflowClient

    if _outbox is None:
        return False
    if _outbox.pending_has_metric(key):
        return True
    client = MlflowClient(_outbox.tracking_uri)
    run = retry_transient(lambda: client.get_run(_outbox.run_id), "reading the run")
    return key in run.data.metrics


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Queue the finite numeric metrics of one step for the open run (one batched request)."""
    finite = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    if finite and _outbox is not None:
        _outbox.put("metrics", {"metrics": finite, "step": step, "timestamp": int(time.time() * 1000)})


def log_samples(prompts: list[EvalPrompt], images: list, step: int, final: bool) -> None:
    """Queue eval samples: a per-prompt image history (``key``/``step``, browsable with MLflow's step slider)
    and, with ``final``, ``samples/final/<index>_<name>.png`` which reports read back."""
    import tempfile

    if _outbox is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for index, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
            name = f"{index:02d}_{slug(prompt.name)}"
            path = Path(tmp) / "image.png"
            image.save(path)
            now = int(time.time() * 1000)
            _outbox.put("image", {"key": f"sample_{name}", "step": step, "timestamp": now}, {"image.png": path})
            if final:
                _outbox.put("image", {"artifact_file": f"samples/final/{name}.png"}, {"image.png": path})


ITEM_SCORES = "scores/final.json"  # the latest eval's per-prompt scores; the report pairs them with the baseline's


def log_item_scores(prompts: list[EvalPrompt], items: dict[str, list[float | None]], step: int) -> None:
    """Queue ``scores/final.json``: each metric per prompt, with the prompt's name, text and seed, so a trial
    and the baseline can be compared prompt by prompt."""
    import json
    import tempfile

    if _outbox is None:
        return
    record = {"step": step, "prompts": [{"name": p.name, "text": p.text, "seed": p.seed} for p in prompts],
              "items": items}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(ITEM_SCORES).name
        path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        _outbox.put("files", {"artifact_path": str(Path(ITEM_SCORES).parent)}, {path.name: path})


def log_knob_samples(prompts: list[EvalPrompt], images: list, combo: str) -> None:
    """Queue ``knobs/<combo>/<index>_<name>.png``: the final samples at one inference setting."""
    import tempfile

    if _outbox is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for index, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
            path = Path(tmp) / "image.png"
            image.save(path)
            name = f"knobs/{slug(combo)}/{index:02d}_{slug(prompt.name)}.png"
            _outbox.put("image", {"artifact_file": name}, {"image.png": path})


def log_files(files: list[Path], artifact_path: str) -> None:
    """Queue files and folders for the open run, under ``artifact_path`` (copied first: the caller may
    delete them)."""
    if _outbox is not None and files:
        _outbox.put("files", {"artifact_path": artifact_path}, {Path(f).name: Path(f) for f in files})


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

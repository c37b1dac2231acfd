"""The one Tune trainable: a trial's config -> its method's recipe, inside the trial's MLflow child run.

With ``workers_per_trial`` = 1 the recipe runs in the Tune trial's own process. With N > 1 the trial fits a
``ray.train.torch.TorchTrainer`` of N data-parallel workers (gloo on CPU, nccl on GPU) that each run the
recipe on their rows of every batch (see :mod:`trainables.common.distributed`); rank 0 writes the MLflow
records and files, and its reports reach Tune through ``TuneReportCallback``. Train start-up costs about
20 s per trial on 2 CPU cores (``benchmarks/train_startup.py``), so one worker keeps the direct path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainables.common.config import TrialError
from trainables.common.distributed import is_main
from trainables.common.loop import mark_trial_start
from trainables.common.quiet import quiet_libraries
from trainables.common.tracking import (
    TrialContext,
    child_run,
    eval_params,
    find_trial_run,
    last_logged_step,
    log_params,
    outbox_root,
    trial_dir,
)
from trainables.registry import METHODS, parse_trial_config, trial_settings


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Validate the config, open the child run (params logged), run the method's recipe. Results go to
    Tune and MLflow; the trained files to the trial directory.

    A trial Tune restarts (its worker died, or the sweep is resumed) continues in the MLflow run of its
    earlier attempt, from its last checkpoint; one that failed on a bad value or a NaN fails again at once.
    """
    mark_trial_start()
    quiet_libraries()
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint successfully created" per eval
    out_dir, trial_name, trial_id = trial_dir(default_name="local")
    try:
        if ctx.workers_per_trial > 1:
            _run_on_workers(config, ctx, out_dir, trial_name, trial_id)
        else:
            _run(config, ctx, out_dir, trial_name, trial_id)
    finally:
        release_memory()


def release_memory() -> None:
    """Hand a finished trial's memory back before the process runs the next trial (Tune reuses trial
    processes): collect its cycles, and ask glibc to return freed heap pages. Each trial runs in a new thread,
    and glibc keeps what a finished thread's arena freed, so a reused process grew ~80 MB per tiny trial."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _earlier_attempt(ctx: TrialContext, trial_id: str):
    """This trial's run from an earlier attempt, or None. Re-raises the fatal error of a failed one; for a
    finished one, reports its stored metrics and returns ``"done"``."""
    earlier = find_trial_run(ctx, trial_id) if trial_id != "local" else None
    if earlier is not None and earlier.info.status == "FAILED" and earlier.data.tags.get("sdsweep.fatal"):
        raise TrialError(earlier.data.tags["sdsweep.fatal"])  # a retry would meet the same error
    if earlier is not None and earlier.info.status == "FINISHED":  # done before its driver died: not again
        from trainables.common.session import report

        report({**earlier.data.metrics, "step": last_logged_step(earlier.info.run_id, ctx.tracking_uri)})
        return "done"
    return earlier


def _run(config: dict, ctx: TrialContext, out_dir: Path, trial_name: str, trial_id: str) -> None:
    suffix, tags = trial_name.rsplit("_", 1)[-1], {"sdsweep.trial_id": trial_id}
    settings = trial_settings(config)
    earlier = _earlier_attempt(ctx, trial_id)
    if earlier == "done":
        return
    try:
        trial = parse_trial_config(settings)
    except (ValueError, TypeError):
        if not is_main():
            raise
        # a point no check saw before the sweep (an Optuna draw): the failure is recorded like any other
        with child_run(ctx, run_name=f"invalid-{suffix}", kind="trial", tags=tags, folder=outbox_root()):
            log_params({k: str(v)[:500] for k, v in settings.items()})
            raise
    method = METHODS[trial.method]
    params = trial.params()
    if method.uses_class_images(trial.spec):  # the sweep's defaults for the set this trial trains with
        params.setdefault("num_class_images", ctx.num_class_images)
        params.setdefault("class_prompt", ctx.prepared().class_prompt)
    if not is_main():  # the other Train workers train their rows; rank 0 keeps the records
        method.train(trial, ctx, out_dir)
        return
    if earlier is not None:
        tags["run_id"] = earlier.info.run_id
    if ctx.workers_per_trial > 1:
        params["workers_per_trial"] = ctx.workers_per_trial
    params.update(eval_params(ctx))
    with child_run(ctx, run_name=f"{method.run_name(trial.spec)}-{suffix}", kind="trial", tags=tags,
                   folder=outbox_root()):  # fmt: skip
        log_params(params)
        method.train(trial, ctx, out_dir)


def _run_on_workers(config: dict, ctx: TrialContext, out_dir: Path, trial_name: str, trial_id: str) -> None:
    """Fit this trial as a Ray Train job of ``ctx.workers_per_trial`` workers. Its Train run folder is named
    after the trial, so a restarted trial (a resumed sweep) continues from the job's last checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if _earlier_attempt(ctx, trial_id) == "done":
        return
    gpus = ctx.gpus_per_worker
    per_worker = {"CPU": ctx.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "config": config,
            "ctx": ctx,
            "out_dir": str(out_dir),
            "trial_name": trial_name,
            "trial_id": trial_id,
        },  # fmt: skip
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers_per_trial, use_gpu=gpus > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=ctx.storage_path or str(out_dir),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=ctx.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not a line per report and worker
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # the workers' error, as one line (the full one is in the worker's log above)
        raise TrialError(_worker_error(err)) from None


def _worker_error(err: Exception) -> str:
    """The last line of the first worker's error inside Train's wrapper."""
    failures = getattr(err, "worker_failures", None) or {}
    cause = next(iter(failures.values()), None) if isinstance(failures, dict) else None
    text = str(cause if cause is not None else err).strip().splitlines() or [type(err).__name__]
    return text[-1]


def _train_worker(loop_config: dict) -> None:
    """One Ray Train worker of a trial: the same recipe as a one-worker trial, on its rows of each batch."""
    from trainables.common.session import use_ray_train

    use_ray_train()
    mark_trial_start()
    quiet_libraries()
    logging.getLogger().setLevel(logging.WARNING)  # Train sets the root logger to DEBUG; open_clip logs at INFO
    c = loop_config
    _run(c["config"], c["ctx"], Path(c["out_dir"]), c["trial_name"], c["trial_id"])

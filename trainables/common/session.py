"""Where a trial's results go besides MLflow: Tune's report and checkpoints."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

_train_worker = False  # True in a Ray Train worker (a trial with --workers-per-trial > 1)


def use_ray_train() -> None:
    """This process is a Ray Train worker: reports and checkpoints go through ``ray.train``; rank 0's reach
    Tune through the trial's ``TuneReportCallback``."""
    global _train_worker
    _train_worker = True


def report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
    """To Tune inside a trial (to Ray Train in a Train worker, where every rank must call it); outside one (a
    direct call in a test) Tune's report is a no-op.

    A scheduler (ASHA) stops a trial by exiting from ``tune.report``, and the process ends right after:
    whatever must survive a stop is written before this call.
    """
    if _train_worker:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "report is meant to only be called inside a Tuner"
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


@contextlib.contextmanager
def resume_checkpoint() -> Iterator[Path | None]:
    """The folder of the checkpoint this trial restarts from (a restarted worker, a resumed sweep), or None
    for a fresh trial; valid inside the ``with`` block."""
    if _train_worker:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # the latest one rank 0 reported, on every worker
    else:
        from ray import tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # outside a Tuner (a direct call) there is no checkpoint
            checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)

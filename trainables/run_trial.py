"""The one Tune trainable: a trial's config -> its method's recipe, inside the trial's MLflow child run."""

from __future__ import annotations

import logging

from trainables.common.config import TrialError
from trainables.common.tracking import (
    TrialContext,
    child_run,
    find_trial_run,
    last_logged_step,
    log_params,
    trial_dir,
)
from trainables.registry import METHODS, parse_trial_config, trial_settings


def run_trial(config: dict, ctx: TrialContext) -> None:
    """Validate the config, open the child run (params logged), run the method's recipe. Results go to
    Tune and MLflow; the trained files to the trial directory.

    A trial Tune restarts (its worker died, or the sweep is resumed) continues in the MLflow run of its
    earlier attempt, from its last checkpoint; one that failed on a bad value or a NaN fails again at once.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint successfully created" per eval
    out_dir, trial_name, trial_id = trial_dir(default_name="local")
    suffix, tags = trial_name.rsplit("_", 1)[-1], {"sdsweep.trial_id": trial_id}
    settings = trial_settings(config)
    earlier = find_trial_run(ctx, trial_id) if trial_id != "local" else None
    if earlier is not None and earlier.info.status == "FAILED" and earlier.data.tags.get("sdsweep.fatal"):
        raise TrialError(earlier.data.tags["sdsweep.fatal"])  # a retry would meet the same error
    if earlier is not None and earlier.info.status == "FINISHED":  # done before its driver died: not again
        from trainables.common.session import report

        report({**earlier.data.metrics, "step": last_logged_step(earlier.info.run_id, ctx.tracking_uri)})
        return
    try:
        trial = parse_trial_config(settings)
    except (ValueError, TypeError):
        # a point no check saw before the sweep (an Optuna draw): the failure is recorded like any other
        with child_run(ctx, run_name=f"invalid-{suffix}", kind="trial", tags=tags, folder=out_dir):
            log_params({k: str(v)[:500] for k, v in settings.items()})
            raise
    method = METHODS[trial.method]
    params = trial.params()
    if method.uses_class_images(trial.spec):  # the sweep's defaults for the set this trial trains with
        params.setdefault("num_class_images", ctx.num_class_images)
        params.setdefault("class_prompt", ctx.prepared().class_prompt)
    if earlier is not None:
        tags["run_id"] = earlier.info.run_id
    with child_run(ctx, run_name=f"{method.run_name(trial.spec)}-{suffix}", kind="trial", tags=tags, folder=out_dir):
        log_params(params)
        method.train(trial, ctx, out_dir)

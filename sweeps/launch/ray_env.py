"""Ray for a sweep: a quiet environment for every process, start or connect, one-line task errors."""

from __future__ import annotations

import logging
import os
import warnings

from sweeps.launch.resources import TRIAL_SLOT
from sweeps.launch.spec import SweepError

# environment for the driver and, through Ray's runtime_env, for every task and trial process
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # our trials report train/loss between evals; results without eval/* are expected, not an error
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # num_to_keep forces a state snapshot per checkpoint; Tune's "may become a bottleneck" hint is noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # not "Creating initial MLflow database tables..." on a fresh store
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def quiet_libraries() -> None:
    """Keep the console to what a person needs: progress, results, errors."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("mlflow", "huggingface_hub", "httpx", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def start_ray(cpus: float, dashboard: bool = False):
    """Connect to ``RAY_ADDRESS`` or start a local Ray with at least ``cpus`` CPUs. ``dashboard``: trials
    that run Ray Train jobs need Ray's state API (served by the dashboard) to free a stopped job's workers."""
    import ray

    env = {k: os.environ[k] for k in QUIET_ENV}  # a user's own settings win over the defaults
    # Ray 2.60 announces, once per machine, that it wrote an auth token: nothing for the user to do
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a running cluster
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        extra = {}
        if dashboard:
            port = _free_port()
            extra = dict(dashboard_host="127.0.0.1", dashboard_port=port)
            env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(cpus + 0.999)),
            include_dashboard=dashboard,
            resources={TRIAL_SLOT: 10_000},  # see sweeps.launch.resources
            **extra,
            logging_level=logging.WARNING,  # not "Started a local Ray instance."
            runtime_env={"env_vars": env},
            log_to_driver=True,
        )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_or_fail(ref, what: str):
    """ray.get, turning a task's exception into one line naming the cause and the fix."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        raise SweepError(f"{what} failed: {cause}") from err

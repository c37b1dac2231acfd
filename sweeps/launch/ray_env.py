"""Ray for a sweep: a quiet environment for every process, start or connect, one-line task errors."""

from __future__ import annotations

import logging
import os

from sweeps.launch.resources import TRIAL_SLOT
from sweeps.launch.spec import SweepError
from trainables.common.quiet import QUIET_ENV, quiet_libraries

__all__ = ["QUIET_ENV", "get_or_fail", "quiet_libraries", "start_ray"]


def start_ray(cpus: float, dashboard: bool = False):
    """Connect to ``RAY_ADDRESS`` or start a local Ray with at least ``cpus`` CPUs. ``dashboard``: for trials
    that run Ray Train jobs, which need Ray's state API (served by the dashboard) to free a stopped job's
    workers, and trial slots (``TRIAL_SLOT``) for their waiting Tune trials."""
    import ray

    env = {k: os.environ[k] for k in QUIET_ENV}  # a user's own settings win over the defaults
    # Ray 2.60 announces, once per machine, that it wrote an auth token: nothing for the user to do
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # inside `ray job submit`
        # no runtime_env here: a driver's own one changes the job's, and Ray then deletes the working dir the
        # driver runs in (MLflow fails on os.getcwd()); the trial processes quiet their libraries themselves
        ray.init(log_to_driver=True)
    elif os.environ.get("RAY_ADDRESS"):  # pointed at a running cluster
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
            resources={TRIAL_SLOT: 10_000} if dashboard else None,  # see sweeps.launch.resources
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

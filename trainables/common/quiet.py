"""The console a person reads: the environment and log levels that keep library noise out of it, for the
driver and every Ray process (set through Ray's runtime_env, and again by each trial, which inside
`ray job submit` gets no runtime_env from the driver)."""

from __future__ import annotations

import logging
import os
import warnings

# environment for the driver and, through Ray's runtime_env, for every task and trial process
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # our trials report train/loss between evals; results without eval/* are expected, not an error
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # num_to_keep forces a state snapshot per checkpoint; Tune's "may become a bottleneck" hint is noise here
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's classic reporter, silent at verbose=0: the sweep prints its own trial lines (sweeps.launch.progress)
    "RAY_AIR_NEW_OUTPUT": "0",
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

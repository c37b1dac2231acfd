"""The sweep's MLflow side: tracking URI, experiment, closing what trials left open, the console summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from sweeps.launch.spec import Sweep, SweepError


def resolve_tracking_uri(cli_uri: str | None) -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db; sqlite paths made absolute (trials run
    in their own working directories)."""
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    elif "://" not in uri:
        raise SweepError(f"--mlflow-uri {uri} is not a URI MLflow 3 accepts: use sqlite:///path.db or http://host:5000")
    return uri


def experiment_id(name: str, tracking_uri: str) -> str:
    """The sweep's experiment, created on first use; an unreachable store is a one-line error."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"  # fail in seconds here, not after minutes of retries
    try:
        experiment = _first_touch(lambda: mlflow.get_experiment_by_name(name), tracking_uri)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if "401" in reason or "403" in reason or "not authenticated" in reason.lower():
            raise SweepError(
                f"MLflow at {tracking_uri} refused this client ({reason}): put the server's user and password in "
                "~/.mlflow/credentials (see cluster.yaml) or set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
            ) from err
        raise SweepError(
            f"cannot reach MLflow at {tracking_uri} ({reason}): start the server (mlflow server) or pass "
            "--mlflow-uri sqlite:///mlflow.db"
        ) from err
    finally:
        if retries is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):  # artifacts beside the database, as an absolute path
        location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts" / name).as_uri()

    def create() -> str:  # under the same lock: two launches of a new sweep do not both create it
        existing = mlflow.get_experiment_by_name(name)
        if existing:
            return existing.experiment_id
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # a server store has no lock: another launch may have created it a moment ago
            existing = mlflow.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    return _first_touch(create, tracking_uri)


def _first_touch(call, tracking_uri: str):
    """``call()``; for a sqlite store, under a lock file beside it: two launches on a fresh file would both
    create (and migrate) MLflow's schema, and one of them fail."""
    if not tracking_uri.startswith("sqlite:"):
        return call()
    import fcntl

    lock_path = Path(tracking_uri[len("sqlite:///") :]).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return call()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def close_orphan_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, results) -> None:
    """Close the child runs whose trial process ended without closing them: KILLED with a tag when the
    scheduler stopped the trial early (Tune ends its process at once), FAILED when the trial errored or
    its process died."""
    from mlflow.tracking import MlflowClient

    by_trial = {r.metrics.get("trial_id"): r for r in results if r.metrics}
    client = MlflowClient(tracking_uri)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = '{{}}'"
    for run in client.search_runs([experiment_id], query.format("KILLED")):  # closed by the trial as it stopped
        result = by_trial.get(run.data.tags.get("sdsweep.trial_id"))
        if result is not None and result.error is None and "sdsweep.stopped_early" not in run.data.tags:
            client.set_tag(
                run.info.run_id, "sdsweep.stopped_early", f"by the scheduler at step {result.metrics.get('step')}"
            )
    for run in client.search_runs([experiment_id], query.format("RUNNING")):
        result = by_trial.get(run.data.tags.get("sdsweep.trial_id"))
        if result is not None and result.error is None:
            client.set_tag(
                run.info.run_id, "sdsweep.stopped_early", f"by the scheduler at step {result.metrics.get('step')}"
            )
            client.set_terminated(run.info.run_id, status="KILLED")
        else:
            client.set_tag(run.info.run_id, "sdsweep.error", "the trial process ended without closing its run")
            client.set_terminated(run.info.run_id, status="FAILED")


def mlflow_cli() -> str:
    """``mlflow`` if it is on PATH, else the one beside this Python (a venv that is not activated)."""
    import shutil

    beside = Path(sys.executable).parent / "mlflow"
    if shutil.which("mlflow") or not beside.exists():
        return "mlflow"
    return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)


SHORT_NAMES = {"lora_rank": "rank", "lora_alpha": "alpha", "with_prior_preservation": "prior",
               "prior_loss_weight": "prior_weight", "train_text_encoder": "te", "text_encoder_lr": "te_lr"}  # fmt: skip


def trial_label(settings: dict[str, Any], varied: list[str], with_method: bool) -> str:
    """A short name from the swept settings: ``rank=8 alpha=8.0``, or ``dreambooth prior=True``."""
    parts = [str(settings.get("method"))] if with_method else []
    parts += [f"{SHORT_NAMES.get(k, k)}={settings[k]}" for k in varied if k != "method" and k in settings]
    return " ".join(parts)


def varied_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values differ between trials (a key some trials lack counts as varied), in first-seen
    order: what tells one trial from another in a label."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def print_summary(sweep: Sweep, results, baseline: dict[str, float]) -> None:
    from trainables.registry import trial_settings

    # plain scores only: each inference setting's (eval.knobs) are in the report's own table
    keys = [sweep.metric] + sorted(k for k in baseline if k != sweep.metric and " " not in k)
    settings = [trial_settings(r.config or {}) for r in results]
    varied = varied_keys(settings)
    with_method = len({s.get("method") for s in settings}) > 1
    order = sorted(range(len(results)), key=lambda i: [_sort_key(settings[i].get(k)) for k in varied])
    settings, results = [settings[i] for i in order], [results[i] for i in order]  # as the report orders them
    names = [trial_label(s, varied, with_method) or Path(r.path).name for s, r in zip(settings, results, strict=True)]
    width = min(64, max([len("baseline (no fine-tune)"), *map(len, names)]) + 2)
    print(f"\n[sdsweep] results ({sweep.metric}, {sweep.mode} is best)")
    cols = {k: max(11, len(k.removeprefix("eval/"))) + 2 for k in keys}

    def values(metrics: dict[str, float]) -> str:
        return "".join(f"{metrics.get(k, float('nan')):{c}.4f}" for k, c in cols.items())

    print("  " + "trial".ljust(width) + "".join(k.removeprefix("eval/").rjust(c) for k, c in cols.items()))
    row = values(baseline)
    print("  " + "baseline (no fine-tune)".ljust(width) + row)
    for name, r in zip(names, results, strict=True):
        name = name[: width - 2].ljust(width)
        if r.error:
            print("  " + name + f"  FAILED: {str(r.error).strip().splitlines()[-1][:120]}")
        else:
            print("  " + name + values(r.metrics))


def _sort_key(value: Any) -> tuple:
    """Numbers by value, then everything else by its text: rank 2 before rank 16."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (1, 0.0, str(value))
    return (0, float(value), "")


def describe(space: dict[str, Any]) -> dict[str, str]:
    """The search space as the sweep file wrote it: values as JSON, ``tune.grid_search([...])``,
    ``tune.loguniform(1e-05, 0.001)``, and a ``sample_from`` function as its source (not ``<function ...>``)."""
    return {k: _domain_text(v) for k, v in space.items()}


def _domain_text(value: Any) -> str:
    import inspect
    import re

    if isinstance(value, dict) and set(value) == {"grid_search"}:
        return f"tune.grid_search({json.dumps(value['grid_search'], default=repr)})"
    kind = type(value).__name__
    if kind == "Function":  # tune.sample_from
        func = getattr(value, "func", None)
        try:
            source = inspect.getsource(func)
        except (OSError, TypeError):
            return f"tune.sample_from({getattr(func, '__name__', 'function')})"
        found = re.search(r"lambda[^:]*:.*", source)
        text = found.group(0).strip().rstrip(",").strip() if found else getattr(func, "__name__", "function")
        if text.count(")") > text.count("("):  # the call that wrapped the lambda closes on this line
            text = text[: text.rfind(")")].strip()
        return f"tune.sample_from({text})"
    if hasattr(value, "domain_str"):
        sampler = getattr(value, "sampler", None)
        name = {"Float": "uniform", "Integer": "randint", "Categorical": "choice"}.get(kind, kind.lower())
        if kind == "Float" and type(sampler).__name__.lstrip("_") == "LogUniform":
            name = "loguniform"
        return f"tune.{name}{value.domain_str}" if kind != "Categorical" else f"tune.choice({value.domain_str})"
    return json.dumps(value, default=repr)

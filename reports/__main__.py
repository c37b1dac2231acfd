"""Rebuild the report of a past sweep from MLflow alone.

python -m reports kanji_rank                     # the experiment's latest launch
python -m reports 52cdf3173bd54ebdbc0e1fa09722f011 [--mlflow-uri URI] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def find_parent_run(client, what: str) -> str | None:
    """``what`` as a parent run id, or as an experiment name (its most recent sweep launch)."""
    try:
        run = client.get_run(what)
    except Exception:
        run = None
    if run is not None:
        parent = run.data.tags.get("mlflow.parentRunId")
        return parent or run.info.run_id  # a child run's id leads to its sweep
    experiment = client.get_experiment_by_name(what)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.`sdsweep.sweep` != ''", max_results=1,
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    return runs[0].info.run_id if runs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description="Rebuild a sweep's report from MLflow.")
    parser.add_argument("sweep", help="an experiment name (its latest launch) or a parent run id")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--out", default=None, help="output folder (default reports/<sweep>)")
    parser.add_argument("--metric", default=None, help="what 'best' means (default: the sweep's)")
    parser.add_argument("--mode", default=None, choices=("max", "min"))
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from reports import compare

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    try:
        run_id = find_parent_run(MlflowClient(uri), args.sweep)
    except Exception as err:
        print(f"error: cannot read MLflow at {uri} ({str(err).splitlines()[0][:160]}): check --mlflow-uri",
              file=sys.stderr)  # fmt: skip
        return 2
    if run_id is None:
        print(f"error: no experiment or run {args.sweep!r} in {uri}: pass a sweep's name (e.g. kanji_rank) or its "
              "MLflow parent run id, and --mlflow-uri if the runs are elsewhere", file=sys.stderr)  # fmt: skip
        return 2
    forward = ["--run-id", run_id, "--mlflow-uri", uri]
    for flag, value in (("--out", args.out), ("--metric", args.metric), ("--mode", args.mode)):
        if value:
            forward += [flag, value]
    return compare.main(forward)


if __name__ == "__main__":
    sys.exit(main())

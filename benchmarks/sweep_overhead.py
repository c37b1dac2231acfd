"""Benchmark: what a sweep costs beyond its trials' training and evaluation, and what it does only once.

The same tiny kanji rank sweep (``sweeps/kanji_rank.py`` cut to ``--ranks``, tiny preset, its inference
knobs) three ways, each repeat in turn:

- ``sequential``: one process, no Ray: prepare the data, evaluate the baseline, then call
  ``run_trial`` for each trial one after another, then build the report: the work itself;
- ``launcher, 1 at a time``: ``launch()`` with ``--max-concurrent-trials 1``: the same work through Ray Tune,
  MLflow parent run, progress lines and report; its ratio to ``sequential`` is the sweep's overhead;
- ``launcher``: ``launch()`` as a user runs it (trials side by side on the machine's cores).

Every variant starts from the same warm cache (model built, glyphs rendered and encoded), so "work done once"
is measured separately, by a launcher run on a cold data cache (rendering and encoding in it) after which the
warm runs follow: the time from each trial's start to its first step (``time/setup_s``) for the first trial of
a process and for the trials after it, and the data step of the cold and the warm sweeps.

Printed: wall seconds of every run, median and spread per variant, the ratios, and the launcher's breakdown
(checks, model and Ray start / data / baseline / trials / report / Ray shutdown) from its MLflow runs' times.

    python benchmarks/sweep_overhead.py                 # ranks 1 4 8 16, 2 repeats
    python benchmarks/sweep_overhead.py --ranks 1 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-chars", type=int, default=400)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"),
                   help="where the tiny models are built (once); the data caches are the benchmark's own")  # fmt: skip
    return p.parse_args(argv)


def the_sweep(ranks):
    from ray import tune

    from sweeps.kanji_rank import SWEEP

    return replace(SWEEP, search_space={**SWEEP.search_space, "lora_rank": tune.grid_search(list(ranks))})


def flags(work: Path, cache: Path, args, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--cache-dir", str(cache), "--storage-path", str(work / "ray"),
            "--mlflow-uri", f"sqlite:///{work}/mlflow.db", "--report-dir", str(work / "reports"),
            "--max-chars", str(args.max_chars), *extra]  # fmt: skip


def run_launcher(sweep, argv: list[str]) -> float:
    from sweeps.launch import launch

    started = time.perf_counter()
    code = launch(sweep, argv)
    if code != 0:
        sys.exit(f"error: the sweep failed (exit {code})")
    return time.perf_counter() - started


def run_sequential(sweep, argv: list[str], work: Path) -> float:
    """The sweep's work in this process, one thing after another, no Ray."""
    import mlflow

    from reports.compare import build_report
    from sweeps.launch.cli import parse_args as sweep_args
    from sweeps.launch.expand import expand_trials, with_preset
    from sweeps.launch.main import _models
    from sweeps.launch.spec import PRESETS
    from trainables.baseline import evaluate_baseline
    from trainables.common.tracking import TrialContext
    from trainables.run_trial import run_trial

    started = time.perf_counter()
    args = sweep_args(argv, sweep)
    preset = PRESETS["tiny"]
    sweep = with_preset(sweep, preset, args)
    configs = expand_trials(sweep, args)
    cache = Path(args.cache_dir)
    model, scorers = _models(args, preset, cache)
    prepared = sweep.data.prepare(model, 64, cache, progress=False)
    uri = f"sqlite:///{work}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("sequential", artifact_location=(work / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment, tags={"sdsweep.sweep": "sequential"}) as parent:
        mlflow.log_params({"preset": "tiny", "model": model, "metric": sweep.metric, "scorers": scorers.text()})
    ctx = TrialContext(model, uri, experiment, parent.info.run_id, prepared.eval, preset.sampling, scorers, prepared,
                       knobs=dict(sweep.knobs))  # fmt: skip
    evaluate_baseline(ctx)
    here = Path.cwd()
    for i, config in enumerate(configs):
        (work / f"trial{i}").mkdir()
        os.chdir(work / f"trial{i}")  # a direct run_trial call writes its files to the working directory
        try:
            run_trial({"trial": config}, ctx)
        finally:
            os.chdir(here)
    build_report(uri, parent.info.run_id, work / "report", sweep.metric, sweep.mode)
    return time.perf_counter() - started


def breakdown(work: Path, launched_at: float, wall: float) -> dict[str, float]:
    """The launcher run's phases from its MLflow runs' start and end times (ms since the epoch)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    baseline = next(r for r in runs if r.data.tags.get("sdsweep.kind") == "baseline")
    trials = [r for r in runs if r.data.tags.get("sdsweep.kind") == "trial"]
    last_trial = max(r.info.end_time for r in trials)
    p = parent.info
    out = {
        "checks, model, Ray start": p.start_time / 1e3 - launched_at,
        "data (render, encode)": (baseline.info.start_time - p.start_time) / 1e3,
        "baseline": (baseline.info.end_time - baseline.info.start_time) / 1e3,
        "trials (first start to last end)": (last_trial - baseline.info.end_time) / 1e3,
        "summary, report, best files": (p.end_time - last_trial) / 1e3,
    }
    out["Ray shutdown, exit"] = wall - sum(out.values())
    for part in ("setup", "train", "eval", "save"):
        out[f"  trials' {part} (sum)"] = sum(r.data.metrics.get(f"time/{part}_s", 0.0) for r in trials)
    setups = [(r.info.start_time, r.data.metrics.get("time/setup_s", 0.0)) for r in trials]
    out["_setups"] = [s for _, s in sorted(setups)]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from trainables.tiny_learned import learned_tiny

    cache = Path(args.cache_dir).expanduser()
    models = cache / "models"
    learned = learned_tiny(cache)
    sweep = the_sweep(args.ranks)
    walls: dict[str, list[float]] = {"sequential": [], "launcher, 1 at a time": [], "launcher": []}
    parts: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_cache = tmp / "cache"
        (data_cache / "models").mkdir(parents=True)
        for name in (learned.name, "tiny-clip-64", "tiny-dino-64"):
            if (models / name).exists():
                shutil.copytree(models / name, data_cache / "models" / name)
        # work done once: the first sweep on this cache renders and encodes the data, the next ones reuse it
        (tmp / "cold").mkdir()
        print("cold data cache: one launcher sweep", flush=True)
        launched = time.time()
        cold_wall = run_launcher(sweep, flags(tmp / "cold", data_cache, args))
        cold = breakdown(tmp / "cold", launched, cold_wall)
        for repeat in range(args.repeats):
            order = list(walls)[repeat % 3 :] + list(walls)[: repeat % 3]
            for name in order:
                work = tmp / f"{name.replace(' ', '').replace(',', '')}-{repeat}"
                work.mkdir()
                print(f"repeat {repeat + 1}: {name}", flush=True)
                if name == "sequential":
                    walls[name].append(run_sequential(sweep, flags(work, data_cache, args), work))
                else:
                    extra = ("--max-concurrent-trials", "1") if "1 at a time" in name else ()
                    launched = time.time()
                    wall = run_launcher(sweep, flags(work, data_cache, args, *extra))
                    walls[name].append(wall)
                    if name == "launcher":
                        parts.append(breakdown(work, launched, wall))
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nsweep overhead: tiny kanji_rank sweep, ranks {args.ranks}, {args.max_chars} kanji, 120 steps, "
          f"its knobs; {args.repeats} repeats on a warm cache")  # fmt: skip
    print(f"  {'variant':<26}{'wall s (each repeat)':>26}{'median':>9}{'min-max':>15}")
    for name, values in walls.items():
        each = " ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<26}{each:>26}{median[name]:>9.1f}{min(values):>8.1f}-{max(values):<6.1f}")
    print(f"  launcher, 1 at a time / sequential: {median['launcher, 1 at a time'] / median['sequential']:.2f}x")
    print(f"  launcher / sequential:              {median['launcher'] / median['sequential']:.2f}x")
    print("\n  launcher breakdown (s, median over repeats; the cold-cache sweep beside it)")
    for key in parts[0]:
        if key.startswith("_"):
            continue
        print(f"  {key:<36}{statistics.median(p[key] for p in parts):>8.1f}{cold[key]:>10.1f}")
    print("\n  work done once: each trial's set-up (start to first step), in start order")
    print(f"  cold cache: {' '.join(f'{s:.1f}' for s in cold['_setups'])}")
    for i, p in enumerate(parts):
        print(f"  warm run {i + 1}: {' '.join(f'{s:.1f}' for s in p['_setups'])}")
    firsts = [s for p in [cold, *parts] for s in p["_setups"][:2]]  # two trial processes start cold
    laters = [s for p in [cold, *parts] for s in p["_setups"][2:]]
    if laters:
        print(f"  later trials' set-up / first trials': {statistics.median(laters) / statistics.median(firsts):.0%} "
              "(medians; the first two trials each start a process)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what running a trial as a Ray Train job costs, against the same trial in Tune's own process.

One tiny LoRA trial (the smoke preset's random tiny SD, the drawn toy subject, 64 px, batch 4) is fitted
through Ray Tune three ways, alternating, in one Ray session:

- ``direct``: the recipe in the Tune trial's process (what ``--workers-per-trial 1`` runs);
- ``train x1``: the same trial as a ``TorchTrainer`` job of one worker (the path N > 1 takes, at N = 1);
- ``train x2``: two data-parallel workers (``--workers-per-trial 2``), each on half of every batch.

Printed per way: wall seconds of ``Tuner.fit`` (median and range over the repeats), the time to the first
training report, and the ratio to ``direct``. ``train x1 - direct`` is what Ray Train adds per trial; it is
why one worker keeps the direct path.

    python benchmarks/train_startup.py                 # 3 repeats, 20 steps
    python benchmarks/train_startup.py --repeats 5 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache-dir", default=None, help="tiny models and data (default: a temporary folder)")
    return parser.parse_args(argv)


def _context(cache: Path, workdir: Path):
    import mlflow

    from eval.scorers import ScorerSpec, build_tiny_clip, build_tiny_dino
    from sweeps.launch.spec import PRESETS
    from trainables.common.tracking import TrialContext
    from trainables.data.subject import SubjectData
    from trainables.models import build_tiny_sd

    model = str(build_tiny_sd(cache / "tiny-sd"))
    scorers = ScorerSpec(build_tiny_clip(cache / "clip", 64), None, str(build_tiny_dino(cache / "dino", 64)))
    data = SubjectData(use_generated_set=True, num_eval_prompts=2, images_per_prompt=1)
    prepared = data.prepare(model, 64, cache)
    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("train_startup", artifact_location=(workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as parent:
        pass
    sampling = replace(PRESETS["smoke"].sampling, resolution=64)
    return TrialContext(model, uri, experiment, parent.info.run_id, prepared.eval, sampling, scorers, prepared,
                        storage_path=str(workdir / "ray"), max_failures=0)  # fmt: skip


def _as_train_job(config, ctx):
    """A Tune trial that always runs its recipe as a Train job (``ctx.workers_per_trial`` workers)."""
    from trainables.common.tracking import trial_dir
    from trainables.run_trial import _run_on_workers

    out_dir, name, trial_id = trial_dir(default_name="local")
    _run_on_workers(config, ctx, out_dir, name, trial_id)


def _fit(way: str, ctx, config: dict, storage: Path, index: int) -> tuple[float, float]:
    """Wall seconds of one trial's ``Tuner.fit`` and seconds to its first report."""
    from ray import tune

    from sweeps.launch.resources import TRIAL_SLOT
    from trainables.run_trial import run_trial

    first = []

    class FirstReport(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not first:
                first.append(time.perf_counter())

    if way == "direct":
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=replace(ctx, workers_per_trial=1)),
                                        {"cpu": 1})  # fmt: skip
    else:
        workers = 1 if way == "train x1" else 2
        trainable = tune.with_resources(
            tune.with_parameters(_as_train_job, ctx=replace(ctx, workers_per_trial=workers)), {TRIAL_SLOT: 1}
        )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": config},
        run_config=tune.RunConfig(
            name=f"{way.replace(' ', '')}-{index}", storage_path=str(storage), verbose=0, callbacks=[FirstReport()]
        ),  # fmt: skip
    )
    start = time.perf_counter()
    (result,) = list(tuner.fit())
    end = time.perf_counter()
    if result.error is not None:
        raise SystemExit(f"{way} failed: {result.error}")
    return end - start, (first[0] - start) if first else float("nan")


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from sweeps.launch.ray_env import quiet_libraries, start_ray

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cache = Path(args.cache_dir).expanduser() if args.cache_dir else workdir / "cache"
        ctx = _context(cache, workdir)
        start_ray(2, dashboard=True)
        config = dict(method="lora", lora_rank=4, unet_lr=1e-3, batch_size=4, resolution=64, seed=0,
                      max_steps=args.steps, eval_every=args.steps, log_every=5)  # fmt: skip
        ways = ["direct", "train x1", "train x2"]
        times: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
        try:
            for i in range(args.repeats):
                for way in ways:  # alternating, so drift in the machine's load hits every way alike
                    times[way].append(_fit(way, ctx, config, workdir / "ray", i))
                    print(f"  repeat {i + 1}/{args.repeats} {way}: {times[way][-1][0]:.1f} s", flush=True)
        finally:
            ray.shutdown()
    base = statistics.median(t for t, _ in times["direct"])
    print(f"\none tiny LoRA trial, {args.steps} steps, {args.repeats} repeats (median, range):")
    print(f"{'way':<10} {'trial s':>8} {'range':>13} {'first report s':>15} {'x direct':>9}")
    for way in ways:
        wall = [t for t, _ in times[way]]
        first = statistics.median(f for _, f in times[way])
        print(f"{way:<10} {statistics.median(wall):8.1f} {min(wall):6.1f}-{max(wall):<6.1f} {first:15.1f} "
              f"{statistics.median(wall) / base:9.2f}")  # fmt: skip
    added = statistics.median(t for t, _ in times["train x1"]) - base
    print(f"\nRay Train adds {added:.1f} s per trial at one worker (train x1 - direct)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

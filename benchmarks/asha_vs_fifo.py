"""Benchmark: does ASHA find FIFO's winner with fewer training steps?

One grid on the tiny preset (the learned tiny SD, kanji, 120 steps per trial): LoRA rank x learning rate,
ranked by glyph purity (the tiny scale's clear signal; glyph IoU is noise here), run twice through the
launcher on the same cache: with ``scheduler="fifo"`` (every trial to the end) and with ``scheduler="asha"``
(Tune's ASHAScheduler on the step count, reduction factor 2, rungs at the evals). So that ASHA has rungs to
stop at, both runs evaluate every 30 steps instead of the preset's 60 (the benchmark's only change to the
preset). Knobs are off: ASHA ranks plain scores.

Printed: each run's wall time, total training steps (the last step each trial reached), each trial's final
purity, both winners, and whether ASHA's winner is FIFO's (or how far below FIFO's best its FIFO score is).

    python benchmarks/asha_vs_fifo.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRIC = "eval/glyph_purity"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4, 3e-3])
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"))
    return p.parse_args(argv)


def run(sweep, work: Path, cache: Path) -> tuple[float, dict[str, tuple[float, int]]]:
    """Launch ``sweep``; returns the wall time and each trial's (final purity, last step) by its settings."""
    import mlflow

    from sweeps.launch import launch

    started = time.perf_counter()
    argv = ["--preset", "tiny", "--cache-dir", str(cache), "--storage-path", str(work / "ray"),
            "--mlflow-uri", f"sqlite:///{work}/mlflow.db", "--report-dir", str(work / "reports")]  # fmt: skip
    code = launch(sweep, argv)
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"error: the {sweep.scheduler} sweep failed (exit {code})")
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
    out = {}
    for r in runs:
        if r.data.tags.get("sdsweep.kind") != "trial":
            continue
        steps = max(m.step for m in client.get_metric_history(r.info.run_id, "train/loss"))
        key = f"rank={r.data.params['lora_rank']} lr={float(r.data.params['unet_lr']):g}"
        out[key] = (r.data.metrics[METRIC], steps)
    return wall, out


def main(argv=None) -> int:
    args = parse_args(argv)
    from ray import tune

    import sweeps.launch.main as launcher
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch.spec import PRESETS

    preset = PRESETS["tiny"]
    launcher.PRESETS["tiny"] = replace(preset, forced={**preset.forced, "eval_every": args.eval_every})
    space = {"lora_rank": tune.grid_search(args.ranks), "lora_alpha": SWEEP.search_space["lora_alpha"],
             "unet_lr": tune.grid_search(args.lrs)}  # fmt: skip
    cache = Path(args.cache_dir).expanduser()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("fifo", "asha"):
            sweep = replace(SWEEP, name=f"asha_bench_{name}", search_space=space, scheduler=name, metric=METRIC,
                            knobs={})  # fmt: skip
            (Path(tmp) / name).mkdir()
            results[name] = run(sweep, Path(tmp) / name, cache)
    (fifo_wall, fifo), (asha_wall, asha) = results["fifo"], results["asha"]
    fifo_steps, asha_steps = sum(s for _, s in fifo.values()), sum(s for _, s in asha.values())
    full = max(s for _, s in fifo.values())
    fifo_best = max(fifo, key=lambda k: fifo[k][0])
    finished = {k: v for k, v in asha.items() if v[1] == full}
    asha_best = max(finished, key=lambda k: finished[k][0])
    print(f"\nASHA vs FIFO: tiny kanji sweep, {len(fifo)} trials (ranks {args.ranks} x lr {args.lrs}), {full} steps, "
          f"eval every {args.eval_every}, ranked by {METRIC}")  # fmt: skip
    print(f"  {'trial':<24}{'FIFO purity':>12}{'ASHA purity':>13}{'ASHA steps':>12}")
    for key in sorted(fifo, key=lambda k: -fifo[k][0]):
        print(f"  {key:<24}{fifo[key][0]:>12.4f}{asha[key][0]:>13.4f}{asha[key][1]:>12d}")
    print(f"  FIFO: {fifo_steps} steps, {fifo_wall:.0f} s; ASHA: {asha_steps} steps ({asha_steps / fifo_steps:.0%}), "
          f"{asha_wall:.0f} s ({asha_wall / fifo_wall:.0%})")  # fmt: skip
    gap = fifo[fifo_best][0] - fifo[asha_best][0]
    same = (
        "the same winner"
        if asha_best == fifo_best
        else f"a different winner, {gap:.4f} below FIFO's best by FIFO's scores"
    )
    print(
        f"  FIFO's winner {fifo_best} ({fifo[fifo_best][0]:.4f}); "
        f"ASHA's winner {asha_best} ({asha[asha_best][0]:.4f}): {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

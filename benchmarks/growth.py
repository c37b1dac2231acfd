"""Benchmark: how data preparation and sweeps grow with the number of kanji and of trials.

1. Data: for 100, 1,000 and all (~6.4k) kanji, on a fresh cache each: rendering the glyphs, encoding them
   with the tiny preset's frozen VAE and text encoder, the prepared data's size (what the object store
   holds: the pickled ``PreparedData``), and this process's peak memory after it (RSS high-water mark,
   cumulative over the sizes, so it only grows).
2. Sweeps: the tiny kanji sweep (the tiny preset: learned tiny SD, 120 steps, its knobs) with 2, 8 and 32
   trials (LoRA ranks 1..128 x seeds) on a warm cache: wall time, time per trial,
   and the trial processes' peak RSS (``sys/peak_rss_mb``, each trial's process, logged when it finishes).

Per-unit cost (ms per glyph, s per trial) should stay flat as things grow.

    python benchmarks/growth.py                      # 100/1000/all kanji, 2/8/32 trials
    python benchmarks/growth.py --chars 100 1000 --trials 2 8
"""

from __future__ import annotations

import argparse
import pickle
import resource
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
    p.add_argument("--chars", type=int, nargs="+", default=[100, 1000, 0], help="kanji per dataset; 0 = all")
    p.add_argument("--trials", type=int, nargs="+", default=[2, 8, 32])
    p.add_argument("--sweep-chars", type=int, default=400, help="kanji in the sweeps' data (default 400)")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"))
    return p.parse_args(argv)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data_growth(model: str, sizes: list[int], tmp: Path) -> list[tuple]:
    from trainables.data.kanji import KanjiData, build_dataset

    rows = []
    for n in sizes:
        cache = tmp / f"data-{n}"
        started = time.perf_counter()
        build_dataset(cache, 64, max_chars=n or None, progress=False)
        rendered = time.perf_counter()
        prepared = KanjiData(max_chars=n or None, n_heldout=1).prepare(model, 64, cache, progress=False)
        encoded = time.perf_counter()
        count = len(prepared.train)
        size = len(pickle.dumps(prepared)) / 2**20
        rows.append((n or "all", count, rendered - started, encoded - rendered, size, rss_mb()))
        shutil.rmtree(cache)
    return rows


def sweep_growth(counts: list[int], cache: Path, tmp: Path, chars: int) -> list[tuple]:
    import mlflow
    from ray import tune

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    rows = []
    for n in counts:
        ranks = [1, 2, 4, 8, 16, 32, 64, 128][: min(n, 8)]
        seeds = list(range(-(-n // len(ranks))))  # ranks x seeds >= n trials (exactly n for 2, 8, 32)
        sweep = replace(SWEEP, name=f"growth{n}", search_space={
            "lora_rank": tune.grid_search(ranks), "lora_alpha": SWEEP.search_space["lora_alpha"],
            "seed": tune.grid_search(seeds)})  # fmt: skip
        n = len(ranks) * len(seeds)
        work = tmp / f"sweep-{n}"
        work.mkdir()
        started = time.perf_counter()
        code = launch(sweep, ["--preset", "tiny", "--cache-dir", str(cache), "--storage-path", str(work / "ray"),
                              "--mlflow-uri", f"sqlite:///{work}/mlflow.db", "--report-dir", str(work / "reports"),
                              "--max-chars", str(chars)])  # fmt: skip
        wall = time.perf_counter() - started
        if code != 0:
            sys.exit(f"error: the {n}-trial sweep failed (exit {code})")
        client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
        trials = [r for r in runs if r.data.tags.get("sdsweep.kind") == "trial"]
        peaks = [r.data.metrics.get("sys/peak_rss_mb", float("nan")) for r in trials]
        totals = [r.data.metrics.get("time/total_s", float("nan")) for r in trials]
        rows.append((n, len(trials), wall, wall / n, statistics.median(totals), max(peaks)))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from trainables.tiny_learned import learned_tiny

    cache = Path(args.cache_dir).expanduser()
    model = str(learned_tiny(cache))
    with tempfile.TemporaryDirectory() as tmp:
        data_rows = data_growth(model, args.chars, Path(tmp))
        sweep_rows = sweep_growth(args.trials, cache, Path(tmp), args.sweep_chars)
    print("\ngrowth: data (64 px, the learned tiny SD's VAE and text encoder)")
    print(f"  {'kanji':>6}{'train glyphs':>14}{'render s':>10}{'ms/glyph':>10}{'encode s':>10}{'ms/glyph':>10}"
          f"{'prepared MB':>13}{'peak RSS MB':>13}")  # fmt: skip
    for n, count, render, encode, size, peak in data_rows:
        print(f"  {n!s:>6}{count:>14}{render:>10.1f}{1e3 * render / count:>10.2f}{encode:>10.1f}"
              f"{1e3 * encode / count:>10.2f}{size:>13.1f}{peak:>13.0f}")  # fmt: skip
    print(f"\ngrowth: tiny kanji sweeps ({args.sweep_chars} kanji, 120 steps, knobs on, 2 trials at a time)")
    print(f"  {'trials':>7}{'wall s':>9}{'s/trial':>9}{'trial median s':>16}{'peak trial RSS MB':>19}")
    for n, _, wall, per, median, peak in sweep_rows:
        print(f"  {n:>7}{wall:>9.1f}{per:>9.1f}{median:>16.1f}{peak:>19.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: does a LoRA trained by the project's own trainable change a tiny model's kanji, and by how much?

Side by side on the same kanji data, prompts and seeds (glyph purity: share of pixels near black or white):

- ``random tiny``: the random tiny SD the tests use (coloured noise): baseline and a trained attention LoRA;
- ``learned tiny``: ``trainables.tiny_learned`` (VAE trained on glyphs and shapes, UNet pretrained on coloured
  shapes): its baseline draws shapes; the same LoRA, trained on kanji, should move it toward ink on paper.

Each LoRA is a real ``run_trial`` call (the recipe a sweep's trial runs, with MLflow records), attention
targets, rank = alpha; printed: baseline and trained purity and IoU, their difference, the training time.

    python benchmarks/tiny_learning.py                       # 400 steps, rank 8
    python benchmarks/tiny_learning.py --steps 300 --ranks 4 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"))
    parser.add_argument("--skip-random", action="store_true", help="only the learned tiny model")
    return parser.parse_args(argv)


def measure(model: str, label: str, args, cache: Path, work: Path) -> None:
    import mlflow

    from eval.evaluate import SamplingConfig, evaluate
    from eval.scorers import ScorerSpec, build_tiny_clip, build_tiny_dino, load_scorers
    from trainables.common.tracking import TrialContext
    from trainables.data.kanji import KanjiData
    from trainables.models import load_pipeline
    from trainables.run_trial import run_trial

    scorers = ScorerSpec(build_tiny_clip(cache / "models" / "tiny-clip-64", 64), None,
                         str(build_tiny_dino(cache / "models" / "tiny-dino-64", 64)))  # fmt: skip
    prepared = KanjiData(max_chars=400, n_heldout=8).prepare(model, 64, cache)
    sampling = SamplingConfig(steps=10, guidance_scale=7.5, resolution=64, batch_size=8)
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    base, _, _ = evaluate(pipe, prepared.eval, load_scorers(scorers), sampling)
    uri = f"sqlite:///{work}/{label.replace(' ', '-')}.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(label, artifact_location=(work / label.replace(" ", "-")).as_uri())
    with mlflow.start_run(experiment_id=experiment) as parent:
        pass
    ctx = TrialContext(model, uri, experiment, parent.info.run_id, prepared.eval, sampling, scorers, prepared)
    print(f"\n{label} ({model})")
    print(f"  {'run':<16}{'glyph_purity':>14}{'vs baseline':>13}{'glyph_iou':>11}{'vs baseline':>13}{'train s':>9}")
    print(f"  {'baseline':<16}{base['eval/glyph_purity']:>14.4f}{'':>13}{base['eval/glyph_iou']:>11.4f}")
    for rank in args.ranks:
        config = {"method": "lora", "lora_rank": rank, "lora_alpha": float(rank), "unet_lr": args.lr,
                  "lora_target_modules": ("to_q", "to_k", "to_v", "to_out.0"), "max_steps": args.steps,
                  "batch_size": args.batch_size, "resolution": 64, "eval_every": args.steps,
                  "log_every": 50, "eval_at_start": False}  # fmt: skip
        started = time.perf_counter()
        run_trial(config, ctx)
        seconds = time.perf_counter() - started
        (run,) = mlflow.search_runs([experiment], f"params.lora_rank = '{rank}'", output_format="list")
        m = run.data.metrics
        purity, iou = m["eval/glyph_purity"], m["eval/glyph_iou"]
        print(f"  {f'lora r{rank}':<16}{purity:>14.4f}{purity - base['eval/glyph_purity']:>+13.4f}"
              f"{iou:>11.4f}{iou - base['eval/glyph_iou']:>+13.4f}{seconds:>9.1f}")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    from trainables.models import build_tiny_sd
    from trainables.tiny_learned import learned_tiny

    cache = Path(args.cache_dir).expanduser()
    started = time.perf_counter()
    learned = learned_tiny(cache)
    print(f"learned tiny model ready in {time.perf_counter() - started:.0f} s (0 when cached)")
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.chdir(tmp)  # a direct run_trial call writes its files to the working directory
        if not args.skip_random:
            measure(str(build_tiny_sd(cache / "models" / "tiny-sd")), "random tiny", args, cache, Path(tmp))
        measure(str(learned), "learned tiny", args, cache, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

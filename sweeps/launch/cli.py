"""The command line every sweep shares, plus the flags of the sweep's data kind."""

from __future__ import annotations

import argparse

from eval.scorers import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from sweeps.launch.spec import PRESETS, Sweep
from trainables.data.kanji import DEFAULT_CACHE_DIR


def parse_args(argv: list[str] | None, sweep: Sweep) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python sweeps/{sweep.name}.py",
        description=f"Run the {sweep.name} sweep on Ray Tune, tracked in MLflow.",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="sd15",
        help="sd15 (GPU, default), tiny (CPU, a tiny SD that learns) or smoke (CPU, random, 20 steps)",
    )
    parser.add_argument("--model", help="Stable Diffusion hub id or local folder (overrides the preset)")
    parser.add_argument("--max-steps", type=int, help="training steps per trial (overrides the preset)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="repeats of the grid, or trials drawn by random/optuna search (default 1)",
    )
    parser.add_argument(
        "--workers-per-trial",
        type=int,
        help="Ray Train data-parallel workers per trial; batch_size is split over them (default: the sweep's, 1)",
    )
    parser.add_argument(
        "--gpus-per-trial",
        "--gpus-per-worker",
        type=float,
        help="GPUs per trial worker, fractions allowed (preset default)",
    )
    parser.add_argument(
        "--cpus-per-trial", "--cpus-per-worker", type=float, help="CPUs per trial worker (preset default)"
    )
    parser.add_argument("--max-concurrent-trials", type=int, help="cap on trials running at once")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="restarts of a trial whose process dies, each from its last checkpoint (default 2)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue this sweep's last unfinished launch (its driver died): only unfinished trials run",
    )
    parser.add_argument("--fresh", action="store_true", help="close this sweep's unfinished launch and start over")
    parser.add_argument("--storage-path", help="Ray Tune results: a folder or s3://... (default ~/ray_results)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="datasets, encoded latents, class images and tiny models (default ~/.cache/sdsweep)",
    )
    parser.add_argument("--report-dir", default="reports", help="reports go to REPORT_DIR/<sweep>/ (default reports)")
    parser.add_argument("--clip-model", help=f"open_clip model name or local-dir:DIR (default {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--clip-pretrained", help=f"open_clip weights tag or file (default {DEFAULT_CLIP_PRETRAINED})")
    parser.add_argument("--dino-model", help="DINO hub id or local folder (default facebook/dino-vits16)")
    type(sweep.data).add_cli_args(parser.add_argument_group(f"{sweep.data.kind} data"))
    return parser.parse_args(argv)  # fmt: skip

"""Tiny real models built from config with fixed seeds, saved once per session and loaded back through the
same ``from_pretrained`` paths a real run uses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_sd(tiny_dir) -> str:
    from trainables.models import build_tiny_sd

    return str(build_tiny_sd(tiny_dir / "tiny-sd"))


@pytest.fixture(scope="session")
def tiny_scorer_spec(tiny_dir):
    from eval.scorers import ScorerSpec, build_tiny_clip, build_tiny_dino

    return ScorerSpec(build_tiny_clip(tiny_dir / "clip", 64), None, str(build_tiny_dino(tiny_dir / "dino", 64)))


@pytest.fixture(scope="session")
def tiny_scorers(tiny_scorer_spec):
    from eval.scorers import load_scorers

    return load_scorers(tiny_scorer_spec)


@pytest.fixture(scope="session")
def kanji_dir(tmp_path_factory) -> Path:
    """A small real kanji dataset (first 120 characters, 64 px) rendered from KanjiVG + KANJIDIC2."""
    from trainables.data.kanji import build_dataset

    return build_dataset(tmp_path_factory.mktemp("kanji-cache"), size=64, max_chars=120, progress=False)


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory) -> Path:
    """The cache (tiny models, rendered and encoded kanji) the sweep tests share."""
    return tmp_path_factory.mktemp("sdsweep-cache")


def sweep_args(tmp_path: Path, cache: Path, preset: str = "smoke") -> list[str]:
    """A sweep's flags for a test: ``smoke`` (random tiny models, 20 steps) tests the machinery; ``tiny`` (the
    learned tiny model, 120 steps) is what the README's first command runs."""
    return ["--preset", preset, "--cache-dir", str(cache), "--storage-path", str(tmp_path / "ray"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--report-dir", str(tmp_path / "reports"),
            "--max-chars", "160"]  # fmt: skip


@pytest.fixture(scope="session")
def kanji_cluster_run(tmp_path_factory, sweep_cache):
    """The tiny kanji_rank sweep as a user runs it on a cluster: `ray job submit --working-dir .` to a
    two-node Ray cluster with token auth (tests/_cluster.py), on the tiny preset (the learned tiny model,
    built in the job, and 120 steps per trial). One sweep serves test_cluster (placement, the job path, a
    refused request) and test_sweep_e2e (records, report, verdict, learning). Returns (ClusterRun, folder)."""
    from _cluster import run_kanji_on_two_nodes

    tmp = tmp_path_factory.mktemp("kanji-rank")
    refused = [*sweep_args(tmp / "refused", sweep_cache), "--cpus-per-trial", "2"]
    return run_kanji_on_two_nodes(sweep_args(tmp, sweep_cache, "tiny"), refused), tmp

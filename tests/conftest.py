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

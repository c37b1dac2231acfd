"""Every sweep file expands its search space into valid trial configs, without starting Ray."""

import importlib
from pathlib import Path

import pytest

from sweeps.launch import PRESETS
from sweeps.launch.cli import parse_args
from sweeps.launch.expand import expand_trials, validate_trials, with_preset

# experiments only: the shared machinery lives in sweeps/launch/
SWEEP_FILES = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "sweeps").glob("*.py") if p.stem != "__init__"
)


def test_there_are_sweeps():
    assert "kanji_rank" in SWEEP_FILES


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_expands_to_valid_trials(name, preset):
    sweep = importlib.import_module(f"sweeps.{name}").SWEEP
    args = parse_args(["--preset", preset], sweep)
    sweep = with_preset(sweep, PRESETS[preset], args)
    trials = validate_trials(sweep, expand_trials(sweep, args))
    assert trials, f"{name} expands to no trial"
    assert sweep.name == name


def test_kanji_rank_grid_sets_alpha_per_trial():
    from sweeps.kanji_rank import SWEEP

    args = parse_args(["--preset", "tiny", "--max-steps", "7"], SWEEP)
    trials = validate_trials(SWEEP, expand_trials(SWEEP, args))
    assert [t.spec.lora_rank for t in trials] == [1, 4, 8, 16, 64]
    assert [t.spec.lora_alpha for t in trials] == [1.0, 4.0, 8.0, 16.0, 64.0]
    assert {t.train.max_steps for t in trials} == {7}
    assert {t.train.resolution for t in trials} == {64}
    assert {t.spec.unet_lr for t in trials} == {1e-3}  # the tiny preset's rate for lora

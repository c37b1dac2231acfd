"""Every sweep file expands its search space into valid trial configs, without starting Ray."""

import importlib
from pathlib import Path

import pytest

from sweeps.launcher import PRESETS, expand_trials, parse_args, trial_base_config, validate_trials

SWEEP_FILES = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[1] / "sweeps").glob("*.py")
    if p.stem not in {"__init__", "launcher"}
)


def test_there_are_sweeps():
    assert "kanji_rank" in SWEEP_FILES


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_expands_to_valid_trials(name, preset):
    sweep = importlib.import_module(f"sweeps.{name}").SWEEP
    args = parse_args(["--preset", preset], sweep)
    trials = validate_trials(sweep, expand_trials(sweep, trial_base_config(sweep, args)))
    assert trials, f"{name} expands to no trial"
    assert sweep.name == name


def test_kanji_rank_grid_sets_alpha_per_trial():
    from sweeps.kanji_rank import SWEEP

    args = parse_args(["--preset", "tiny", "--max-steps", "7"], SWEEP)
    trials = validate_trials(SWEEP, expand_trials(SWEEP, trial_base_config(SWEEP, args)))
    assert [t.lora_rank for t in trials] == [1, 4, 8, 16, 64]
    assert [t.lora_alpha for t in trials] == [1.0, 4.0, 8.0, 16.0, 64.0]
    assert {t.max_steps for t in trials} == {7}
    assert {t.resolution for t in trials} == {64}

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
def test_sweep_expands_to_valid_trials(name, preset, tmp_path):
    from trainables.data.tiny_sets import write_style_set, write_subject_set

    sweep = importlib.import_module(f"sweeps.{name}").SWEEP
    flags = ["--preset", preset]
    if preset == "sd15" and sweep.data.kind == "subject":  # real runs need the user's photos
        flags += ["--data-dir", str(write_subject_set(tmp_path / "toy")), "--class-noun", "toy"]
    if preset == "sd15" and sweep.data.kind == "captioned":
        flags += ["--data-dir", str(write_style_set(tmp_path / "style")), "--trigger-word", "sdswstyle"]
    args = parse_args(flags, sweep)
    sweep = with_preset(sweep, PRESETS[preset], args)
    trials = validate_trials(sweep, expand_trials(sweep, args))
    assert trials, f"{name} expands to no trial"
    assert sweep.name == name


def test_kanji_rank_grid_sets_alpha_per_trial():
    from sweeps.kanji_rank import SWEEP

    args = parse_args(["--preset", "smoke", "--max-steps", "7"], SWEEP)
    trials = validate_trials(SWEEP, expand_trials(SWEEP, args))
    assert [t.spec.lora_rank for t in trials] == [1, 4, 8, 16, 64]
    assert [t.spec.lora_alpha for t in trials] == [1.0, 4.0, 8.0, 16.0, 64.0]
    assert {t.train.max_steps for t in trials} == {7}
    assert {t.train.resolution for t in trials} == {64}
    assert {t.spec.unet_lr for t in trials} == {1e-3}  # the tiny preset's rate for lora


def _arms_error(data, *arms):
    from sweeps.launch import Sweep, SweepError

    sweep = Sweep("combo", data, {"seed": 0}, arms=arms)
    args = parse_args(["--preset", "smoke"], sweep)
    sweep = with_preset(sweep, PRESETS["smoke"], args)
    with pytest.raises(SweepError) as err:
        validate_trials(sweep, expand_trials(sweep, args))
    return str(err.value)


@pytest.mark.parametrize(
    "arm, data_kind, expected",
    [
        ({"method": "dreambooth", "prior_loss_weight": 0.5}, "subject",
         r"trial 1 .*prior_loss_weight=0.5 is not valid: .*with_prior_preservation=True"),
        ({"method": "textual_inversion", "lora_rank": 8}, "subject",
         r"trial 1 .*lora_rank is a setting of .*not of method 'textual_inversion'"),
        ({"method": "full", "text_encoder_lr": 5e-5}, "kanji",
         r"trial 1 .*text_encoder_lr is a setting of .*not of method 'full'"),
        ({"method": "dreambooth"}, "kanji", r"trial 1 .*method 'dreambooth' trains on subject data .* kanji"),
        ({"method": "dreambooth_lora", "with_prior_preservation": True, "num_class_images": 0}, "subject",
         r"trial 1 .*num_class_images=0 is not valid"),
    ],
)  # fmt: skip
def test_bad_method_combinations_are_refused_before_trials(arm, data_kind, expected):
    from trainables.data.kanji import KanjiData
    from trainables.data.subject import SubjectData

    data = {"kanji": KanjiData(), "subject": SubjectData()}[data_kind]
    first = {"method": "lora"}  # a good arm first: the error must name the bad trial, not the first
    assert __import__("re").search(expected, _arms_error(data, first, arm)), _arms_error(data, first, arm)


def test_subject_photos_without_a_class_noun_are_refused_before_trials(tmp_path):
    from trainables.data.subject import SubjectData
    from trainables.data.tiny_sets import write_subject_set

    data = SubjectData(data_dir=str(write_subject_set(tmp_path / "toy")))
    message = _arms_error(data, {"method": "dreambooth", "with_prior_preservation": True})
    assert message.startswith("subject data needs a class noun: pass --class-noun NOUN")


def test_method_arms_expand_in_order_with_each_methods_preset_rate(tmp_path):
    from sweeps.dreambooth_methods import SWEEP

    args = parse_args(["--preset", "smoke"], SWEEP)
    sweep = with_preset(SWEEP, PRESETS["smoke"], args)
    trials = validate_trials(sweep, expand_trials(sweep, args))
    assert [(t.method, getattr(t.spec, "with_prior_preservation", None)) for t in trials] == [
        ("lora", None), ("dreambooth", False), ("dreambooth", True), ("dreambooth_lora", True),
        ("textual_inversion", None),
    ]  # fmt: skip
    # the tiny preset forces its size over the sweep's SD 1.5 settings (800 steps, TI 2000)
    assert {t.train.max_steps for t in trials} == {20} and {t.train.resolution for t in trials} == {64}
    assert {t.train.batch_size for t in trials} == {1}  # the sweep's own batch size stands
    assert trials[1].spec.unet_lr == 1e-4 and trials[-1].spec.learning_rate == 5e-3
    from trainables.data.tiny_sets import write_subject_set

    flags = ["--data-dir", str(write_subject_set(tmp_path / "toy")), "--class-noun", "toy"]
    args = parse_args(flags, SWEEP)
    full = validate_trials(with_preset(SWEEP, PRESETS["sd15"], args), expand_trials(SWEEP, args))
    assert [t.train.max_steps for t in full] == [800, 800, 800, 800, 2000]
    assert {t.train.resolution for t in full} == {512}


def test_a_swept_setting_the_tiny_preset_forces_is_kept():
    from ray import tune

    from sweeps.launch import Sweep
    from trainables.data.kanji import KanjiData

    sweep = Sweep("steps", KanjiData(), {"method": "lora"}, {"max_steps": tune.grid_search([5, 9])})
    trials = validate_trials(sweep, expand_trials(sweep, parse_args(["--preset", "smoke"], sweep)))
    assert [t.train.max_steps for t in trials] == [5, 9]


def test_the_parent_run_records_the_search_space_as_written():
    """No `<function <lambda> at 0x...>` in MLflow: grids, distributions and sample_from as in the sweep file."""
    from ray import tune

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch.parent_run import describe

    assert describe(SWEEP.search_space) == {
        "lora_rank": "tune.grid_search([1, 4, 8, 16, 64])",
        "lora_alpha": 'tune.sample_from(lambda config: float(config["lora_rank"]))',
    }
    assert describe({"lr": tune.loguniform(1e-5, 1e-3), "opt": tune.choice(["adamw"]), "seed": 0}) == {
        "lr": "tune.loguniform(1e-05, 0.001)", "opt": "tune.choice(['adamw'])", "seed": "0"
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"knobs": {"lora_scale": []}}, "knob lora_scale=[]: give a non-empty list"),
        ({"knobs": {"cfg": [3.0]}}, "knob 'cfg' is unknown: choose from"),
        ({"metric": "eval/glyph_iou scale:2 cfg:3"}, "the knob setting 'scale:2 cfg:3' is not in the sweep's knobs"),
        ({"metric": "eval/glyph_iou best knob", "scheduler": "asha"}, "knob settings are scored only at a trial's"),
    ],
)  # fmt: skip
def test_bad_knobs_are_refused_before_anything_starts(tmp_path, capsys, change, expected):
    from dataclasses import replace

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    code = launch(replace(SWEEP, **change), ["--preset", "smoke", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db",
                                              "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "m.db").exists() and not any((tmp_path / "cache").glob("*"))  # nothing started


def test_asha_starts_a_grid_in_a_seeded_shuffle_and_fifo_as_written():
    """ASHA can only stop a trial that is worse than those before it at a rung: a grid written weakest first
    would stop nothing, so under ASHA the launcher starts the grid shuffled (the same shuffle on a resume)."""
    from sweeps.launch.main import run_order

    configs = [{"lora_rank": r, "unet_lr": lr} for lr in (1e-4, 1e-3) for r in (1, 4, 16)]
    assert run_order(configs, "fifo") == configs
    shuffled = run_order(configs, "asha")
    assert shuffled != configs and sorted(map(str, shuffled)) == sorted(map(str, configs))
    assert run_order(configs, "asha") == shuffled

"""Trial configs and the launcher's checks reject bad input with a message naming field, value and fix."""

import pytest

from sweeps.launch.cli import parse_args
from sweeps.launch.expand import expand_trials, validate_trials
from trainables.registry import parse_trial_config


def _expand(sweep, preset="smoke"):
    return expand_trials(sweep, parse_args(["--preset", preset], sweep))


def test_defaults_are_valid_and_alpha_is_independent_of_rank():
    cfg = parse_trial_config({"method": "lora", "lora_rank": 16, "lora_alpha": 4}).spec
    assert (cfg.lora_rank, cfg.lora_alpha) == (16, 4)
    assert cfg.lora_target_modules == ("to_q", "to_k", "to_v", "to_out.0")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("lora_rank", 0, "lora_rank=0 is not valid: use a whole number >= 1"),
        ("lora_rank", 2.5, "lora_rank=2.5 is not valid"),
        ("unet_lr", -1e-4, "unet_lr=-0.0001 is not valid: use a learning rate in (0, 1)"),
        ("lora_target_modules", ("to_q", "to_qq"), "lora_target_modules=['to_qq'] is not valid: choose from"),
        ("lora_alpha", 0, "lora_alpha=0 is not valid"),
        ("lora_init", "zeros", "lora_init='zeros' is not valid: choose one of"),
        ("lora_init", "pissa", "lora_init='pissa' is not valid: choose one of ('default', 'gaussian')"),
        ("resolution", 100, "resolution=100 is not valid: use a multiple of 8"),
        ("lr_scheduler", "cosine_restarts", "lr_scheduler='cosine_restarts' is not valid"),
        ("mixed_precision", "fp8", "mixed_precision='fp8' is not valid"),
        ("batch_size", 0, "batch_size=0 is not valid"),
    ],
)
def test_bad_values_name_field_value_and_fix(field, value, expected):
    with pytest.raises(ValueError) as err:
        parse_trial_config({"method": "lora", field: value})
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_setting_is_rejected_not_ignored():
    with pytest.raises(ValueError, match=r"unknown setting 'lora_dropout_rate' for method 'lora'"):
        parse_trial_config({"method": "lora", "lora_rank": 4, "lora_dropout_rate": 0.1})


def test_warmup_must_fit_in_the_run():
    with pytest.raises(ValueError, match="lr_warmup_steps=50 is not valid"):
        parse_trial_config({"method": "lora", "max_steps": 50, "lr_warmup_steps": 50})


def test_a_string_where_a_number_belongs_names_the_field():
    with pytest.raises(ValueError, match=r"lora_alpha='4' is not valid: use a positive number"):
        parse_trial_config({"method": "lora", "lora_alpha": "4"})


def test_method_must_be_known_and_set():
    with pytest.raises(ValueError, match=r"method='lorra' is not valid: choose one of \["):
        parse_trial_config({"method": "lorra"})
    with pytest.raises(ValueError, match="method is not set"):
        parse_trial_config({"lora_rank": 4})


def test_text_encoder_lr_without_training_the_text_encoder_is_refused():
    with pytest.raises(ValueError, match="text_encoder_lr=5e-05 is not valid: the text encoder is frozen"):
        parse_trial_config({"method": "lora", "text_encoder_lr": 5e-5})
    trial = parse_trial_config({"method": "lora", "train_text_encoder": True, "text_encoder_lr": 5e-5})
    assert trial.spec.text_lr() == 5e-5 and not trial.cached_text


def test_cached_text_embeddings_with_a_trained_text_encoder_is_refused():
    with pytest.raises(ValueError, match="cache_text_embeddings=True is not valid: method 'lora' trains the text"):
        parse_trial_config({"method": "lora", "train_text_encoder": True, "cache_text_embeddings": True})
    assert parse_trial_config({"method": "lora"}).cached_text
    assert not parse_trial_config({"method": "lora", "cache_text_embeddings": False}).cached_text


def test_params_hold_the_method_and_only_its_settings():
    params = parse_trial_config({"method": "lora", "lora_rank": 8}).params()
    assert params["method"] == "lora" and params["lora_rank"] == 8 and params["batch_size"] == 4
    assert params["lora_target_modules"] == "to_q,to_k,to_v,to_out.0"


def test_launcher_names_the_bad_trial_before_ray_starts():
    from ray import tune

    from sweeps.launch import Sweep, SweepError
    from trainables.data.kanji import KanjiData

    sweep = Sweep("bad", KanjiData(), {"method": "lora"}, {"lora_rank": tune.grid_search([4, 0])})
    with pytest.raises(SweepError, match=r"trial 1 \{'lora_rank': 0\}: lora_rank=0 is not valid"):
        validate_trials(sweep, _expand(sweep))


def test_launcher_rejects_a_swept_resolution():
    from ray import tune

    from sweeps.launch import Sweep, SweepError
    from trainables.data.kanji import KanjiData

    sweep = Sweep("res", KanjiData(), {"method": "lora"}, {"resolution": tune.grid_search([256, 512])})
    with pytest.raises(SweepError, match="latents are encoded once per sweep"):
        validate_trials(sweep, _expand(sweep))


def test_bad_caption_template_is_caught_before_trials():
    from sweeps.launch import Sweep, SweepError
    from trainables.data.kanji import KanjiData

    sweep = Sweep("tpl", KanjiData(caption_template="kanji {meening}"), {"method": "lora"})
    with pytest.raises(SweepError, match=r"caption_template='kanji \{meening\}' is not valid"):
        validate_trials(sweep, [{"method": "lora"}])


def test_cli_rejects_fp16_without_gpu(capsys):
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    code = launch(SWEEP, ["--preset", "sd15", "--gpus-per-trial", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: mixed_precision='fp16' needs a GPU") and "\n" not in err


def test_optuna_space_rejects_grid_and_sample_from():
    from ray import tune

    from sweeps.launch import Sweep, SweepError
    from trainables.data.kanji import KanjiData

    grid = Sweep("o", KanjiData(), {"method": "lora"}, {"lora_rank": tune.grid_search([1, 2])}, search_alg="optuna")
    with pytest.raises(SweepError, match=r"search_space\['lora_rank'\] is a grid_search, which Optuna cannot take"):
        validate_trials(grid, [{"method": "lora", "lora_rank": 1}])
    func = Sweep("o", KanjiData(), {"method": "lora"}, {"lora_alpha": tune.sample_from(lambda c: 1.0)},
                 search_alg="optuna")  # fmt: skip
    with pytest.raises(SweepError, match="is a sample_from function"):
        validate_trials(func, [{"method": "lora"}])


def test_default_preset_on_a_machine_without_gpu_is_one_line_not_a_hang(capsys):
    import torch

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    assert launch(SWEEP, []) == 2
    err = capsys.readouterr().err.strip()
    assert "--preset sd15 gives each trial 1 GPU and this machine has none: use --preset tiny" in err
    assert "\n" not in err


def test_repeating_an_all_fixed_grid_is_refused(capsys):
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    assert launch(SWEEP, ["--preset", "smoke", "--num-samples", "3"]) == 2
    assert "--num-samples 3 would repeat identical trials" in capsys.readouterr().err


def test_precision_cannot_vary_across_trials():
    from ray import tune

    from sweeps.launch import Sweep, SweepError
    from trainables.data.kanji import KanjiData

    sweep = Sweep("mp", KanjiData(), {"method": "lora"}, {"mixed_precision": tune.grid_search(["no", "bf16"])})
    with pytest.raises(SweepError, match="the baseline is sampled once at the trials' precision"):
        validate_trials(sweep, _expand(sweep))


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    from pathlib import Path

    from sweeps.launch import SweepError
    from sweeps.launch.parent_run import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"  # absolute: trials run elsewhere
    assert resolve_tracking_uri("sqlite:///runs/x.db") == f"sqlite:///{tmp_path}/runs/x.db"
    assert resolve_tracking_uri("sqlite:///~/x.db") == f"sqlite:///{Path.home()}/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"  # the flag wins
    with pytest.raises(SweepError, match="is not a URI MLflow 3 accepts"):
        resolve_tracking_uri("mlruns")


def test_unreachable_mlflow_server_is_one_line(capsys):
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    code = launch(SWEEP, ["--preset", "smoke", "--mlflow-uri", "http://127.0.0.1:9", "--max-chars", "50"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach MLflow at http://127.0.0.1:9") and "\n" not in err


@pytest.mark.parametrize("flag", ["--cache-dir", "--report-dir", "--storage-path"])
def test_a_file_where_a_folder_belongs_is_one_line_before_anything_starts(flag, tmp_path, capsys):
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    assert launch(SWEEP, ["--preset", "smoke", flag, str(a_file), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag} {a_file} is a file, not a folder: pass a folder (it is created if missing)"]
    assert not (tmp_path / "m.db").exists()  # stopped before MLflow was touched

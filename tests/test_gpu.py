"""Real weights on a GPU: the sd15 preset's code path (SD 1.5, OpenAI CLIP ViT-L/14, DINO ViT-S/16).

Deselected by default; run with ``pytest -m gpu`` where a CUDA GPU and the weights (hub access or a local
copy given by SDSWEEP_SD15, SDSWEEP_CLIP_PRETRAINED, SDSWEEP_DINO) exist.
"""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from ray import tune
from safetensors.torch import load_file

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _weights_args():
    args = []
    if os.environ.get("SDSWEEP_SD15"):
        args += ["--model", os.environ["SDSWEEP_SD15"]]
    if os.environ.get("SDSWEEP_CLIP_PRETRAINED"):
        args += ["--clip-pretrained", os.environ["SDSWEEP_CLIP_PRETRAINED"]]
    if os.environ.get("SDSWEEP_DINO"):
        args += ["--dino-model", os.environ["SDSWEEP_DINO"]]
    return args


def test_sd15_short_sweep_on_real_weights(tmp_path):
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    sweep = replace(SWEEP, search_space={**SWEEP.search_space, "lora_rank": tune.grid_search([1, 4])})
    code = launch(sweep, ["--preset", "sd15", "--max-steps", "30", "--max-chars", "400",
                          "--cache-dir", str(tmp_path / "cache"), "--storage-path", str(tmp_path / "ray"),
                          "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--report-dir", str(tmp_path / "rep"),
                          *_weights_args()])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "rep" / "kanji_rank" / "rows.json").read_text())
    assert [r["kind"] for r in rows] == ["baseline", "trial", "trial"]
    for row in rows:
        assert all(math.isfinite(v) for k, v in row["metrics"].items() if k.startswith("eval/"))
        # real OpenAI CLIP scores a matching caption well above chance
        assert row["metrics"]["eval/clip_t"] > 0.1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_rank").experiment_id
    trials = client.search_runs([experiment], "tags.sdsweep.kind = 'trial'")
    (baseline,) = client.search_runs([experiment], "tags.sdsweep.kind = 'baseline'")
    base_images = Path(client.download_artifacts(baseline.info.run_id, "samples/final", str(tmp_path / "base")))
    for run in trials:
        assert math.isfinite(run.data.metrics["train/loss"])
        # fp16 training moved the adapter: lora_B starts at zero, so non-zero up-weights mean real updates
        folder = Path(client.download_artifacts(run.info.run_id, "adapter", str(tmp_path / run.info.run_id)))
        weights = load_file(str(folder / "pytorch_lora_weights.safetensors"))
        assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
        # and it changes the samples against the baseline's, same prompts and seeds
        samples = Path(client.download_artifacts(run.info.run_id, "samples/final", str(tmp_path / run.info.run_id)))
        assert any(
            not np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(base_images / p.name)))
            for p in samples.glob("*.png")
        )


def test_gpu_speed_switches_train_and_evaluate(tmp_path):
    """bf16 autocast, fused AdamW, TF32, a channels-last and torch.compile'd UNet, DPM-Solver++ eval sampling,
    and two trials packed on one GPU (0.5 each): the sweep finishes with finite, changed scores."""
    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    fast = {"mixed_precision": "bf16", "optimizer": "adamw_fused", "allow_tf32": True, "channels_last": True,
            "compile_unet": True}  # fmt: skip
    sweep = replace(SWEEP, base_config={**SWEEP.base_config, **fast},
                    search_space={**SWEEP.search_space, "lora_rank": tune.grid_search([4, 8])}, knobs={})  # fmt: skip
    code = launch(sweep, ["--preset", "sd15", "--max-steps", "20", "--max-chars", "400", "--gpus-per-trial", "0.5",
                          "--cache-dir", str(tmp_path / "cache"), "--storage-path", str(tmp_path / "ray"),
                          "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--report-dir", str(tmp_path / "rep"),
                          *_weights_args()])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "rep" / "kanji_rank" / "rows.json").read_text())
    assert [r["kind"] for r in rows] == ["baseline", "trial", "trial"]
    for row in rows[1:]:
        assert row["params"]["channels_last"] == "True" and row["params"]["compile_unet"] == "True"
        assert all(math.isfinite(v) for k, v in row["metrics"].items() if k.startswith("eval/"))

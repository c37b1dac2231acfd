"""Real weights on a GPU: the sd15 preset's code path (SD 1.5, OpenAI CLIP ViT-L/14, DINO ViT-S/16).

Deselected by default; run with ``pytest -m gpu`` where a CUDA GPU and the weights (hub access or a local
copy given by SDSWEEP_SD15, SDSWEEP_CLIP_PRETRAINED, SDSWEEP_DINO) exist.
"""

import json
import math
import os
from dataclasses import replace

import mlflow
import pytest
import torch
from ray import tune

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
    from sweeps.launcher import launch

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
    trials = client.search_runs(
        [client.get_experiment_by_name("kanji_rank").experiment_id], "tags.sdsweep.kind = 'trial'"
    )
    assert all(r.data.metrics["adapter/size_mb"] > 0 for r in trials)

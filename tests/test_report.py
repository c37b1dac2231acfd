"""The report reads MLflow only: one row per child run, baseline first, best values marked, a grid."""

import json

import mlflow
from PIL import Image

from reports.compare import build_report


def _child(experiment, parent_id, name, kind, params, metrics, color, iou_items=None):
    with mlflow.start_run(experiment_id=experiment, run_name=name,
                          tags={"mlflow.parentRunId": parent_id, "sdsweep.kind": kind}):  # fmt: skip
        mlflow.log_params(params)
        for step, loss in enumerate((1.0, 0.5), start=1):
            if kind == "trial":
                mlflow.log_metric("train/loss", loss * metrics.get("eval/clip_t", 1.0), step=step)
        mlflow.log_metrics(metrics, step=2)
        for i, prompt in enumerate(("heldout-seven", "novel-internet")):
            mlflow.log_image(Image.new("RGB", (64, 64), color), artifact_file=f"samples/final/{i:02d}_{prompt}.png")
        if iou_items is not None:  # per-prompt scores, as trials and the baseline log them
            mlflow.log_dict({"step": 2, "prompts": [], "items": {"eval/glyph_iou": iou_items}}, "scores/final.json")


def test_report_rows_best_marks_and_grid(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("kanji_rank", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="sweep", tags={"sdsweep.sweep": "kanji_rank"}) as parent:
        mlflow.log_image(Image.new("RGB", (64, 64), "white"), artifact_file="references/00_heldout-seven.png")
        mlflow.log_params({"preset": "tiny", "model": "/cache/tiny-sd", "scorers": "CLIP tiny-clip-64, DINO tiny",
                           "metric": "eval/glyph_iou", "mode": "max"})  # fmt: skip
    pid = parent.info.run_id
    _child(experiment, pid, "baseline", "baseline", {"method": "none"},
           {"eval/clip_t": 0.20, "eval/glyph_iou": 0.10}, "grey", [0.10, 0.10])  # fmt: skip
    _child(experiment, pid, "lora-r1-a1-00000", "trial", {"method": "lora", "lora_rank": 1, "seed": 0},
           {"eval/clip_t": 0.25, "eval/glyph_iou": 0.30, "train/time_s": 12.0}, "red", [0.30, 0.30])  # fmt: skip
    _child(experiment, pid, "lora-r4-a4-00001", "trial", {"method": "lora", "lora_rank": 4, "seed": 0},
           {"eval/clip_t": 0.22, "eval/glyph_iou": 0.40, "train/time_s": 15.0}, "blue", [0.35, 0.45])  # fmt: skip

    report = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max")

    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "lora-r1-a1-00000", "lora-r4-a4-00001"]
    text = report.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + baseline + 2 trials
    # the selection metric first, its paired difference to the baseline beside it
    assert table[0].startswith(
        "| run | status | method | lora_rank | eval/glyph_iou | Δ glyph_iou vs baseline (95% CI) | eval/clip_t |"
        " train/loss |"
    )
    assert "seed" not in table[0]  # constant params are not columns
    assert "| baseline (no fine-tune) | FINISHED | none |  | 0.1000 |  | 0.2000 |" in text
    assert "| **0.4000** | +0.3000 (+0.2500 to +0.3500) |" in table[3]
    assert "| **0.2500** |" in table[2] and "| **0.4000** |" in table[3]  # best per metric in bold
    # the verdict on top: the winner, its paired difference to the baseline with its interval, the source
    verdict = text.split("## Verdict", 1)[1].split("MLflow parent run", 1)[0]
    assert ("Best trial by glyph_iou (higher is better): lora-r4-a4-00001, 0.4000 vs baseline (no fine-tune) "
            "0.1000: difference +0.3000 (95% CI +0.2500 to +0.3500 over 2 prompts).") in verdict  # fmt: skip
    assert "It beats the baseline" in verdict
    assert "preset tiny, model /cache/tiny-sd, scorers CLIP tiny-clip-64, DINO tiny" in verdict
    assert "random weights" in verdict
    # `python -m reports <experiment name>` rebuilds the same report from MLflow alone
    from reports.compare import main as reports_main

    assert reports_main(["kanji_rank", "--mlflow-uri", uri, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == text
    assert reports_main(["no_such_sweep", "--mlflow-uri", uri]) == 2
    saved = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert saved["winner"] == "lora-r4-a4-00001" and saved["delta"]["n"] == 2
    assert saved["beats_baseline"] == ["lora-r1-a1-00000", "lora-r4-a4-00001"]
    # lower loss is better: r1 logged 0.5 * 0.25 = 0.125 last, r4 0.5 * 0.22 = 0.11
    assert "**0.1100**" in table[3]

    grid = Image.open(tmp_path / "out" / "grid.png").convert("RGB")
    assert grid.size == (170 + 128 * 4, 30 + 128 * 2)  # reference + baseline + 2 trials; 2 prompts
    assert grid.getpixel((170 + 128 * 2 + 64, 30 + 64)) == (255, 0, 0)  # r1's sample, first prompt row
    assert grid.getpixel((170 + 128 * 3 + 64, 30 + 128 + 64)) == (0, 0, 255)
    assert (tmp_path / "out" / "metrics.png").stat().st_size > 0


def test_rows_follow_the_swept_values_ties_are_not_bold_and_failures_say_why(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("kanji_rank", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="sweep", tags={"sdsweep.sweep": "kanji_rank"}) as parent:
        pass
    pid = parent.info.run_id
    _child(experiment, pid, "baseline", "baseline", {"method": "none"}, {"eval/glyph_iou": 0.10}, "grey")
    # started in the order 16, 2, 4: the table lists 2, 4, 16 (numbers, not text)
    for rank, iou in ((16, 0.250001), (2, 0.249998), (4, 0.20)):
        _child(experiment, pid, f"lora-r{rank}", "trial", {"method": "lora", "lora_rank": rank},
               {"eval/glyph_iou": iou}, "red")  # fmt: skip
    with mlflow.start_run(experiment_id=experiment, run_name="lora-r3", tags={
        "mlflow.parentRunId": pid, "sdsweep.kind": "trial", "sdsweep.error": "TrialError: train/loss became nan"
    }) as failed:  # fmt: skip
        mlflow.log_params({"method": "lora", "lora_rank": 3})
    mlflow.MlflowClient(uri).set_terminated(failed.info.run_id, "FAILED")

    text = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in table] == [
        "baseline (no fine-tune)", "lora-r2", "lora-r3", "lora-r4", "lora-r16"
    ]  # fmt: skip
    assert "FAILED: TrialError: train/loss became nan" in table[2]
    assert "**" not in text.split("## Samples")[0].split("| run |")[1]  # 0.2500 twice: no best at this precision
    assert "No per-prompt scores" in text  # runs without scores/final.json: no spread, said so

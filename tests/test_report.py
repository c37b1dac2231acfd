"""The report reads MLflow only: one row per child run, baseline first, best values marked, grids by prompt
group, plots, and an HTML file that holds every picture it shows."""

import json
import re

import mlflow
from PIL import Image

from reports.compare import build_report
from sweeps.launch.spec import PRESETS

PROMPTS = [{"name": "heldout/七 seven", "text": 'kanji meaning "seven"', "seed": 0},
           {"name": "novel/internet", "text": 'kanji meaning "internet"', "seed": 1}]  # fmt: skip
STEMS = ("00_heldout-seven", "01_novel-internet")


def _store(tmp_path, name="kanji_rank", params=None):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(name, artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="sweep", tags={"sdsweep.sweep": name}) as parent:
        mlflow.log_image(Image.new("RGB", (64, 64), "white"), artifact_file=f"references/{STEMS[0]}.png")
        mlflow.log_params(params or {"preset": "smoke", "model": "/cache/tiny-sd", "metric": "eval/glyph_iou",
                                     "scorers": "CLIP tiny-clip-64, DINO tiny", "mode": "max",
                                     "preset_note": PRESETS["smoke"].caveat})  # fmt: skip
    return uri, experiment, parent.info.run_id


def _child(experiment, parent_id, name, kind, params, metrics, color, items=None, tags=None, status="FINISHED"):
    """A child run as trials and the baseline log them: params, a loss and eval history, final samples and
    per-prompt scores (``items``: metric -> one value per prompt)."""
    with mlflow.start_run(
        experiment_id=experiment,
        run_name=name,
        tags={"mlflow.parentRunId": parent_id, "sdsweep.kind": kind, **(tags or {})},
    ) as run:
        mlflow.log_params(params)
        if kind == "trial":
            for step, loss in ((1, 1.0), (2, 0.5)):
                mlflow.log_metric("train/loss", loss * metrics.get("eval/clip_t", 1.0), step=step)
        mlflow.log_metrics(metrics, step=2)
        for stem in STEMS:
            mlflow.log_image(Image.new("RGB", (64, 64), color), artifact_file=f"samples/final/{stem}.png")
        if items is not None:
            mlflow.log_dict({"step": 2, "prompts": PROMPTS, "items": items}, "scores/final.json")
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_report_rows_best_marks_and_grid(tmp_path):
    uri, experiment, pid = _store(tmp_path)
    _child(experiment, pid, "baseline", "baseline", {"method": "none"},
           {"eval/clip_t": 0.20, "eval/glyph_iou": 0.10}, "grey", {"eval/glyph_iou": [0.10, 0.10]})  # fmt: skip
    _child(experiment, pid, "lora-r1-a1-00000", "trial", {"method": "lora", "lora_rank": 1, "seed": 0},
           {"eval/clip_t": 0.25, "eval/glyph_iou": 0.30, "train/time_s": 12.0, "adapter/size_mb": 0.5}, "red",
           {"eval/glyph_iou": [0.30, 0.30]})  # fmt: skip
    _child(experiment, pid, "lora-r4-a4-00001", "trial", {"method": "lora", "lora_rank": 4, "seed": 0},
           {"eval/clip_t": 0.22, "eval/glyph_iou": 0.40, "train/time_s": 15.0, "adapter/size_mb": 2.0}, "blue",
           {"eval/glyph_iou": [0.35, 0.45]})  # fmt: skip

    report = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max")

    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "lora-r1-a1-00000", "lora-r4-a4-00001"]
    assert [r["label"] for r in rows] == ["no fine-tune", "rank=1", "rank=4"]
    assert rows[1]["url"] == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{rows[1]['run_id']}"
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
    # the verdict on top: the winner with its settings, its paired difference to the baseline with its interval
    verdict = text.split("## Verdict", 1)[1].split("MLflow parent run", 1)[0]
    assert (
        "Best trial by glyph_iou (higher is better): lora-r4-a4-00001 (rank=4), 0.4000 vs baseline "
        "(no fine-tune) 0.1000: difference +0.3000 (95% CI +0.2500 to +0.3500 over 2 prompts)."
    ) in verdict
    assert "It beats the baseline" in verdict
    assert "preset smoke, model /cache/tiny-sd, scorers CLIP tiny-clip-64, DINO tiny" in verdict
    assert "random weights" in verdict  # the preset's own caveat, logged with the parent run
    # `python -m reports <experiment name>` rebuilds the same report from MLflow alone
    from reports.compare import main as reports_main

    assert reports_main(["kanji_rank", "--mlflow-uri", uri, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == text
    assert reports_main(["no_such_sweep", "--mlflow-uri", uri]) == 2
    saved = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert saved["winner"] == "lora-r4-a4-00001" and saved["delta"]["n"] == 2
    # lower loss is better: r1 logged 0.5 * 0.25 = 0.125 last, r4 0.5 * 0.22 = 0.11
    assert "**0.1100**" in table[3]

    # grids by prompt group: held-out prompts with their reference column, novel prompts apart without one
    held = Image.open(tmp_path / "out" / "grid_heldout.png").convert("RGB")
    assert held.size == (200 + 128 * 4, 44 + 128 * 1)  # reference + baseline + 2 trials; 1 prompt
    assert held.getpixel((200 + 128 * 2 + 64, 44 + 64)) == (255, 0, 0)  # r1's sample
    novel = Image.open(tmp_path / "out" / "grid_novel.png").convert("RGB")
    assert novel.size == (200 + 128 * 3, 44 + 128 * 1)  # baseline + 2 trials
    assert novel.getpixel((200 + 128 * 2 + 64, 44 + 30)) == (0, 0, 255)
    # every picture the Markdown names exists beside it, and the HTML embeds every one of them
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert {"grid_heldout.png", "grid_novel.png", "params.png", "curves.png", "pareto.png"} <= set(pictures)
    assert all((tmp_path / "out" / p).stat().st_size > 0 for p in pictures)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count('<img class="plot"') == len([p for p in pictures if not p.startswith("grid")])
    assert 'src="data:image/png;base64,' in page and 'src="http' not in page and '.png"' not in page
    assert "kanji meaning &quot;seven&quot;" in page and "七" not in page.split("<h2>Trials")[0]
    assert f'href="{rows[2]["url"]}"' in page  # each row opens its MLflow run


def test_rows_follow_the_swept_values_ties_are_not_bold_and_failures_say_why(tmp_path):
    uri, experiment, pid = _store(tmp_path)
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
    _child(experiment, pid, "lora-r8", "trial", {"method": "lora", "lora_rank": 8}, {"eval/glyph_iou": 0.9},
           "red", tags={"sdsweep.stopped_early": "by the scheduler at step 10"}, status="KILLED")  # fmt: skip

    text = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in table] == [
        "baseline (no fine-tune)", "lora-r2", "lora-r3", "lora-r4", "lora-r8", "lora-r16"
    ]  # fmt: skip
    assert "FAILED: TrialError: train/loss became nan" in table[2]
    assert "| stopped early (step 10) |" in table[4]
    # the early-stopped trial scored at an earlier step: not the winner, though its number is the highest
    assert "Best trial by glyph_iou (higher is better): lora-r16 (rank=16)" in text
    assert "No per-prompt scores" in text  # runs without scores/final.json: no spread, said so
    # 0.2500 twice among the finished trials; 0.9000 (stopped early) is the best printed value
    body = text.split("| run |", 1)[1].split("\n## ", 1)[0]
    assert body.count("**") == 2 and "**0.9000**" in body


def test_nothing_beats_the_baseline_and_the_report_says_so(tmp_path):
    uri, experiment, pid = _store(
        tmp_path,
        params={
            "preset": "sd15",
            "model": "runwayml/stable-diffusion-v1-5",
            "scorers": "CLIP ViT-B/32",
            "metric": "eval/glyph_iou",
        },
    )
    _child(experiment, pid, "baseline", "baseline", {"method": "none"}, {"eval/glyph_iou": 0.10151}, "grey",
           {"eval/glyph_iou": [0.1010, 0.1020]})  # fmt: skip
    for rank, items in ((4, [0.1005, 0.1010]), (8, [0.1012, 0.1018])):
        _child(experiment, pid, f"lora-r{rank}", "trial", {"method": "lora", "lora_rank": rank},
               {"eval/glyph_iou": sum(items) / 2}, "red", {"eval/glyph_iou": items})  # fmt: skip

    text = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max").read_text()
    verdict = text.split("## Verdict", 1)[1].split("MLflow parent run", 1)[0]
    assert "Best trial by glyph_iou (higher is better): lora-r8 (rank=8), 0.1015" in verdict
    assert ("No trial beats the baseline beyond the spread of its per-prompt differences; every trial scores "
            "worse than the baseline.") in verdict  # fmt: skip
    assert "preset sd15, model runwayml/stable-diffusion-v1-5" in verdict and "random weights" not in verdict
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<section class="verdict none"' in page and "No trial beats the baseline" in page


def test_a_fifty_trial_report_keeps_its_grid_to_the_best_trials(tmp_path):
    uri, experiment, pid = _store(tmp_path)
    _child(experiment, pid, "baseline", "baseline", {"method": "none"}, {"eval/glyph_iou": 0.10}, "grey",
           {"eval/glyph_iou": [0.10, None]})  # fmt: skip
    for i in range(50):
        lr, rank = 1e-4 * (1 + i % 10), 2 ** (i % 5)
        iou = 0.1 + 0.01 * i
        _child(experiment, pid, f"t{i:02d}", "trial", {"method": "lora", "lora_rank": rank, "learning_rate": lr},
               {"eval/glyph_iou": iou, "train/time_s": 10 + i, "adapter/size_mb": rank / 4}, (5 * i, 0, 0),
               {"eval/glyph_iou": [iou, iou]})  # fmt: skip

    text = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max").read_text()
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 1 + 50  # all in the table
    assert "Showing the 12 best of 50 trials by eval/glyph_iou (and the baseline)" in text
    grid = Image.open(tmp_path / "out" / "grid_novel.png")
    assert grid.size == (200 + 128 * 13, 44 + 128)  # baseline + the 12 best
    page = (tmp_path / "out" / "report.html").read_text()
    kept = re.findall(r'<th><a href="[^"]+">(t\d\d)</a>', page.split('<table class="grid">')[1])
    assert sorted(kept) == [f"t{i}" for i in range(38, 50)]
    assert (tmp_path / "out" / "parallel.png").stat().st_size > 0  # a search over two settings


def test_the_html_report_renders_in_chromium_and_its_table_sorts_on_click(tmp_path):
    import io
    import os

    import pytest
    from _browser import chromium, with_page

    if chromium() is None:
        if os.environ.get("SDSWEEP_REQUIRE_BROWSER"):  # set by .ci/run, which installs Debian's chromium
            pytest.fail("chromium is not installed: apt-get install chromium")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    uri, experiment, pid = _store(tmp_path)
    _child(experiment, pid, "baseline", "baseline", {"method": "none"}, {"eval/glyph_iou": 0.10}, "grey",
           {"eval/glyph_iou": [0.10, 0.10]})  # fmt: skip
    for rank, iou, color in ((2, 0.30, "red"), (4, 0.20, "blue"), (8, 0.25, "green")):
        _child(experiment, pid, f"lora-r{rank}", "trial", {"method": "lora", "lora_rank": rank},
               {"eval/glyph_iou": iou, "train/time_s": 10.0 + rank, "adapter/size_mb": rank / 4}, color,
               {"eval/glyph_iou": [iou, iou]})  # fmt: skip
    build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max")

    order = "Array.from(document.querySelectorAll('#trials tbody tr')).map(r => r.cells[0].textContent)"

    async def work(page):
        images = await page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        shot = await page.screenshot()
        before = await page.evaluate(order)
        column = await page.evaluate(
            "Array.from(document.querySelectorAll('#trials thead th'))"
            ".findIndex(h => h.textContent == 'eval/glyph_iou')"
        )
        await page.click(f"#trials thead th:nth-child({column + 1})")
        ascending = await page.evaluate(order)
        await page.click(f"#trials thead th:nth-child({column + 1})")
        descending = await page.evaluate(order)
        return images, shot, before, ascending, descending, list(page.errors)

    images, shot, before, ascending, descending, errors = with_page(tmp_path / "out" / "report.html", work)
    assert errors == []  # no console errors, no failed loads
    # 2 grids (held-out: reference + 4 columns; novel: 4 columns) and the plots, every one decoded
    assert len(images) >= 1 + 4 + 4 + 3 and all(ok for _, ok in images), images
    screenshot = Image.open(io.BytesIO(shot)).convert("RGB")
    assert screenshot.size == (1400, 1000) and len(screenshot.getcolors(1 << 20)) > 20  # not blank
    baseline = "baseline (no fine-tune)"
    assert before == [baseline, "lora-r2", "lora-r4", "lora-r8"]  # the swept order
    assert ascending == [baseline, "lora-r4", "lora-r8", "lora-r2"]  # the baseline stays on top
    assert descending == [baseline, "lora-r2", "lora-r8", "lora-r4"]


def test_the_inference_settings_table_and_the_winners_grid(tmp_path):
    uri, experiment, pid = _store(tmp_path)
    settings = ("scale:0.5 cfg:3", "scale:0.5 cfg:7.5", "scale:1 cfg:3", "scale:1 cfg:7.5")

    def knobs(values, color=None):
        metrics = {f"eval/glyph_iou {s}": v for s, v in zip(settings, values, strict=True)}
        metrics["eval/glyph_iou best knob"] = max(values)
        return metrics

    _child(experiment, pid, "baseline", "baseline", {"method": "none"},
           {"eval/glyph_iou": 0.10, **knobs((0.11, 0.10, 0.11, 0.10))}, "grey")  # fmt: skip
    _child(experiment, pid, "lora-r2", "trial", {"method": "lora", "lora_rank": 2},
           {"eval/glyph_iou": 0.20, **knobs((0.15, 0.12, 0.25, 0.20))}, "red")  # fmt: skip
    winner = _child(experiment, pid, "lora-r4", "trial", {"method": "lora", "lora_rank": 4},
                    {"eval/glyph_iou": 0.30, **knobs((0.22, 0.21, 0.35, 0.30))}, "blue")  # fmt: skip
    with mlflow.start_run(run_id=winner):
        for k, s in enumerate(settings):
            for stem in STEMS:
                mlflow.log_image(Image.new("RGB", (64, 64), (60 * k, 0, 0)),
                                 artifact_file=f"knobs/{s.replace(':', '-').replace(' ', '-')}/{stem}.png")  # fmt: skip

    text = build_report(uri, pid, tmp_path / "out", metric="eval/glyph_iou", mode="max").read_text()
    section = text.split("## Inference settings", 1)[1]
    header = "| run | settings | scale:0.5 cfg:3 | scale:0.5 cfg:7.5 | scale:1 cfg:3 | scale:1 cfg:7.5 | best knob |"
    assert header in section
    assert "| lora-r4 | rank=4 | 0.2200 | 0.2100 | **0.3500** | 0.3000 | 0.3500 |" in section
    assert "| baseline | no fine-tune | 0.1100 | 0.1000 | 0.1100 | 0.1000 | 0.1100 |" in section  # a tie: no bold
    # the winner's samples at each setting: prompts as rows, settings as columns, in the settings' order
    assert "## The best trial at each inference setting: lora-r4 (rank=4)" in text
    grid = Image.open(tmp_path / "out" / "knobs.png").convert("RGB")
    assert grid.size == (200 + 128 * 4, 30 + 128 * 2)
    assert [grid.getpixel((200 + 128 * k + 64, 30 + 64)) for k in range(4)] == [(60 * k, 0, 0) for k in range(4)]
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<table class="sortable knobs">' in page and '<td class="best" data-v="0.3500">0.3500</td>' in page


def test_the_time_table_splits_each_run_and_sums_the_trials():
    from reports.compare import ReportRow, time_table

    def row(name, kind, setup, train, evaluation, save):
        parts = {"time/setup_s": setup, "time/train_s": train, "time/eval_s": evaluation, "time/save_s": save}
        return ReportRow("id-" + name, name, kind, "FINISHED", {}, {**parts, "time/total_s": sum(parts.values())},
                         label="no fine-tune" if kind == "baseline" else name)  # fmt: skip

    rows = [row("baseline", "baseline", 3.0, 0.0, 1.0, 0.5), row("r1", "trial", 5.0, 10.0, 4.0, 1.0),
            row("r4", "trial", 5.0, 20.0, 4.0, 1.0), ReportRow("x", "failed", "trial", "FAILED", {}, {})]  # fmt: skip
    table, sentence = time_table(rows, sweep_s=100.0)
    assert table[0] == ["run", "set-up (s)", "train (s)", "eval (s)", "save (s)", "total (s)", "train share"]
    assert table[1] == ["no fine-tune", "3.0", "0.0", "1.0", "0.5", "4.5", "0%"]
    assert table[2] == ["r1", "5.0", "10.0", "4.0", "1.0", "20.0", "50%"]
    assert table[-1] == ["all 2 trials", "10.0", "30.0", "8.0", "2.0", "50.0", "60%"]
    assert len(table) == 5  # a run without times (failed before its end) has no row
    assert "The sweep took 100 s" in sentence and "trained for 30 s in all (30% of it" in sentence

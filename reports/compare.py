"""Comparison report of one sweep, read from MLflow only (no Ray needed).

    python -m reports kanji_rank | PARENT_RUN_ID [--mlflow-uri URI] [--out reports/kanji_rank]

Writes, under ``reports/<sweep>/``:

- ``report.html``: one self-contained file (images embedded) with the verdict, a sortable table whose rows
  link to their MLflow runs, the sample grids with per-prompt scores and the plots;
- ``report.md``: the same for a PR or a wiki, with the pictures beside it (``grid_<group>.png``,
  ``params.png``, ``curves.png``, ``pareto.png``, ``parallel.png``);
- ``rows.json`` and ``verdict.json``: the rows and the verdict, machine-readable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from eval.metrics import METRICS
from reports import figures

# eval columns in the table's order, each with its better direction, from the one metrics table in eval/
EVAL_COLUMNS = tuple(name for name in METRICS if name.startswith("eval/"))
# params every run carries that are not worth a column unless they vary
_HIDDEN_PARAMS = {"model"}
TIME_PARTS = ("setup", "train", "eval", "save")  # time/<part>_s, as trainables.common.loop.time_split logs them


@dataclass
class ReportRow:
    """One child run: the baseline or a trial."""

    run_id: str
    name: str
    kind: str  # "baseline" or "trial"
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    images: dict[str, Path] = field(default_factory=dict)  # prompt file stem -> local image
    items: dict[str, list[float | None]] | None = None  # each metric per prompt (scores/final.json)
    error: str = ""  # why a failed trial failed (its sdsweep.error tag)
    prompts: list[dict] | None = None  # name, text and seed of each eval prompt (scores/final.json)
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (step, value)
    url: str = ""  # the run's page in the MLflow UI
    label: str = ""  # its swept settings, short: "rank=8 alpha=8"


def load_rows(client, parent_run_id: str, image_dir: Path | None = None, histories: tuple[str, ...] = (),
              ui_url: str = "") -> list[ReportRow]:  # fmt: skip
    """The parent run's children, baseline first then trials in start order; with ``image_dir``, their
    final samples and per-prompt scores downloaded there; the ``histories`` of the trials' metrics; each
    run's page under ``ui_url``."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=10000,
        order_by=["attributes.start_time ASC"],
    )
    rows = []
    for run in runs:
        row = ReportRow(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            kind=run.data.tags.get("sdsweep.kind", "trial"),
            status=_status(run),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            error=run.data.tags.get("sdsweep.error", ""),
            url=f"{ui_url}/#/experiments/{parent.info.experiment_id}/runs/{run.info.run_id}" if ui_url else "",
        )
        if image_dir is not None:
            row.images = _download_samples(client, run.info.run_id, image_dir / run.info.run_id)
            scores = _download_scores(client, run.info.run_id, image_dir / run.info.run_id)
            row.items, row.prompts = (scores["items"], scores.get("prompts")) if scores else (None, None)
        if row.kind == "trial":
            for key in histories:
                row.histories[key] = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        rows.append(row)
    rows.sort(key=lambda r: r.kind != "baseline")  # stable: trials keep their start order
    return rows


def _status(run) -> str:
    stopped = run.data.tags.get("sdsweep.stopped_early")
    return f"stopped early ({stopped.removeprefix('by the scheduler at ')})" if stopped else run.info.status


def _param_text(value: str) -> str:
    """Floats drawn by a searcher print with 4 significant digits; everything else as logged."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 8 else f"{number:.4g}"


def _download_samples(client, run_id: str, dest: Path) -> dict[str, Path]:
    if not any(a.path == "samples/final" for a in client.list_artifacts(run_id, "samples")):
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, "samples/final", str(dest)))
    return {p.stem: p for p in sorted(local.glob("*.png"))}


def _download_scores(client, run_id: str, dest: Path) -> dict | None:
    if not any(a.path == "scores/final.json" for a in client.list_artifacts(run_id, "scores")):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, "scores/final.json", str(dest)))
    return json.loads(local.read_text(encoding="utf-8"))


def sweep_verdict(rows: list[ReportRow], metric: str, mode: str, about: str = ""):
    """The verdict (eval.verdict) of the trials against the baseline on ``metric``, paired prompt by prompt."""
    from eval.verdict import decide

    def entry(row: ReportRow) -> dict:
        value = row.metrics.get(metric)
        items = (row.items or {}).get(metric)
        return {"name": row.name, "run_id": row.run_id, "value": value, "items": items, "label": row.label}

    baselines = [r for r in rows if r.kind == "baseline"]
    baseline = entry(baselines[0]) if baselines else {"name": "baseline", "value": math.nan, "items": None}
    if baseline["value"] is None:
        baseline["value"] = math.nan
    # finished trials only: a trial the scheduler stopped early was scored at an earlier step
    trials = [entry(r) for r in rows if r.kind == "trial" and r.status == "FINISHED"]
    return decide(metric, mode, baseline, trials, about)


def describe_source(params: dict[str, str]) -> str:
    """Which preset, model and scorers produced the numbers (from the parent run's params)."""
    preset, model, scorers = params.get("preset", "?"), params.get("model", "?"), params.get("scorers", "?")
    text = f"Numbers from preset {preset}, model {model}, scorers {scorers}."
    if params.get("preset_note"):  # what the preset's numbers can and cannot say (sweeps.launch.spec)
        text += " " + params["preset_note"]
    return text


def varying_params(rows: list[ReportRow], swept: list[str] | None = None) -> list[str]:
    """``method`` plus the swept settings (``swept``, from the parent's ``sweep.json``) or, without them,
    every trial param whose value differs between trials."""
    trials = [r for r in rows if r.kind == "trial"]
    keys = sorted({k for r in trials for k in r.params} - _HIDDEN_PARAMS)
    varying = [k for k in keys if len({r.params.get(k) for r in trials}) > 1]
    if swept is not None:
        varying = [k for k in swept if k in keys]
    return ["method"] + [k for k in varying if k != "method"]


def swept_settings(client, parent_run_id: str, dest: Path) -> list[str] | None:
    """The settings that differ between the sweep's trial configs, in the sweep file's order (None for a
    parent run without ``sweep.json``)."""
    if not any(a.path == "sweep.json" for a in client.list_artifacts(parent_run_id)):
        return None
    configs = json.loads(Path(client.download_artifacts(parent_run_id, "sweep.json", str(dest))).read_text())["trials"]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def ordered(rows: list[ReportRow], params: list[str]) -> list[ReportRow]:
    """Baseline first, then the trials in the order of their swept params (numbers as numbers), not in the
    order they happened to start."""

    def key(row: ReportRow):
        out = []
        for p in params:
            text = row.params.get(p, "")
            try:
                out.append((0, float(text), ""))
            except ValueError:
                out.append((1, 0.0, text))
        return out

    baseline = [r for r in rows if r.kind == "baseline"]
    return baseline + sorted((r for r in rows if r.kind != "baseline"), key=key)


def _marked_best(rows: list[ReportRow], col: str, fmt: str) -> str | None:
    """The printed text of the best value in ``col``, or None when another row prints the same text (a
    difference the table does not show is not a best)."""
    from eval.knobs import base_metric

    values = [r.metrics[col] for r in rows if col in r.metrics and math.isfinite(r.metrics[col])]
    if not values or base_metric(col) not in METRICS:
        return None
    best = (max if METRICS[base_metric(col)].better == "max" else min)(values)
    texts = [format(v, fmt) for v in values]
    return format(best, fmt) if texts.count(format(best, fmt)) == 1 else None


@dataclass
class Cell:
    """One table cell: its printed text, the value it sorts by, and whether it is marked best."""

    text: str
    value: float | str | None = None
    best: bool = False


def table(rows: list[ReportRow], params: list[str], metric: str, verdict=None) -> tuple[list[str], list[list[Cell]]]:
    """The report's table (header, one row of cells per report row): run, status, the swept settings, the
    selection metric with its difference to the baseline beside it, the other scores, loss, time, sizes."""
    metric_cols = [m for m in EVAL_COLUMNS if any(m in r.metrics for r in rows)]
    if metric in metric_cols or any(metric in r.metrics for r in rows):  # the selection metric first (also a
        # knob setting's), its paired difference to the baseline beside it
        metric_cols = [metric] + [m for m in metric_cols if m != metric]
    sizes = sorted({k for r in rows for k in r.metrics if k.endswith("/size_mb")})  # adapter, model, embeddings
    extra_cols = [c for c in ("train/loss", "train/time_s", *sizes) if any(c in r.metrics for r in rows)]
    formats = {c: ".4f" if c.startswith(("eval/", "train/loss")) else ".2f" for c in metric_cols + extra_cols}
    best = {c: _marked_best(rows, c, formats[c]) for c in metric_cols + extra_cols}
    deltas = (verdict.deltas or {}) if verdict is not None else {}
    delta_col = f"Δ {metric.removeprefix('eval/')} vs baseline (95% CI)"
    header = ["run", "status", *params, *metric_cols[:1], *([delta_col] if deltas else []), *metric_cols[1:],
              *extra_cols]  # fmt: skip
    body = []
    for r in rows:
        status = f"{r.status}: {r.error}" if r.status == "FAILED" and r.error else r.status
        cells = [Cell(r.name + (" (no fine-tune)" if r.kind == "baseline" else ""), r.name), Cell(status, status)]
        for p in params:
            text = "none" if r.kind == "baseline" and p == "method" else _param_text(r.params.get(p, ""))
            number = _float(text)
            cells.append(Cell(text, text if number is None else number))
        for i, col in enumerate(metric_cols + extra_cols):
            value = r.metrics.get(col)
            if value is None or not math.isfinite(value):
                cells.append(Cell(""))
            else:
                text = format(value, formats[col])
                cells.append(Cell(text, value, text == best[col]))
            if i == 0 and deltas:
                delta = deltas.get(r.name)
                cells.append(Cell("", None) if delta is None else Cell(_delta_text(delta), delta.mean))
        body.append(cells)
    return [_column_title(h) for h in header], body


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def render_markdown(rows: list[ReportRow], title: str, parent_run_id: str, metric: str, mode: str,
                    verdict=None, swept: list[str] | None = None, pictures=()) -> str:  # fmt: skip
    params = varying_params(rows, swept)
    rows = ordered(rows, params)
    header, body = table(rows, params, metric, verdict)
    lines = [f"# {title}: sweep report", ""]
    if verdict is not None:
        lines += ["## Verdict", "", *verdict.lines, ""]
    lines.append(
        f"MLflow parent run `{parent_run_id}`; {sum(r.kind == 'trial' for r in rows)} trials and the baseline, "
        "trials in the order of their swept settings."
    )
    lines += ["A value is in **bold** when it is the best of its column at the printed precision (baseline "
              "included). Cosines are raw, in [-1, 1]. The interactive version is `report.html`.", ""]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for cells in body:
        texts = [(f"**{c.text}**" if c.best else c.text).replace("|", "/") for c in cells]
        lines.append("| " + " | ".join(texts) + " |")
    for picture in pictures:
        lines += ["", f"## {picture.title}", "", picture.caption, ""]
        if picture.table:
            lines += ["| " + " | ".join(picture.table[0]) + " |", "|" + "|".join("---" for _ in picture.table[0]) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in picture.table[1:]] + [""]
        if picture.file:
            lines.append(f"![{picture.title}]({picture.file})")
    lines.append("")
    return "\n".join(lines)


def _delta_text(delta) -> str:
    from eval.verdict import signed

    if delta.n < 2:
        return signed(delta.mean)
    return f"{signed(delta.mean)} ({signed(delta.low)} to {signed(delta.high)})"


def _column_title(col: str) -> str:
    if col.endswith("/size_mb"):
        return f"{col.removesuffix('/size_mb')} (MB)"
    return {"train/time_s": "train time (s)"}.get(col, col)


@dataclass
class Picture:
    """One picture of the report: its section title, a caption, its file beside the report."""

    title: str
    caption: str
    file: str
    kind: str = "plot"  # "grid" or "plot"
    table: list[list[str]] | None = None  # a table shown above the picture (header first; "**x**" is bold)


def build_report(tracking_uri: str, parent_run_id: str, out_dir: Path, metric: str = "eval/clip_t",
                 mode: str = "max", ui_url: str | None = None) -> Path:  # fmt: skip
    """Write the report of the sweep whose MLflow parent run is ``parent_run_id`` (see the module's
    docstring); return ``report.md``. ``ui_url`` is where the MLflow UI serves this store (default: the
    tracking URI for a server, ``mlflow ui``'s http://127.0.0.1:5000 for a local store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    title = parent.data.tags.get("sdsweep.sweep", parent.info.run_name)
    ui_url = (ui_url or default_ui_url(tracking_uri)).rstrip("/")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = ("params.png", "curves.png", "pareto.png", "parallel.png", "metrics.png", "time.png")
    for old in (*out_dir.glob("grid*.png"), *(out_dir / f for f in drawn)):
        old.unlink(missing_ok=True)  # a rebuilt report holds only what this build drew
    with tempfile.TemporaryDirectory() as tmp:
        rows = load_rows(client, parent_run_id, Path(tmp), histories=("train/loss", metric), ui_url=ui_url)
        references = _download_references(client, parent_run_id, Path(tmp) / "references")
        swept = swept_settings(client, parent_run_id, Path(tmp) / "parent")
        params = varying_params(rows, swept)
        rows = ordered(rows, params)
        with_method = len({r.params.get("method") for r in rows if r.kind == "trial"}) > 1
        for r in rows:
            r.label = "no fine-tune" if r.kind == "baseline" else trial_label(r.params, params, with_method)
        prompts = figures.prompt_rows(rows, references)
        columns, note = figures.grid_columns(rows, metric, mode)
        pictures = _draw_grids(prompts, columns, note, references, metric, out_dir)
        pictures += _draw_plots(rows, params, metric, mode, out_dir)
        pictures += _knob_section(client, rows, metric, mode, Path(tmp) / "knobs", out_dir)
        pictures += _time_section(rows, parent, out_dir)
        verdict = sweep_verdict(rows, metric, mode, describe_source(parent.data.params))
        markdown = render_markdown(rows, title, parent_run_id, metric, mode, verdict, swept, pictures)
        (out_dir / "report.md").write_text(markdown, encoding="utf-8")
        from reports.html import render_html

        (out_dir / "report.html").write_text(
            render_html(rows, title, parent, metric, verdict, params, prompts, references, columns, note,
                        [p for p in pictures if not p.file.startswith("grid")], out_dir, ui_url),
            encoding="utf-8",
        )  # fmt: skip
    delta = verdict.delta
    (out_dir / "verdict.json").write_text(
        json.dumps(
            {"metric": metric, "mode": mode, "winner": verdict.winner, "winner_run_id": verdict.winner_run_id,
             "winner_value": verdict.winner_value, "baseline_value": verdict.baseline_value,
             "delta": None if delta is None else {"mean": delta.mean, "low": delta.low, "high": delta.high,
                                                  "n": delta.n, "stderr": delta.stderr},
             "beats_baseline": list(verdict.beaten_by), "lines": list(verdict.lines)},
            indent=2, ensure_ascii=False, allow_nan=True,
        ),
        encoding="utf-8",
    )  # fmt: skip
    (out_dir / "rows.json").write_text(
        json.dumps(
            [
                {"name": r.name, "run_id": r.run_id, "kind": r.kind, "status": r.status, "label": r.label,
                 "error": r.error, "params": r.params, "metrics": r.metrics, "url": r.url}
                for r in rows
            ],
            indent=2,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )  # fmt: skip
    return out_dir / "report.md"


def default_ui_url(tracking_uri: str) -> str:
    """Where the MLflow UI shows this store: the server itself, or ``mlflow ui``'s default address."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def trial_label(params: dict[str, str], swept: list[str], with_method: bool) -> str:
    """A trial's swept settings, short (``rank=8 alpha=8``), the method first when it varies."""
    from sweeps.launch.parent_run import SHORT_NAMES

    parts = [params.get("method", "")] if with_method else []
    parts += [f"{SHORT_NAMES.get(k, k)}={_short(params[k])}" for k in swept if k != "method" and k in params]
    return " ".join(p for p in parts if p)


def _short(text: str) -> str:
    """A value in a label: numbers in their shortest form (``8.0`` -> ``8``, ``0.00010000`` -> ``0.0001``)."""
    number = _float(text)
    return text if number is None or not math.isfinite(number) else f"{number:.4g}"


def _draw_grids(prompts, columns: list[ReportRow], note: str, references: dict[str, Path], metric: str,
                out_dir: Path) -> list[Picture]:  # fmt: skip
    pictures = []
    for group, members in figures.grouped(prompts):
        file = f"grid_{group}.png" if group else "grid.png"
        figures.render_grid(columns, members, references, metric).save(out_dir / file)
        title = figures.GROUP_TITLES.get(group, f"Samples: {group}" if group else "Samples")
        caption = (f"Prompts as rows, the baseline and the trials (by their swept settings) as columns; each "
                   f"image's {metric.removeprefix('eval/')} in its corner. {note}").strip()  # fmt: skip
        pictures.append(Picture(title, caption, file, kind="grid"))
    return pictures


def knob_settings(rows: list[ReportRow], metric: str) -> list[str]:
    """The inference settings (eval.knobs) at which ``metric``'s base was logged, in the grid's order."""
    from eval.knobs import BEST, base_metric

    base = base_metric(metric)
    texts = {k.split(" ", 1)[1] for r in rows for k in r.metrics if k.startswith(base + " ")} - {BEST}

    def order(text: str):
        return [float(part.split(":", 1)[1]) for part in text.split()]

    return sorted(texts, key=lambda t: ([p.split(":")[0] for p in t.split()], order(t)))


def _knob_section(client, rows: list[ReportRow], metric: str, mode: str, tmp: Path, out_dir: Path) -> list[Picture]:
    """The inference-settings table (every row at every setting, each row's best in bold) and the winner's
    samples at each setting."""
    from eval.knobs import BEST, base_metric

    base = base_metric(metric)
    settings = knob_settings(rows, metric)
    if not settings:
        return []
    better = METRICS[base].better if base in METRICS else mode
    header = ["run", "settings", *settings, BEST]
    table = [header]
    for r in rows:
        values = [r.metrics.get(f"{base} {s}") for s in settings]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        top = (max if better == "max" else min)(finite) if finite else None
        texts = [format(top, ".4f")] if top is not None else []
        cells = ["" if v is None else (f"**{v:.4f}**" if top is not None and format(v, ".4f") == texts[0] and
                                       [format(x, ".4f") for x in finite].count(texts[0]) == 1 else f"{v:.4f}")
                 for v in values]  # fmt: skip
        best = r.metrics.get(f"{base} {BEST}")
        table.append([r.name, r.label, *cells, "" if best is None else f"{best:.4f}"])
    short = base.removeprefix("eval/")
    pictures = [Picture("Inference settings",
                        f"{short} of every trained model (and of the baseline, where only guidance and steps apply) "
                        "at each inference setting, same prompts and seeds, no retraining (scale: LoRA strength "
                        "of the UNet, te_scale: of the text encoder, cfg: guidance scale, steps: sampling steps). "
                        "Bold: each row's best setting.", "", kind="table", table=table)]  # fmt: skip
    from reports.figures import render_knob_grid

    winner = next((r for r in sorted((r for r in rows if r.kind == "trial" and r.status == "FINISHED"
                                       and math.isfinite(r.metrics.get(metric, math.nan))),
                                      key=lambda r: r.metrics[metric], reverse=mode == "max")), None)  # fmt: skip
    if winner is not None:
        images = _download_knob_samples(client, winner.run_id, tmp / winner.run_id)
        if images:
            render_knob_grid(images, settings, winner.prompts).save(out_dir / "knobs.png")
            title = f"The best trial at each inference setting: {winner.name} ({winner.label})"
            pictures.append(Picture(title, "Prompts as rows, inference settings as columns.", "knobs.png"))
    return pictures


def _download_knob_samples(client, run_id: str, dest: Path) -> dict[str, dict[str, Path]]:
    """setting slug -> prompt stem -> image of the run's ``knobs/`` samples."""
    if not client.list_artifacts(run_id, "knobs"):
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, "knobs", str(dest)))
    return {d.name: {p.stem: p for p in sorted(d.glob("*.png"))} for d in sorted(local.iterdir()) if d.is_dir()}


def _draw_plots(rows: list[ReportRow], params: list[str], metric: str, mode: str, out_dir: Path) -> list[Picture]:
    metrics = [metric] + [m for m in EVAL_COLUMNS if m != metric]
    short = metric.removeprefix("eval/")
    pictures = []
    if figures.plot_params(rows, params, metrics, out_dir / "params.png"):
        pictures.append(Picture("Scores against the swept settings",
                                "One point per finished trial; the dashed line is the baseline (no fine-tune).",
                                "params.png"))  # fmt: skip
    if figures.plot_curves(rows, metric, out_dir / "curves.png"):
        pictures.append(Picture("Training curves", f"train/loss and {short} at each evaluation, per trial; the "
                                "dashed line is the baseline.", "curves.png"))  # fmt: skip
    if figures.plot_pareto(rows, metric, mode, out_dir / "pareto.png"):
        pictures.append(
            Picture(
                "Quality against cost",
                f"{short} against the trained file's size and the training "
                "time; the red line joins the trials nothing beats on both.",
                "pareto.png",
            )
        )
    if figures.plot_parallel(rows, params, metric, mode, out_dir / "parallel.png"):
        pictures.append(Picture("Settings to score", f"Each line a finished trial through its settings to {short}.",
                                "parallel.png"))  # fmt: skip
    return pictures


def time_table(rows: list[ReportRow], sweep_s: float | None) -> tuple[list[list[str]], str]:
    """Where each run's time went (``time/*_s``, logged when it finished): a table (header first) with an
    all-trials row, and a sentence comparing the trials' training time to the sweep's wall time."""
    timed = [r for r in rows if "time/total_s" in r.metrics]
    header = ["run", *(f"{p} (s)" for p in ("set-up", "train", "eval", "save")), "total (s)", "train share"]
    table = [header]

    def line(name: str, values: list[float]) -> list[str]:
        total = sum(values)
        share = f"{values[1] / total:.0%}" if total > 0 else ""
        return [name, *(f"{v:.1f}" for v in values), f"{total:.1f}", share]

    for r in timed:
        table.append(line(r.label or r.name, [r.metrics.get(f"time/{p}_s", 0.0) for p in TIME_PARTS]))
    trials = [r for r in timed if r.kind == "trial"]
    sums = [sum(r.metrics.get(f"time/{p}_s", 0.0) for r in trials) for p in TIME_PARTS]
    if len(trials) > 1:
        table.append(line(f"all {len(trials)} trials", sums))
    sentence = ""
    if sweep_s and trials:
        sentence = (f" The sweep took {sweep_s:.0f} s from its MLflow run's start to this report; its trials "
                    f"trained for {sums[1]:.0f} s in all ({sums[1] / sweep_s:.0%} of it; trials run side by side, "
                    "so shares of the sweep can add up to more than 100%).")  # fmt: skip
    return table, sentence


def _time_section(rows: list[ReportRow], parent, out_dir: Path) -> list[Picture]:
    import time

    if not any("time/total_s" in r.metrics for r in rows):
        return []
    end = parent.info.end_time or time.time() * 1000  # a report built by the launcher: the sweep is closing
    sweep_s = (end - parent.info.start_time) / 1000 if parent.info.start_time else None
    table, sentence = time_table(rows, sweep_s)
    drawn = figures.plot_times(rows, out_dir / "time.png")
    caption = ("Where each run's time went: set-up (process start to the first step: loading models and data), "
               "training steps, eval (sampling and scoring, the step-0 and inference-setting evals included) and "
               "save (checkpoints and files)." + sentence)  # fmt: skip
    return [Picture("Where the time went", caption, "time.png" if drawn else "", table=table)]


def _download_references(client, run_id: str, dest: Path) -> dict[str, Path]:
    if not any(a.path == "references" for a in client.list_artifacts(run_id)):
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run_id, "references", str(dest)))
    return {p.stem: p for p in sorted(local.glob("*.png"))}


def find_parent_run(client, what: str) -> str | None:
    """``what`` as a parent run id (a child run's id leads to its sweep), or as an experiment name (its most
    recent sweep launch); None when it is neither."""
    try:
        run = client.get_run(what)
    except Exception:
        run = None
    if run is not None:
        return run.data.tags.get("mlflow.parentRunId") or run.info.run_id
    experiment = client.get_experiment_by_name(what)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.`sdsweep.sweep` != ''", max_results=1,
                              order_by=["attributes.start_time DESC"])  # fmt: skip
    return runs[0].info.run_id if runs else None


def main(argv: list[str] | None = None) -> int:
    """``python -m reports <experiment name | parent run id>`` (``--run-id`` as the older spelling)."""
    parser = argparse.ArgumentParser(prog="python -m reports", description="Rebuild a sweep's report from MLflow.")
    parser.add_argument("sweep", nargs="?", help="an experiment name (its latest launch) or a parent run id")
    parser.add_argument("--run-id", help="the sweep's MLflow parent run id (the same as the positional argument)")
    parser.add_argument("--mlflow-uri", default=None, help="tracking URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--out", default=None, help="output folder (default reports/<sweep>)")
    parser.add_argument("--metric", default=None, help="what 'best' means (default: the sweep's, from the parent run)")
    parser.add_argument("--mode", default=None, choices=("max", "min"))
    args = parser.parse_args(argv)
    what = args.sweep or args.run_id
    if not what:
        parser.error("name a sweep (its experiment name) or a parent run id")
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        run_id = find_parent_run(client, what)
    except Exception as err:
        print(f"error: cannot read MLflow at {uri} ({str(err).splitlines()[0][:160]}): check --mlflow-uri",
              file=sys.stderr)  # fmt: skip
        return 2
    if run_id is None:
        print(f"error: no experiment or run {what!r} in {uri}: pass a sweep's name (e.g. kanji_rank) or its "
              "MLflow parent run id, and --mlflow-uri if the runs are elsewhere", file=sys.stderr)  # fmt: skip
        return 2
    parent = client.get_run(run_id)
    out = Path(args.out or Path("reports") / parent.data.tags.get("sdsweep.sweep", run_id))
    metric = args.metric or parent.data.params.get("metric", "eval/clip_t")
    mode = args.mode or parent.data.params.get("mode", "max")
    print(build_report(uri, run_id, out, metric, mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())

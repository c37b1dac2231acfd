"""The report's pictures: sample grids (PIL) and plots (matplotlib), each a pure function of report rows.

Plots draw the baseline as a line, never bars from zero: differences in the third decimal stay visible.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from eval.metrics import METRICS

GRID_MAX_TRIALS = 12  # columns of trials in a grid; more trials keep the top ones by the sweep's metric
# swept settings drawn on a log axis (when all values are positive)
_LOG_PARAMS = re.compile(r"(rank|alpha|(^|_)lr$|learning_rate|weight_decay|eps)")
# group titles of the data kinds' prompt names (the part before "/")
GROUP_TITLES = {
    "heldout": "Held-out kanji: the reference glyph, then each model's sample",
    "novel": "Novel concepts: no reference exists (kanji for words the dictionary does not have)",
    "main": "Prompts with the trigger word",
    "plain": "The same prompts without the trigger word (style leak)",
}


@dataclass(frozen=True)
class PromptRow:
    """One eval prompt of the grids: its image stem (``00_heldout-seven``), group, text and seed."""

    stem: str
    group: str
    text: str
    seed: int | None


def prompt_rows(rows, references: dict[str, Path]) -> list[PromptRow]:
    """Every prompt any row has a sample of, in index order, with its text from the runs' ``scores/final.json``
    (the stem when no run recorded it). Groups are the prompt-name prefixes when there are a few of them
    (kanji: heldout / novel; captioned: main / plain), else one group."""
    stems = sorted({stem for r in rows for stem in r.images} | set(references))
    known: dict[int, dict] = {}
    for r in rows:
        for i, prompt in enumerate(r.prompts or []):
            known.setdefault(i, prompt)
    out = []
    for stem in stems:
        index = int(stem[:2]) if stem[:2].isdigit() else None
        prompt = known.get(index, {}) if index is not None else {}
        name = prompt.get("name", stem[3:] if index is not None else stem)
        out.append(PromptRow(stem, name.split("/", 1)[0] if "/" in name else "", prompt.get("text", name),
                             prompt.get("seed")))  # fmt: skip
    if len({p.group for p in out}) > 4:  # per-prompt names (subject prompts), not groups
        out = [PromptRow(p.stem, "", p.text, p.seed) for p in out]
    return out


def grouped(prompts: list[PromptRow]) -> list[tuple[str, list[PromptRow]]]:
    groups: dict[str, list[PromptRow]] = {}
    for p in prompts:
        groups.setdefault(p.group, []).append(p)
    return list(groups.items())


def grid_columns(rows, metric: str, mode: str, limit: int = GRID_MAX_TRIALS):
    """The baseline and the trials shown in grids: all of them, or the ``limit`` best finished trials by
    ``metric`` (kept in the table's order). Returns ``(rows, note)``; the note says what was left out."""
    trials = [r for r in rows if r.kind == "trial" and r.images]
    if len(trials) <= limit:
        return [r for r in rows if r.images], ""
    scored = [r for r in trials if math.isfinite(r.metrics.get(metric, math.nan))]
    scored.sort(key=lambda r: r.metrics[metric], reverse=mode == "max")
    keep = {r.run_id for r in scored[:limit]}
    note = (f"Showing the {len(keep)} best of {len(trials)} trials by {metric} (and the baseline); every trial is "
            "in the table.")  # fmt: skip
    return [r for r in rows if r.kind == "baseline" or r.run_id in keep], note


def render_grid(columns, prompts: list[PromptRow], references: dict[str, Path], metric: str,
                cell: int = 128) -> Image.Image:  # fmt: skip
    """Prompts (rows, labelled with their text) x [reference, baseline, trials...] (columns, labelled with
    their swept settings), each cell with its per-prompt ``metric`` in the corner; an empty cell where a run
    has no image. The reference column is left out when no prompt of the grid has one."""
    with_ref = any(p.stem in references for p in prompts)
    cols = ([("reference", "", references, None)] if with_ref else []) + [
        (c.name, c.label, c.images, (c.items or {}).get(metric)) for c in columns
    ]
    label_w, header_h = 200, 44
    grid = Image.new("RGB", (label_w + cell * len(cols), header_h + cell * max(1, len(prompts))), "white")
    draw = ImageDraw.Draw(grid)
    for c, (name, label, _, _) in enumerate(cols):
        x = label_w + c * cell + 4
        draw.text((x, 6), _ascii(name)[:20], fill="black")
        draw.text((x, 22), _ascii(label)[:20], fill="#555555")
    for p, prompt in enumerate(prompts):
        y = header_h + p * cell
        for k, chunk in enumerate(_wrap(_ascii(prompt.text), 30)[:4]):
            draw.text((4, y + 8 + 14 * k), chunk, fill="black")
        if prompt.seed is not None:
            draw.text((4, y + cell - 20), f"seed {prompt.seed}", fill="#777777")
        index = int(prompt.stem[:2]) if prompt.stem[:2].isdigit() else None
        for c, (_, _, images, items) in enumerate(cols):
            x = label_w + c * cell
            if prompt.stem in images:
                with Image.open(images[prompt.stem]) as img:
                    grid.paste(img.convert("RGB").resize((cell, cell)), (x, y))
                value = items[index] if items is not None and index is not None and index < len(items) else None
                if value is not None:
                    text = f"{value:.3f}"
                    draw.rectangle([x + 2, y + cell - 16, x + 8 + 6 * len(text), y + cell - 3], fill="white")
                    draw.text((x + 5, y + cell - 15), text, fill="black")
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline="#cccccc")
    return grid


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def _ascii(text: str) -> str:
    """The default bitmap font has no CJK glyphs: keep ASCII, collapse the rest."""
    if not text:
        return ""
    return re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e]+", " ", text)).strip() or "?"


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _axis(values: list[str], param: str):
    """x positions for a param's values: numbers (log scale for ranks, alphas and rates when positive) or
    categories in first-seen order. Returns ``(positions, scale, ticks)``."""
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        log = bool(_LOG_PARAMS.search(param)) and all(n > 0 for n in numbers) and len(set(numbers)) > 1
        return numbers, "log" if log else "linear", None
    categories = list(dict.fromkeys(values))
    return [float(categories.index(v)) for v in values], "linear", categories


def plot_params(rows, params: list[str], metrics: list[str], out_file: Path) -> bool:
    """Each metric (rows of panels) against each swept setting (columns): one point per finished trial, the
    baseline as a dashed line. False (nothing written) without swept settings or finished trials."""
    trials = [r for r in rows if r.kind == "trial" and r.status == "FINISHED"]
    params = [p for p in params if p != "method" or len({r.params.get(p) for r in trials}) > 1]
    metrics = [m for m in metrics if any(m in r.metrics for r in trials)]
    if not trials or not params or not metrics:
        return False
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), len(params), figsize=(3.6 * len(params), 2.8 * len(metrics)),
                             squeeze=False)  # fmt: skip
    for j, param in enumerate(params):
        x, scale, ticks = _axis([r.params.get(param, "") for r in trials], param)
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            y = [r.metrics.get(metric, math.nan) for r in trials]
            ax.plot(x, y, "o", color="tab:blue", label="trials")
            if baseline is not None and metric in baseline.metrics:
                ax.axhline(baseline.metrics[metric], color="grey", linestyle="--", label="baseline")
            ax.set_xscale(scale)
            if ticks is not None:
                ax.set_xticks(range(len(ticks)), [t[:10] for t in ticks], fontsize=7)
            elif scale == "log" and len(set(x)) <= 6:  # the swept values as ticks; more would collide
                ax.set_xticks(sorted(set(x)), [f"{v:g}" for v in sorted(set(x))], fontsize=7)
                ax.minorticks_off()
            ax.set_xlabel(param, fontsize=8)
            ax.set_ylabel(metric.removeprefix("eval/"), fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return True


def plot_curves(rows, metric: str, out_file: Path, legend_max: int = 12) -> bool:
    """``train/loss`` and ``metric`` over steps, one line per trial, the baseline's score as a dashed line."""
    trials = [r for r in rows if r.kind == "trial"]
    keys = ["train/loss", metric]
    if not any(r.histories.get(k) for r in trials for k in keys):
        return False
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, keys, strict=True):
        for r in trials:
            history = r.histories.get(key) or []
            if history:
                ax.plot([s for s, _ in history], [v for _, v in history], marker="." if key != "train/loss" else None,
                        label=(r.label or r.name)[:28])  # fmt: skip
        if key == metric and baseline is not None and metric in baseline.metrics:
            ax.axhline(baseline.metrics[metric], color="grey", linestyle="--", label="baseline")
        ax.set_title(f"{key} ({'lower' if _better(key) == 'min' else 'higher'} is better)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines and len(trials) <= legend_max:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return True


def pareto_front(points: list[tuple[float, float]], mode: str) -> list[int]:
    """Indices of the points (cost, score) no other point beats: lower or equal cost with a better or equal
    score, one of them strictly. ``mode`` is the score's better direction."""
    sign = 1 if mode == "max" else -1
    front = []
    for i, (cost, score) in enumerate(points):
        dominated = any(
            c <= cost and sign * s >= sign * score and (c < cost or sign * s > sign * score)
            for j, (c, s) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows, metric: str, mode: str, out_file: Path) -> bool:
    """``metric`` against the trained file's size and against training time; the Pareto front (nothing is
    both cheaper and better) joined and labelled, the baseline as a dashed line."""
    trials = [r for r in rows if r.kind == "trial" and r.status == "FINISHED" and metric in r.metrics]
    size_key = next((k for r in trials for k in r.metrics if k.endswith("/size_mb")), None)
    costs = [(k, t) for k, t in ((size_key, "size (MB)"), ("train/time_s", "train time (s)")) if k]
    costs = [(k, t) for k, t in costs if all(k in r.metrics for r in trials)]
    if len(trials) < 2 or not costs:
        return False
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], costs, strict=True):
        points = [(r.metrics[key], r.metrics[metric]) for r in trials]
        front = pareto_front(points, mode)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="tab:blue", alpha=0.6, label="trials")
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "o-", color="tab:red",
                label="Pareto front")  # fmt: skip
        for i in front if len(front) <= 8 else ():  # labels for a short front; a long one would be a smear
            ax.annotate((trials[i].label or trials[i].name)[:20], points[i], fontsize=6, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        if baseline is not None and metric in baseline.metrics:
            ax.axhline(baseline.metrics[metric], color="grey", linestyle="--", label="baseline")
        ax.set_xlabel(title, fontsize=8)
        ax.set_ylabel(metric.removeprefix("eval/"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return True


def plot_parallel(rows, params: list[str], metric: str, mode: str, out_file: Path) -> bool:
    """Parallel coordinates: one line per finished trial through its swept settings to ``metric``, coloured
    by ``metric`` (the best trials drawn on top). Needs two axes and three trials."""
    trials = [r for r in rows if r.kind == "trial" and r.status == "FINISHED" and metric in r.metrics]
    params = [p for p in params if len({r.params.get(p) for r in trials}) > 1]
    if not params or len(trials) < 3:
        return False
    plt = _pyplot()
    columns, labels = [], []
    for p in params:
        x, scale, ticks = _axis([r.params.get(p, "") for r in trials], p)
        values = [math.log10(v) for v in x] if scale == "log" else x
        low, high = min(values), max(values)
        columns.append([(v - low) / (high - low) if high > low else 0.5 for v in values])
        ends = (ticks[0], ticks[-1]) if ticks else (f"{min(x):g}", f"{max(x):g}")
        labels.append((p, *ends))
    scores = [r.metrics[metric] for r in trials]
    low, high = min(scores), max(scores)
    columns.append([(s - low) / (high - low) if high > low else 0.5 for s in scores])
    labels.append((metric.removeprefix("eval/"), f"{low:.4g}", f"{high:.4g}"))
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(columns)), 3.8))
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r")
    order = sorted(range(len(trials)), key=lambda i: scores[i] if mode == "max" else -scores[i])
    for i in order:  # the best last, on top
        ax.plot(range(len(columns)), [col[i] for col in columns], color=cmap(columns[-1][i]), alpha=0.8)
    for k, (_, bottom, top) in enumerate(labels):
        ax.axvline(k, color="black", linewidth=0.8)
        ax.text(k, -0.08, str(bottom)[:10], ha="center", va="top", fontsize=7)
        ax.text(k, 1.05, str(top)[:10], ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(columns)), [name for name, _, _ in labels], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.2)
    ax.set_title(f"swept settings -> {metric} (colour: {metric.removeprefix('eval/')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return True


def _better(metric: str) -> str:
    info = METRICS.get(metric)
    return info.better if info else "max"


def render_knob_grid(images: dict[str, dict[str, Path]], settings: list[str], prompts: list[dict] | None,
                     cell: int = 128) -> Image.Image:  # fmt: skip
    """One model's samples at each inference setting: prompts (rows, by their text) x settings (columns);
    ``images`` maps a setting's slug (its ``knobs/`` folder) to prompt stem -> image."""
    from trainables.common.tracking import slug

    columns = [(text, images.get(slug(text), {})) for text in settings]
    stems = sorted({stem for _, found in columns for stem in found})
    texts = {i: p.get("text", "") for i, p in enumerate(prompts or [])}
    label_w, header_h = 200, 30
    grid = Image.new("RGB", (label_w + cell * len(columns), header_h + cell * max(1, len(stems))), "white")
    draw = ImageDraw.Draw(grid)
    for c, (text, _) in enumerate(columns):
        draw.text((label_w + c * cell + 4, 8), _ascii(text)[:20], fill="black")
    for r, stem in enumerate(stems):
        y = header_h + r * cell
        index = int(stem[:2]) if stem[:2].isdigit() else None
        label = texts.get(index) or stem
        for k, chunk in enumerate(_wrap(_ascii(label), 30)[:4]):
            draw.text((4, y + 8 + 14 * k), chunk, fill="black")
        for c, (_, found) in enumerate(columns):
            x = label_w + c * cell
            if stem in found:
                with Image.open(found[stem]) as img:
                    grid.paste(img.convert("RGB").resize((cell, cell)), (x, y))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline="#cccccc")
    return grid


def plot_times(rows, out_file: Path) -> bool:
    """One horizontal bar per run, split into set-up, training, sampling/scoring and saving (``time/*_s``)."""
    timed = [r for r in rows if "time/total_s" in r.metrics]
    if not timed:
        return False
    plt = _pyplot()
    parts = (("time/setup_s", "set-up", "tab:grey"), ("time/train_s", "train", "tab:blue"),
             ("time/eval_s", "eval", "tab:orange"), ("time/save_s", "save", "tab:green"))  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(timed)))
    names = [(r.label or r.name)[:28] for r in timed]
    left = [0.0] * len(timed)
    for key, label, color in parts:
        widths = [r.metrics.get(key, 0.0) for r in timed]
        ax.barh(names, widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlabel("seconds", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars
    fig.tight_layout()
    fig.savefig(out_file, dpi=90)
    plt.close(fig)
    return True

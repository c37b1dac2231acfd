"""The report as one self-contained HTML file: images embedded as data URIs, a table that sorts on click,
every row linked to its MLflow run. Opens from disk, from a mailed zip, and in MLflow's artifact view."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from PIL import Image

THUMB = 256  # longest side of an embedded sample; the full images stay in MLflow

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1b1b;max-width:1600px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
.verdict{background:#f4f6fa;border-left:4px solid #3b6fd8;padding:8px 14px}
.verdict.none{border-left-color:#c77700}.meta{color:#555}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 7px}
table.sortable th{cursor:pointer;background:#f2f2f2;user-select:none;white-space:nowrap}
table.sortable th[data-dir=asc]::after{content:" \\25B2"}table.sortable th[data-dir=desc]::after{content:" \\25BC"}
table.sortable td{text-align:right;font-variant-numeric:tabular-nums}
table.sortable td.text{text-align:left}
tr.baseline{background:#fafafa;font-style:italic}tr.failed td{color:#a40000}
#trials td:first-child{white-space:nowrap}
td.best{font-weight:bold;background:#eaf5e9}
table.grid th{font-weight:normal;background:#f7f7f7;max-width:180px;vertical-align:top;font-size:12px}
table.grid th.prompt{text-align:left;width:180px}table.grid td{padding:2px;text-align:center;vertical-align:top}
table.grid img{display:block;width:128px;height:128px;image-rendering:auto}
.score{font-size:11px;color:#333}small{color:#666}.note{color:#555;font-size:13px}
img.plot{max-width:100%;border:1px solid #eee}
"""

# sorts the body rows of a clicked column (numbers as numbers, empty cells last); the baseline stays on top
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "asc" ? "desc" : "asc";
      Array.prototype.forEach.call(heads, function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var pinned = rows.filter(function (r) { return r.classList.contains("baseline"); });
      var rest = rows.filter(function (r) { return !r.classList.contains("baseline"); });
      function key(row) {
        var cell = row.cells[col], v = cell.dataset.v;
        if (v === undefined || v === "") return null;
        var n = Number(v);
        return isNaN(n) ? v : n;
      }
      rest.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;
        var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return dir === "asc" ? c : -c;
      });
      pinned.concat(rest).forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def data_uri(path: Path, max_side: int = THUMB) -> str:
    """A PNG data URI of the image at ``path``, shrunk to ``max_side`` when larger."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def render_html(rows, title: str, parent, metric: str, verdict, params: list[str], prompts, references: dict,
                columns, note: str, plots, out_dir: Path, ui_url: str) -> str:  # fmt: skip
    """The whole page. ``rows`` in the table's order, ``columns`` the rows shown in the grids (their
    ``images``: prompt stem -> local file), ``plots`` pictures already drawn in ``out_dir``."""
    from reports import figures
    from reports.compare import table

    exp_id = parent.info.experiment_id
    runs_page = f"{ui_url}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    parent_page = f"{ui_url}/#/experiments/{exp_id}/runs/{parent.info.run_id}"
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_e(title)}: sweep report</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_e(title)}: sweep report</h1>"]  # fmt: skip
    if verdict is not None:
        css = "verdict" + ("" if verdict.beaten_by else " none")
        out.append(f'<section class="{css}" id="verdict"><h2>Verdict</h2>')
        out += [f"<p>{_e(line)}</p>" for line in verdict.lines]
        out.append("</section>")
    n_trials = sum(r.kind == "trial" for r in rows)
    out.append(
        f'<p class="meta">MLflow: <a href="{_e(parent_page)}">parent run {_e(parent.info.run_id)}</a> · '
        f'<a href="{_e(runs_page)}">all runs of the experiment</a> (served by <code>mlflow ui</code> at '
        f"{_e(ui_url)}). {n_trials} trials and the baseline.</p>"
    )

    header, body = table(rows, params, metric, verdict)  # the trials' table (id "trials")
    out += ["<h2>Trials</h2>",
            '<p class="note">Rows in the order of the swept settings; click a column to sort it (the baseline '
            "stays on top). A value is <b>bold</b> when it is the best of its column at the printed precision "
            "(baseline included). Each run name opens its MLflow run.</p>",
            '<table class="sortable" id="trials"><thead><tr>']  # fmt: skip
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    n_params = len(params)
    for row, cells in zip(rows, body, strict=True):
        css = "baseline" if row.kind == "baseline" else "failed" if row.status == "FAILED" else "trial"
        out.append(f'<tr class="{css}" data-run="{_e(row.run_id)}">')
        for i, cell in enumerate(cells):
            classes = []
            if i < 2 + n_params or not isinstance(cell.value, float):
                classes.append("text")
            if cell.best:
                classes.append("best")
            value = "" if cell.value is None else repr(cell.value) if isinstance(cell.value, float) else cell.value
            text = _e(cell.text)
            if i == 0 and row.url:
                text = f'<a href="{_e(row.url)}">{text}</a>'
            cls = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f'<td{cls} data-v="{_e(value)}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")

    for group, members in figures.grouped(prompts):
        out.append(f"<h2>{_e(figures.GROUP_TITLES.get(group, f'Samples: {group}' if group else 'Samples'))}</h2>")
        out.append(
            f'<p class="note">Prompts as rows, the baseline and the trials as columns (labelled with their '
            f"swept settings); under each image its {_e(metric.removeprefix('eval/'))}. {_e(note)}</p>"
        )
        out.append(_grid(members, references, columns, metric))
    for picture in plots:
        out += [f"<h2>{_e(picture.title)}</h2>", f'<p class="note">{_e(picture.caption)}</p>']
        if picture.table:
            out.append('<table class="sortable knobs"><thead><tr>')
            out += [f"<th>{_e(h)}</th>" for h in picture.table[0]]
            out.append("</tr></thead><tbody>")
            for row in picture.table[1:]:
                css = ' class="baseline"' if "no fine-tune" in row[:2] else ""
                cells = []
                for text in row:
                    bold = text.startswith("**")
                    text = text.strip("*")
                    value = text.removesuffix("%")  # "50%" sorts as 50
                    numeric = _is_number(value)
                    cls = ("best" if bold else "") if numeric else "text"
                    cells.append(f'<td class="{cls}" data-v="{_e(value if numeric else text)}">{_e(text)}</td>')
                out.append(f"<tr{css}>{''.join(cells)}</tr>")
            out.append("</tbody></table>")
        if not picture.file:
            continue
        out += [
            f'<img class="plot" alt="{_e(picture.title)}" src="{data_uri(out_dir / picture.file, 4096)}">',
        ]
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def _grid(prompts, references: dict, columns, metric: str) -> str:
    with_ref = any(p.stem in references for p in prompts)
    out = ['<table class="grid"><thead><tr><th class="prompt">prompt</th>']
    if with_ref:
        out.append("<th>reference</th>")
    for c in columns:
        link = f'<a href="{_e(c.url)}">{_e(c.name)}</a>' if c.url else _e(c.name)
        out.append(f"<th>{link}<br><small>{_e(c.label)}</small></th>")
    out.append("</tr></thead><tbody>")
    for p in prompts:
        seed = f"<br><small>seed {p.seed}</small>" if p.seed is not None else ""
        out.append(f'<tr><th class="prompt">{_e(p.text)}{seed}</th>')
        if with_ref:
            ref = references.get(p.stem)
            out.append(f'<td><img alt="reference" src="{data_uri(ref)}"></td>' if ref else "<td></td>")
        index = int(p.stem[:2]) if p.stem[:2].isdigit() else None
        for c in columns:
            path = c.images.get(p.stem)
            if path is None:
                out.append("<td></td>")
                continue
            items = (c.items or {}).get(metric)
            value = items[index] if items is not None and index is not None and index < len(items) else None
            score = "" if value is None or not math.isfinite(value) else f'<div class="score">{value:.4f}</div>'
            out.append(f'<td><img alt="{_e(c.name)}: {_e(p.text)}" src="{data_uri(path)}">{score}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)

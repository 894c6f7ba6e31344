"""The ablation report: ``reports/ablation/index.html``, one self-contained page (``diffsketch ablate --report``).

From :func:`diffsketch.ablation.runner.collect`: a table of every row's evaluation scores of the
student (mean over the test photos and their spread, the best mean of each column in bold), the
student's sketches of each row side by side on the same photos, and the ``train`` and ``distill``
curves of every row (Plotly, its JavaScript inlined once; nothing is fetched). Beside the page:
``results.json`` (the same numbers) and ``table.md`` (the table as Markdown, for a README). The
same metrics are DVC metrics of each experiment, so ``dvc exp show`` lists them too.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from diffsketch.ablation.runner import METHOD, RowResult
from diffsketch.core import escape, page_start, replaced_folder, safe_json
from diffsketch.evaluation import ARROWS, HIGHER_IS_BETTER, UNITS

CSS = """
.wide { overflow-x: auto; }
#ablation { font-size: 0.9em; }
#ablation td:nth-child(2) { min-width: 16em; }
#ablation td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#sketches img { width: 128px; height: auto; border: 1px solid #ddd; display: block; }
#sketches th.row { white-space: nowrap; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; }
.curves .plot { flex: 1 1 520px; height: 340px; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def _columns(results: list[RowResult]) -> list[str]:
    return [k for k in HIGHER_IS_BETTER if all(k in r.means for r in results)]


def _header(key: str) -> str:
    unit = f" ({UNITS[key]})" if key in UNITS else ""
    return f"{key}{unit} {ARROWS[HIGHER_IS_BETTER[key]]}"


def _best(results: list[RowResult], key: str) -> float:
    values = [r.means[key] for r in results]
    return max(values) if HIGHER_IS_BETTER[key] else min(values)


def _changes(result: RowResult) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in result.row.overrides.items()) or "(none)"


def table_html(results: list[RowResult]) -> str:
    columns = _columns(results)
    extras = sorted({k for r in results for k in r.extra})
    best = {k: _best(results, k) for k in columns}
    head = ["row", "what it tests", "changes", *map(_header, columns), "images", *extras]
    lines = []
    for r in results:
        cells = [f"<td>{escape(r.row.name)}</td>", f"<td>{escape(r.row.description)}</td>", f"<td><code>{escape(_changes(r))}</code></td>"]
        for k in columns:
            text = f"{r.means[k]:.4f} ± {r.spread[k]:.4f}"
            cells.append(f'<td class="num">{"<strong>" + text + "</strong>" if r.means[k] == best[k] else text}</td>')
        cells.append(f'<td class="num">{r.images}</td>')
        cells += [f'<td class="num">{r.extra[k]:.4f}</td>' if k in r.extra else "<td>–</td>" for k in extras]
        lines.append(f'<tr data-row="{escape(r.row.name)}">' + "".join(cells) + "</tr>")
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "\n".join(lines)
    return f'<div class="wide"><table id="ablation">\n<thead><tr>{thead}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


def table_markdown(results: list[RowResult]) -> str:
    """The table as Markdown: mean ± spread of the student's scores per row, the best mean in bold."""
    columns = _columns(results)
    best = {k: _best(results, k) for k in columns}
    lines = ["| row | changes | " + " | ".join(map(_header, columns)) + " |", "|---|---|" + "---|" * len(columns)]
    for r in results:
        cells = [f"**{r.means[k]:.4f}** ± {r.spread[k]:.4f}" if r.means[k] == best[k] else f"{r.means[k]:.4f} ± {r.spread[k]:.4f}"
                 for k in columns]  # fmt: skip
        lines.append(f"| {r.row.name} | `{_changes(r)}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def sketches_html(results: list[RowResult]) -> str:
    """Photos across, rows down: every row's student sketch of the same photos."""
    photos = {name: photo for r in results for name, photo, _ in r.sketches}
    if not photos:
        return "<p>No sketches (the evaluation's grid is empty: evaluate.grid is 0).</p>"
    head = "<th>row</th>" + "".join(f"<th>{escape(name)}</th>" for name in photos)
    lines = ['<tr><th class="row">photo</th>' + "".join(f'<td><img src="{_png_uri(p)}" alt="photo {escape(n)}"></td>' for n, p in photos.items()) + "</tr>"]
    for r in results:
        mine = {name: sketch for name, _, sketch in r.sketches}
        cells = "".join(f'<td><img src="{_png_uri(mine[n])}" alt="{escape(r.row.name)}: {escape(n)}"></td>' if n in mine else "<td>–</td>" for n in photos)
        lines.append(f'<tr data-row="{escape(r.row.name)}"><th class="row">{escape(r.row.name)}</th>{cells}</tr>')
    return f'<table id="sketches">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(lines) + "\n</tbody>\n</table>"


def curve_figures(results: list[RowResult]) -> dict[str, dict]:
    """One Plotly figure (as JSON data) per curve, one line per row."""
    import plotly.graph_objects as go

    names = sorted({name for r in results for name in r.curves}, key=lambda n: (not n.startswith("train:"), n))
    figures = {}
    for name in names:
        fig = go.Figure()
        for r in results:
            points = r.curves.get(name)
            if points:
                fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=r.row.name))
        fig.update_layout(title=dict(text=name, x=0.02), xaxis_title="step", margin=dict(l=50, r=10, t=40, b=40),
                          template="plotly_white", legend=dict(title=dict(text="row (click to hide)")))  # fmt: skip
        figures[name] = fig.to_plotly_json()
    return figures


CURVES_SCRIPT = """
(function () {
  var F = JSON.parse(document.getElementById("curve-data").textContent);
  Object.keys(F).forEach(function (name, i) {
    Plotly.newPlot("curve-" + i, F[name].data, F[name].layout, {responsive: true, displaylogo: false});
  });
})();
"""


def render_html(results: list[RowResult], commit: str) -> str:
    from plotly.offline import get_plotlyjs


    figures = curve_figures(results)
    plots = "".join(f'<div class="plot" id="curve-{i}"></div>' for i in range(len(figures)))
    parts = [
        *page_start("diffsketch ablations", CSS, f"<script>{get_plotlyjs()}</script>"),
        f"<h1>diffsketch ablations ({len(results)} rows, commit {escape(commit[:10])})</h1>",
        "<p>Each row is a DVC experiment <code>ablate-NAME</code> of this commit: <code>params.yaml</code> with the row's "
        "changes, run by <code>diffsketch ablate</code>. Scores are the distilled student's against the evaluation's "
        f"ground truth on the test photos ({escape(METHOD)} in <code>reports/eval</code>): mean ± standard deviation over the "
        "photos; ↑ higher is better, ↓ lower is better; the best mean of each column is in bold.</p>",
        "<h2>Scores</h2>",
        table_html(results),
        "<p>The same metrics in DVC: <code>dvc exp show</code> (columns <code>reports/eval/metrics.json:student.*</code>), "
        "or <code>dvc exp show --md</code> for Markdown.</p>",
        "<h2>Sketches</h2>",
        "<p>The student of every row on the same photos (the first photos of the evaluation, at its size).</p>",
        sketches_html(results),
        "<h2>Curves</h2>",
        "<p>The <code>train</code> (generator) and <code>distill</code> (student) dvclive curves of every row.</p>",
        f'<div class="curves">{plots}</div>',
        f'<script type="application/json" id="curve-data">{safe_json(figures)}</script>',
        f"<script>{CURVES_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def results_json(results: list[RowResult]) -> list[dict]:
    return [dict(row=r.row.name, description=r.row.description, set=r.row.overrides, experiment=r.row.experiment, rev=r.rev,
                 images=r.images, means=r.means, spread=r.spread, extra=r.extra) for r in results]  # fmt: skip


def write_report(results: list[RowResult], out_dir: str | Path, commit: str) -> Path:
    """Write ``index.html``, ``results.json`` and ``table.md`` into ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir)
    with replaced_folder(out_dir) as staging:
        (staging / "index.html").write_text(render_html(results, commit))
        (staging / "results.json").write_text(json.dumps(results_json(results), indent=2) + "\n")
        (staging / "table.md").write_text(table_markdown(results))
    return out_dir / "index.html"

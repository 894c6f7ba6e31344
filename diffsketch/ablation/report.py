"""The ablation report: ``reports/ablation/index.html``, one self-contained page (``diffsketch ablate --report``).

From :func:`diffsketch.ablation.runner.collect`: a table of every row's evaluation scores, twice
(the row's generator scored directly on the test photos, and its distilled student), each as the
mean and the half-width of its 95 % t-interval (over the training seeds when a row has two or more,
else over the photos). A score is bold only where its row's interval clears every other row's.
Chamfer and F-score average only the sketches with line pixels; a method that drew none shows
"no lines" and is not ranked. With the tiny random model the page says at the top that the figures
check the pipeline, not the method. Then each row's sketches side by side on the same photos, and
the ``train`` and ``distill`` curves of every row (Plotly, its JavaScript inlined once; nothing is
fetched). Beside the page: ``results.json`` (the same numbers) and ``table.md`` (the table as
Markdown, for a README). :func:`show_table` prints the key scores in 100 columns
(``diffsketch ablate --show``).
"""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

from diffsketch.ablation.runner import METHODS, RowResult, Score
from diffsketch.core import escape, page_start, replaced_folder, safe_json
from diffsketch.evaluation import ARROWS, HIGHER_IS_BETTER, UNITS

CSS = """
.wide { overflow-x: auto; max-width: 100%; }
.smoke { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.6em 0.9em; }
#ablation { font-size: 0.9em; }
#ablation td:nth-child(2) { min-width: 16em; }
#ablation td:first-child { white-space: nowrap; }
#ablation td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#ablation td.nolines { color: #888; font-style: italic; }
#sketches img { width: 128px; height: auto; border: 1px solid #ddd; display: block; }
#sketches th.row { white-space: nowrap; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; }
.curves .plot { flex: 1 1 520px; height: 340px; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""
NO_LINES = "no lines"
KEY_METRICS = ("ssim", "f_score", "chamfer")  # the columns of ``diffsketch ablate --show``
SMOKE_NOTE = (
    "These rows ran with the tiny random model (model.id: tiny): the figures check that the pipeline runs end to end, "
    "not the method. Its sketches carry no learned style; set a real Stable Diffusion model (diffsketch preset paper) for results."
)


def _methods(results: list[RowResult]) -> list[str]:
    return [m for m in METHODS if any(m in r.scores for r in results)]


def _columns(results: list[RowResult], method: str) -> list[str]:
    return [k for k in HIGHER_IS_BETTER if any(k in r.scores.get(method, {}) for r in results)]


def _header(key: str) -> str:
    unit = f" ({UNITS[key]})" if key in UNITS else ""
    return f"{key}{unit} {ARROWS[HIGHER_IS_BETTER[key]]}"


def best_row(results: list[RowResult], method: str, key: str) -> str | None:
    """The row whose 95 % interval of ``key`` clears every other row's (above them, or below for lower-is-better), else None.

    Rows with "no lines" are not ranked; a row without an interval (one value) clears nothing and is never cleared.
    """
    scored = [(r.row.name, r.scores[method][key]) for r in results if key in r.scores.get(method, {})]
    scored = [(name, s) for name, s in scored if s.mean is not None]
    if len(scored) < 2:
        return None
    higher = HIGHER_IS_BETTER[key]
    for name, mine in scored:
        others = [s for other, s in scored if other != name]
        if mine.has_interval and all(o.has_interval and (mine.low > o.high if higher else mine.high < o.low) for o in others):
            return name
    return None


def _number(value: float) -> str:
    """A score in at most 6 characters.

    Example:
        >>> _number(0.51234), _number(12.345), _number(181.02)
        ('0.512', '12.35', '181.0')
    """
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def cell_text(score: Score | None, compact: bool = False) -> str:
    """``mean ± half-width`` of a score, the mean alone without an interval, ``no lines``, or ``–`` when not scored."""
    if score is None:
        return "–"
    if score.mean is None:
        return NO_LINES
    if compact:
        return _number(score.mean) + (f"±{_number((score.high - score.low) / 2)}" if score.has_interval else "")
    return f"{score.mean:.4f}" + (f" ± {(score.high - score.low) / 2:.4f}" if score.has_interval else "")


def _changes(result: RowResult) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in result.row.overrides.items()) or "(none)"


def _over(results: list[RowResult]) -> str:
    overs = {s.over for r in results for m in r.scores.values() for s in m.values() if s.has_interval}
    seeds = sorted({r.seeds for r in results})
    seeds_text = "/".join(map(str, seeds)) + (" seed" if seeds == [1] else " seeds")
    if overs == {"seeds"}:
        return f"mean ± half-width of the 95 % t-interval over the training seeds ({seeds_text} per row)"
    if overs == {"images"}:
        return (f"mean ± half-width of the 95 % t-interval over the test photos ({seeds_text} per row: the interval shows how the "
                "photos vary, not how training varies; run diffsketch ablate --seeds 3 for intervals over seeds)")  # fmt: skip
    return f"mean ± half-width of the 95 % t-interval: over the training seeds where a row has 2 or more ({seeds_text}), else over the test photos"


def is_smoke(results: list[RowResult]) -> bool:
    return any(r.model == "tiny" for r in results)


def table_html(results: list[RowResult]) -> str:
    methods = _methods(results)
    columns = {m: _columns(results, m) for m in methods}
    extras = sorted({k for r in results for k in r.extra})
    best = {(m, k): best_row(results, m, k) for m in methods for k in columns[m]}
    top = ['<th rowspan="2">row</th>', '<th rowspan="2">what it tests</th>', '<th rowspan="2">changes</th>', '<th rowspan="2">seeds</th>']
    top += [f'<th colspan="{len(columns[m]) + 1}">{escape(m)}</th>' for m in methods]
    top += [f'<th rowspan="2">{escape(k)}</th>' for k in extras]
    sub = [h for m in methods for h in [*(f"<th>{escape(_header(k))}</th>" for k in columns[m]), "<th>lines</th>"]]
    lines = []
    for r in results:
        cells = [f"<td>{escape(r.row.name)}</td>", f"<td>{escape(r.row.description)}</td>", f"<td><code>{escape(_changes(r))}</code></td>",
                 f'<td class="num">{r.seeds}</td>']  # fmt: skip
        for m in methods:
            for k in columns[m]:
                score = r.scores.get(m, {}).get(k)
                text = escape(cell_text(score))
                css = "num nolines" if score is not None and score.mean is None else "num"
                cells.append(f'<td class="{css}" data-metric="{m}.{k}">{"<strong>" + text + "</strong>" if best[(m, k)] == r.row.name else text}</td>')
            cells.append(f'<td class="num" title="sketches with line pixels / test photos">{escape(r.lines.get(m, "–"))}</td>')
        cells += [f'<td class="num">{r.extra[k]:.4f}</td>' if k in r.extra else "<td>–</td>" for k in extras]
        lines.append(f'<tr data-row="{escape(r.row.name)}">' + "".join(cells) + "</tr>")
    thead = "<tr>" + "".join(top) + "</tr><tr>" + "".join(sub) + "</tr>"
    body = "\n".join(lines)
    return f'<div class="wide"><table id="ablation">\n<thead>{thead}</thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


def table_markdown(results: list[RowResult]) -> str:
    """The table as Markdown: per row and method, mean ± 95 % half-width of each score; bold only where a row's interval clears the others."""
    methods = _methods(results)
    columns = [(m, k) for m in methods for k in _columns(results, m)]
    best = {(m, k): best_row(results, m, k) for m, k in columns}
    lines = ["| row | changes | seeds | " + " | ".join(f"{m} {_header(k)}" for m, k in columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for r in results:
        cells = []
        for m, k in columns:
            text = cell_text(r.scores.get(m, {}).get(k))
            cells.append(f"**{text}**" if best[(m, k)] == r.row.name else text)
        lines.append(f"| {r.row.name} | `{_changes(r)}` | {r.seeds} | " + " | ".join(cells) + " |")
    note = f"\n{_over(results)[0].upper()}{_over(results)[1:]}; bold: the row whose interval clears every other row's.\n"
    return ("> " + SMOKE_NOTE + "\n\n" if is_smoke(results) else "") + "\n".join(lines) + "\n" + note


def show_table(results: list[RowResult], width: int = 100) -> str:
    """Rows x key metrics (SSIM, F-score, chamfer of the generator and the student) as plain text of at most ``width`` columns.

    A ``*`` follows the score of the row whose interval clears every other row's; ``no lines`` marks a
    method that drew no line pixels (not ranked).
    """
    methods = _methods(results)
    columns = [(m, k) for m in methods for k in KEY_METRICS if k in _columns(results, m)]
    best = {(m, k): best_row(results, m, k) for m, k in columns}
    cells = [[cell_text(r.scores.get(m, {}).get(k), compact=True) + ("*" if best[(m, k)] == r.row.name else " ") for m, k in columns]
             for r in results]  # fmt: skip
    heads = [f"{m[:3]} {k.replace('f_score', 'F')} {ARROWS[HIGHER_IS_BETTER[k]]}" for m, k in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    name_width = max(3, min(max(len(r.row.name) for r in results), width - sum(w + 2 for w in widths) - 4))
    out = [f"{'row':<{name_width}}  sd  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths))]
    for r, row_cells in zip(results, cells):
        name = r.row.name if len(r.row.name) <= name_width else r.row.name[: name_width - 1] + "…"
        out.append(f"{name:<{name_width}}  {r.seeds:>2}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row_cells, widths)))
    notes = ["gen: the generator on the test photos; stu: the distilled student; sd: seeds; mean±95% half-width",
             "* = interval clears every other row's; no lines = no line pixels drawn (not ranked)"]  # fmt: skip
    if is_smoke(results):
        notes.insert(0, "tiny random model: these figures check the pipeline, not the method")
    notes = [wrapped for note in notes for wrapped in textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False)]
    return "\n".join([*(line[:width] for line in out), *notes])


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def sketches_html(results: list[RowResult]) -> str:
    """Photos across, rows down: every row's sketches (generator, then student) of the same photos."""
    photos = {name: photo for r in results for name, photo, _ in r.sketches}
    if not photos:
        return "<p>No sketches (the evaluation's grid is empty: evaluate.grid is 0).</p>"
    head = "<th>row</th>" + "".join(f"<th>{escape(name)}</th>" for name in photos)
    lines = ['<tr><th class="row">photo</th>' + "".join(f'<td><img src="{_png_uri(p)}" alt="photo {escape(n)}"></td>' for n, p in photos.items()) + "</tr>"]
    for r in results:
        mine = {name: made for name, _, made in r.sketches}
        for method in [m for m in METHODS if any(m in made for made in mine.values())]:
            cells = "".join(f'<td><img src="{_png_uri(mine[n][method])}" alt="{escape(r.row.name)} {method}: {escape(n)}"></td>'
                            if method in mine.get(n, {}) else "<td>–</td>" for n in photos)  # fmt: skip
            lines.append(f'<tr data-row="{escape(r.row.name)}" data-method="{method}"><th class="row">{escape(r.row.name)} ({method})</th>{cells}</tr>')
    return f'<div class="wide"><table id="sketches">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(lines) + "\n</tbody>\n</table></div>"


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
        fig.update_layout(title={"text": name, "x": 0.02}, xaxis_title="step", margin={"l": 50, "r": 10, "t": 40, "b": 40},
                          template="plotly_white", legend={"title": {"text": "row (click to hide)"}})  # fmt: skip
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
    commit_text = escape(commit[:10])
    parts = [
        *page_start("diffsketch ablations", CSS, f"<script>{get_plotlyjs()}</script>"),
        f"<h1>diffsketch ablations ({len(results)} rows, commit {commit_text})</h1>",
        *([f'<p class="smoke" id="smoke-note"><strong>Pipeline check, not a result.</strong> {escape(SMOKE_NOTE)}</p>'] if is_smoke(results) else []),
        ("<p>Each row is one DVC experiment per training seed (<code>ablate-NAME</code>, <code>ablate-NAME-seedS</code>) of this "
        "commit: <code>params.yaml</code> with the row's changes, run by <code>diffsketch ablate</code>. Each row is scored twice "
        "against the evaluation's ground truth on the test photos (<code>reports/eval</code>): its <em>generator</em> directly "
        "(the photo inverted into the diffusion model, its features through the trained generator) and its distilled "
        f"<em>student</em>. Scores: {escape(_over(results))}; ↑ higher is better, ↓ lower is better. A score is bold only "
        "where that row's interval clears every other row's (no bold for overlapping intervals). Chamfer and F-score are "
        "averaged over the sketches that have line pixels; <em>no lines</em> means none had any (not ranked), and the "
        "<em>lines</em> column counts the sketches with line pixels.</p>"),
        "<h2>Scores</h2>",
        table_html(results),
        ("<p>The same metrics in DVC: <code>dvc exp show</code> (columns <code>reports/eval/metrics.json:student.*</code>, "
        "<code>…:generator.*</code>), or in 100 columns: <code>diffsketch ablate --show</code>.</p>"),
        "<h2>Sketches</h2>",
        "<p>The generator and the student of every row on the same photos (the first photos of the evaluation, first seed).</p>",
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


def _score_json(score: Score) -> dict:
    interval = [score.low, score.high] if score.has_interval else None
    return {"mean": score.mean, "interval": interval, "n": score.n, "over": score.over}


def results_json(results: list[RowResult]) -> list[dict]:
    """The report's numbers: per row, each method's score per metric (``mean``: None for no lines; ``interval``: the 95 % bounds)."""
    return [{"row": r.row.name, "description": r.row.description, "set": r.row.overrides, "experiment": r.row.experiment, "revs": r.revs,
                 "seeds": r.seeds, "images": r.images, "model": r.model, "lines": r.lines,
                 "scores": {m: {k: _score_json(s) for k, s in scores.items()} for m, scores in r.scores.items()},
                 "best": {m: {k: best_row(results, m, k) == r.row.name for k in scores} for m, scores in r.scores.items()},
                 "extra": r.extra} for r in results]  # fmt: skip


def write_report(results: list[RowResult], out_dir: str | Path, commit: str) -> Path:
    """Write ``index.html``, ``results.json`` and ``table.md`` into ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir)
    with replaced_folder(out_dir) as staging:
        (staging / "index.html").write_text(render_html(results, commit))
        (staging / "results.json").write_text(json.dumps(results_json(results), indent=2) + "\n")
        (staging / "table.md").write_text(table_markdown(results))
    return out_dir / "index.html"

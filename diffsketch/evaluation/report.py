"""The evaluation report: one self-contained HTML page, and the README's "Results" table.

``render_html(result)`` gives the page written to ``reports/eval/index.html``: with the tiny
random model, first a note that the figures check the pipeline, not the method; the settings, a
table of mean scores per method (the best value of each metric in bold, none for a tie; "no lines"
for a chamfer or F-score of a method that drew no line pixels, never ranked), the notes (methods
left out, metrics skipped, images skipped), a side-by-side grid (photo, ground truth, each method)
and the per-image scores. Wide tables scroll inside their box. Every image is an inlined PNG data
URI; nothing is fetched.

``write_report(result, out_dir)`` writes the stage's data files (:func:`diffsketch.evaluation.protocol.write_outputs`)
and this page; ``run_evaluate`` evaluates, then writes both. The dependency goes one way: this
renderer imports :mod:`diffsketch.evaluation.protocol`, which never imports it.

``results_markdown(summary, metrics)`` renders the same means as a Markdown table, and
``update_readme(readme, reports)`` puts it between the ``<!-- results:begin -->`` and
``<!-- results:end -->`` markers of the README (``diffsketch results --readme README.md``).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from diffsketch.core import Params, escape, page_start, table_html
from diffsketch.evaluation.metrics import HIGHER_IS_BETTER, UNITS
from diffsketch.evaluation.protocol import EDGE_METRICS, EvalError, EvalResult, evaluate, write_outputs

CSS = """
#grid img { border: 1px solid #ddd; } th.name { background: #fafafa; font-weight: normal; }
.wide { overflow-x: auto; max-width: 100%; }
.smoke { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.6em 0.9em; }
"""
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ARROWS = {True: "↑", False: "↓"}


def _data_uri(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _columns(means: dict[str, dict[str, float]]) -> list[str]:
    first = next(iter(means.values()))
    return [k for k in HIGHER_IS_BETTER if k in first]


def _header(key: str) -> str:
    unit = f" ({UNITS[key]})" if key in UNITS else ""
    return f"{key}{unit} {ARROWS[HIGHER_IS_BETTER[key]]}"


NO_LINES = "no lines"  # a chamfer or F-score mean of a method that drew no line pixels (None in metrics.json)
SMOKE_NOTE = (
    "The tiny random model (model.id: tiny) made these figures: they check that the pipeline runs end to end, not the "
    "method. Its sketches carry no learned style; set a real Stable Diffusion model (diffsketch preset paper) for results."
)


def random_networks(student_meta: dict) -> list[str]:
    """The loss networks that were random stand-ins (weights missing offline) when the student was made,
    from its ``networks`` record: the generator's CLIP and LPIPS, the distillation's LPIPS.

    >>> random_networks({"networks": {"train_clip": "tiny", "train_lpips": "alex", "distill_lpips": "random"}})
    ["the generator's CLIP loss (tiny random CLIP)", "the distillation's LPIPS loss (random AlexNet)"]
    """
    networks = student_meta.get("networks") or {}
    found = []
    if networks.get("train_clip") == "tiny":
        found.append("the generator's CLIP loss (tiny random CLIP)")
    if networks.get("train_lpips") == "random":
        found.append("the generator's LPIPS loss (random AlexNet)")
    if networks.get("distill_lpips") == "random":
        found.append("the distillation's LPIPS loss (random AlexNet)")
    return found


def _best(means: dict[str, dict[str, float | None]], key: str) -> float | None:
    """The best value of a column; a single method, or one equalled by another, is not marked best (None): no bold ties."""
    values = [m[key] for m in means.values() if m.get(key) is not None]
    if len(values) < 2:
        return None
    best = max(values) if HIGHER_IS_BETTER[key] else min(values)
    return best if values.count(best) == 1 else None


def _value(value: float | None) -> str:
    """A mean as the report writes it: 4 decimals, or ``no lines``.

    Example:
        >>> _value(0.123456), _value(None)
        ('0.1235', 'no lines')
    """
    return NO_LINES if value is None else f"{value:.4f}"


def means_table_html(means: dict[str, dict[str, float | None]], seconds: dict[str, float]) -> str:
    columns = _columns(means)
    best = {k: _best(means, k) for k in columns}
    head = "".join(f"<th>{escape(h)}</th>" for h in ["method", *map(_header, columns), "seconds / image"])
    rows = []
    for method, values in means.items():
        cells = [f"<td>{escape(method)}</td>"]
        for k in columns:
            text = escape(_value(values.get(k)))
            cells.append(f"<td><strong>{text}</strong></td>" if values.get(k) is not None and values[k] == best[k] else f"<td>{text}</td>")
        cells.append(f"<td>{seconds.get(method, float('nan')):.3f}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="wide"><table id="means">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table></div>"


def grid_html(grid: list[dict], methods: list[str], truth: str) -> str:
    if not grid:
        return "<p>No grid (evaluate.grid is 0).</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in ["photo", f"ground truth ({truth})", *methods])
    rows = []
    for entry in grid:
        images = [entry["photo"], entry["truth"], *(entry["outputs"][m] for m in methods)]
        labels = ["photo", "ground truth", *methods]
        cells = "".join(
            f'<td><img src="{_data_uri(a)}" alt="{escape(entry["image"])}: {escape(label)}"></td>' for a, label in zip(images, labels)
        )
        rows.append(f'<tr><th colspan="{len(images)}" class="name">{escape(entry["image"])}</th></tr>\n<tr>{cells}</tr>')
    return f'<table id="grid">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"


def _settings(summary: dict) -> list[list]:
    datasets = ", ".join(f"{name} ({d['images']} images)" for name, d in summary["datasets"].items())
    return [
        ["ground truth", f"{summary['ground_truth']} run on each photo (the paper's protocol)"],
        ["test images", f"{summary['images']}: {datasets}"],
        ["image size", f"long side at most {summary['size']} px"],
        ["line pixels", f"sketch value below {summary['line_threshold']}" if summary["line_threshold"] != "otsu" else "Otsu threshold per image"],
        ["F-score tolerance", f"{summary['tolerance']} of the image diagonal"],
        ["LPIPS", "computed (AlexNet)" if summary["lpips"] else "skipped (see notes)"],
        ["SD model of the student's teacher", summary.get("model", "")],
    ]


def render_html(result) -> str:
    """The whole page for an :class:`~diffsketch.evaluation.protocol.EvalResult`."""
    summary = result.summary
    notes = [*summary["notes"], *(f"Skipped image: {s}" for s in summary["skipped"])]
    columns = ["dataset", "image", "method", *_columns(result.means)]
    per_image = [[r["dataset"], r["image"], r["method"],
                  *(NO_LINES if k in EDGE_METRICS and not r.get("lines", 1) else f"{r[k]:.4f}" for k in columns[3:])]
                 for r in result.rows]  # fmt: skip
    parts = [
        *page_start("diffsketch evaluation", CSS),
        f"<h1>diffsketch evaluation: ground truth {escape(summary['ground_truth'])}</h1>",
        *([f'<p class="smoke" id="smoke-note"><strong>Pipeline check, not a result.</strong> {escape(SMOKE_NOTE)}</p>']
          if summary.get("model") == "tiny" else []),
        *([f'<p class="smoke" id="random-networks"><strong>Random loss networks.</strong> The student was made with '
           f'{escape(", ".join(random_networks(summary.get("student") or {})))}: their weights were missing, so those '
           "losses compared a random network's features and did not steer the style as the method intends. Provide the "
           "weights (losses.clip_model, torchvision's AlexNet file) and rerun for results.</p>"]
          if random_networks(summary.get("student") or {}) else []),
        "<h2>Settings</h2>",
        table_html("settings", ["setting", "value"], _settings(summary)),
        "<h2>Mean scores</h2>",
        ("<p>↑ higher is better, ↓ lower is better; the best value of each column is in bold (none where two methods tie). "
         "Chamfer and F-score average only the sketches with line pixels; <em>no lines</em>: the method drew none (not ranked).</p>"),
        means_table_html(result.means, summary["seconds_per_image"]),
    ]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul id=\"notes\">", *(f"<li>{escape(n)}</li>" for n in notes), "</ul>"]
    parts += [
        "<h2>Side by side</h2>",
        f'<div class="wide">{grid_html(result.grid, summary["methods"], summary["ground_truth"])}</div>',
        "<h2>Per image</h2>",
        "<details><summary>every (image, method) score</summary>",
        f'<div class="wide">{table_html("per-image", columns, per_image)}</div>',
        "</details>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def results_markdown(summary: dict, metrics: dict) -> str:
    """The README's results block: a Markdown table of the mean scores, with how it was made."""
    means = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    columns = _columns(means)
    best = {k: _best(means, k) for k in columns}
    lines = [
        f"Ground truth: `{summary['ground_truth']}` on {summary['images']} photos "
        f"({', '.join(summary['datasets'])}), long side ≤ {summary['size']} px, teacher model `{summary.get('model', '')}`.",
        "",
        "| method | " + " | ".join(_header(k) for k in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method, values in means.items():
        cells = [f"**{_value(values.get(k))}**" if values.get(k) is not None and values[k] == best[k] else _value(values.get(k)) for k in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if summary["notes"]:
        lines += ["", *(f"- {n}" for n in summary["notes"])]
    if summary.get("model") == "tiny":
        lines = [f"> {SMOKE_NOTE}", "", *lines]
    return "\n".join(lines)


def saved_results(reports: str | Path = "reports/eval") -> str:
    """The results block (:func:`results_markdown`) of the evaluation saved in ``reports``."""
    reports = Path(reports)
    for needed in (reports / "summary.json", reports / "metrics.json"):
        if not needed.is_file():
            raise EvalError(f"{needed} not found; run the evaluate stage first (`dvc repro evaluate`)")
    return results_markdown(json.loads((reports / "summary.json").read_text()), json.loads((reports / "metrics.json").read_text()))


def update_readme(readme: str | Path, reports: str | Path = "reports/eval") -> str:
    """Replace the text between the README's results markers with the table of ``reports``; returns it."""
    readme = Path(readme)
    block = saved_results(reports)
    if not readme.is_file():
        raise EvalError(f"{readme} not found; pass the README to update with --readme")
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise EvalError(f"{readme} needs exactly one {BEGIN} line followed by one {END} line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}", encoding="utf-8")
    return block


def write_report(result: EvalResult, out_dir: str | Path) -> Path:
    """The evaluation's data files and ``index.html`` into ``out_dir`` (replaced as a whole); returns the page."""
    return write_outputs(result, out_dir, {"index.html": render_html(result)})


def run_evaluate(params: Params, student_path: str | Path | None, out_dir: str | Path, progress: bool = True,
                 generator_path: str | Path | None = None) -> EvalResult:  # fmt: skip
    """:func:`diffsketch.evaluation.protocol.evaluate` (with the generator too, given ``generator_path``), then :func:`write_report` into ``out_dir``."""
    result = evaluate(params, student_path, progress=progress, generator_path=generator_path)
    write_report(result, out_dir)
    return result


def results_or_reason(reports: str | Path = "reports/eval") -> str:
    """The results block of ``reports``, or ``"Not evaluated: <why>."`` when there is none (for a style's model card)."""
    try:
        return saved_results(reports)
    except (EvalError, OSError, ValueError, KeyError, TypeError) as err:  # no evaluation yet, or a malformed saved one
        return f"Not evaluated: {err}."

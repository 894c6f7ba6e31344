"""Helpers for the self-contained HTML reports (analysis, evaluation, ablation).

A report is one page that needs nothing else to be read offline: inlined CSS, scripts and images
(data URIs), no request to the network. Every text put into a page goes through :func:`escape`.

Example:
    >>> from diffsketch.core.html import escape, table_html
    >>> escape('<b>"x"</b>')
    '&lt;b&gt;&quot;x&quot;&lt;/b&gt;'
    >>> print(table_html("t", ["k", "v"], [["a", 1]]))
    <table id="t">
    <thead><tr><th>k</th><th>v</th></tr></thead>
    <tbody>
    <tr><td>a</td><td>1</td></tr>
    </tbody>
    </table>
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

BASE_CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.4; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.4em; }
.side-by-side { display: flex; flex-wrap: wrap; gap: 1em; }
.side-by-side figure { flex: 1 1 480px; margin: 0; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
"""


def escape(value) -> str:
    """``value`` as text that is safe in HTML content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def table_html(table_id: str, header: list[str], rows: list[list]) -> str:
    """A plain ``<table id=...>`` with one header row; every cell escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{escape(table_id)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def safe_json(value) -> str:
    r"""JSON that can sit inside a ``<script>`` element: no ``<``, ``>`` or ``&`` (so no ``</script>``), any text inside.

    NumPy arrays and Plotly figures are encoded with Plotly's JSON encoder.

    Example:
        >>> safe_json({"a": "</script>"})
        '{"a":"\\u003c/script\\u003e"}'
    """
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(value, cls=PlotlyJSONEncoder, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def image_uri(image: np.ndarray, fmt: str = "PNG", **options) -> str:
    """An (H, W) or (H, W, 3) uint8 image as a base64 data URI (``fmt``: a PIL format, PNG or JPEG)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def page_start(title: str, css: str = "", head: str = "") -> list[str]:
    """The opening lines of a self-contained report page, up to ``<body>``.

    The head holds the title, :data:`BASE_CSS` plus ``css``, and ``head`` (an inlined script).
    """
    return ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{escape(title)}</title>",
            f"<style>{BASE_CSS}{css}</style>", *([head] if head else []), "</head>", "<body>"]  # fmt: skip

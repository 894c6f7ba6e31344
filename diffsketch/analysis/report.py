"""The HTML report of an analysis: one self-contained page to read the timestep choice.

``write_report(result, out_dir)`` writes ``out_dir/index.html``. The page needs nothing else to
be read offline and makes no network request: no external CSS, scripts or fonts.

With the tiny random model, a note at the top says the figures check the pipeline, not the method.
The page opens with the interactive PCA explorer (``explorer_html``): Plotly figures built here with
``plotly.graph_objects`` (2-D, and 3-D with 3+ components; one trace per class, so the legend
toggles classes, plus a trace of open circles on the chosen timesteps), Plotly's JavaScript inlined
once (``plotly.offline.get_plotlyjs``), the data as escaped JSON, and a small script for what Plotly
does not do itself: the hover card with the trajectory's thumbnail, and the DDIM-step range filter
(it restyles the traces from the full data). Above ``MAX_INTERACTIVE_POINTS`` points it draws the
first points of a seeded permutation, and says so on the page.

The static figures come last, for print: each a matplotlib PNG inlined as a ``data:image/png;base64,``
URI, in a ``<figure id="...">`` whose ``<figcaption>`` says how to read it:

- ``pca-class`` / ``pca-timestep``: PC1 vs PC2 of every (trajectory, timestep) point, coloured by
  prompt class and by timestep (the paper's Figure 2 (a) and (b)), side by side;
- ``pca-3d``: PC1-3 coloured by timestep (only when the analysis kept at least 3 components);
- ``explained-variance``: variance ratio of each principal component and the cumulative total;
- ``elbow`` / ``silhouette``: the k-means sweep, with the chosen k, the elbow and the best-silhouette k;
- ``cluster-histograms``: for each cluster, how many of its points come from each timestep;
- ``selection-distance-plot``: the selection distance (:func:`~diffsketch.analysis.timesteps.selection_distance`)
  of the representative, uniform and random selections against k, random with a band of one
  standard deviation, beside the ``selection-distance`` table of the three at the chosen k. Both are
  left out for an analysis saved without selection distances.

After the explorer, the summary: the ``timeline`` figure (:func:`timeline_svg`: the chosen
timesteps on the whole denoising trajectory, inline SVG whose labels are stacked so that none
overlaps another) and two tables, ``summary`` (model, store, sizes, parameters, scores) and
``timesteps`` (one row per chosen timestep). All text put into the page is HTML-escaped.

When the analysis carries feature maps (``analyze.feature_maps``, :mod:`diffsketch.analysis.feature_maps`),
``feature_maps_html`` draws, after the explorer, one ``<figure class="feature-map">`` per shown
trajectory: its final image at the left, then a grid of small PNGs (data URIs, drawn pixelated at
``FEATURE_MAP_CELL`` px), one row per UNet layer (name, channels, side, the variance its three
colours show) and one column per chosen timestep (denoising order), under a caption saying what
the colours mean.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is set)

from diffsketch.analysis.timesteps import RANDOM_DRAWS, AnalysisResult, uniform_timesteps  # noqa: E402
from diffsketch.core import escape, image_uri, page_start, safe_json, table_html  # noqa: E402

MAX_SCATTER_POINTS = 20_000  # scatter plots above this show a seeded random subsample
MAX_INTERACTIVE_POINTS = 6_000  # the interactive (SVG) scatter draws at most this many points, a seeded subsample
SUBSAMPLE_SEED = 0
T_START = 1000  # the timeline spans the whole DDPM schedule, t = 1000 (noise) down to 0 (image)

FEATURE_MAP_CELL = 64  # px: every feature map is drawn this size (pixelated), whatever its resolution
FINAL_IMAGE_SIDE = 128  # px: the trajectory's final image beside its feature maps (the size it is kept at)

CHOSEN_COLOR = "tab:orange"
BAR_COLOR = "tab:blue"

SMOKE_NOTE = (
    "The tiny random model (model.id: tiny) made this analysis: its figures check that the pipeline runs end to end, not "
    "the method (random weights have no denoising phases to find). Set a real Stable Diffusion model (diffsketch preset "
    "paper) for results."
)

STYLE = """
.smoke { background: #fff4d6; border: 1px solid #e0b84c; padding: 0.6em 0.9em; }
.wide { overflow-x: auto; max-width: 100%; }
#timeline svg { display: block; max-width: 100%; height: auto; }
.explorer { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; background: #fcfcfc; }
.explorer .plot { width: 100%; height: 560px; }
.explorer .controls { display: flex; flex-wrap: wrap; align-items: center; gap: 0.6em 1.2em; margin: 0.4em 0 0.8em; }
.explorer .controls label { white-space: nowrap; }
.explorer .controls input[type=range] { width: 220px; vertical-align: middle; }
.explorer .note { font-size: 0.9em; color: #444; margin: 0.3em 0; }
#hover-card { position: fixed; display: none; z-index: 10; pointer-events: none; background: #fff; border: 1px solid #999;
  border-radius: 6px; box-shadow: 0 3px 10px rgba(0, 0, 0, 0.25); padding: 8px; font-size: 0.85em; width: 330px; }
#hover-card.shown { display: flex; gap: 10px; align-items: flex-start; }
#hover-card img { flex: 0 0 96px; width: 96px; height: 96px; border: 1px solid #ddd; }
#hover-card .text { flex: 1 1 auto; min-width: 0; overflow-wrap: anywhere; }
#hover-card .prompt { font-weight: bold; margin-bottom: 4px; }
#hover-card .fields { color: #333; line-height: 1.5; }
#hover-card .fields b { font-weight: normal; color: #777; display: inline-block; width: 5.5em; }
.feature-maps .note { font-size: 0.9em; color: #444; margin: 0.4em 0; }
.feature-maps .figures { display: flex; flex-wrap: wrap; gap: 0 2em; }
.feature-maps .feature-map { margin: 1em 0 1.5em; max-width: 100%; overflow-x: auto; }
.feature-maps figcaption { font-size: 0.95em; color: #222; font-weight: bold; margin: 0 0 0.4em; }
table.fm-grid { border-collapse: collapse; margin: 0; }
table.fm-grid th, table.fm-grid td { border: none; background: none; padding: 2px 3px; text-align: center; vertical-align: middle; }
table.fm-grid thead th { font-weight: normal; font-size: 0.85em; line-height: 1.2; padding-bottom: 4px; }
table.fm-grid thead th small, table.fm-grid th.fm-layer small { color: #777; }
table.fm-grid th.fm-layer { text-align: right; font-weight: normal; font-size: 0.8em; line-height: 1.25; white-space: nowrap; padding-right: 8px; }
table.fm-grid td.fm-final { vertical-align: top; padding-right: 16px; }
table.fm-grid tr.fm-block > th, table.fm-grid tr.fm-block > td:not(.fm-final) { border-top: 1px solid #ccc; padding-top: 5px; }
img.fm-cell { display: block; width: var(--cell); height: var(--cell); image-rendering: pixelated; border: 1px solid #ddd; }
img.fm-final-image { display: block; width: var(--final); height: var(--final); border: 1px solid #ddd; }
@media print { .explorer, #hover-card { display: none !important; } }
"""


# --- helpers --------------------------------------------------------------------------------------


def _mpl_text(text: str) -> str:
    """Text for a matplotlib label: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    """The figure as a base64 PNG data URI; the figure is closed."""
    buffer = io.BytesIO()
    # No "Software" metadata: it would carry a URL into the PNG.
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_html(fig_id: str, src: str, alt: str, caption: str) -> str:
    return (
        f'<figure id="{escape(fig_id)}">\n'
        f'<img src="{src}" alt="{escape(alt)}">\n'
        f"<figcaption>{escape(caption)}</figcaption>\n"
        "</figure>"
    )


def _class_names(result: AnalysisResult) -> list[str]:
    """A name per class id that occurs (ids beyond ``classes`` get a generic name)."""
    n = max(len(result.classes), int(result.row_label.max()) + 1 if len(result.row_label) else 0)
    return [str(result.classes[i]) if i < len(result.classes) else f"class {i}" for i in range(n)]


def _scatter_rows(result: AnalysisResult) -> np.ndarray:
    """Rows to scatter, in a seeded random order (no class or timestep is always drawn on top)."""
    order = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(result.row_step))
    return order[:MAX_SCATTER_POINTS]


def _subsample_note(result: AnalysisResult, rows: np.ndarray) -> str:
    total = len(result.row_step)
    if len(rows) < total:
        return f" Showing a seeded random subsample of {len(rows):,} of the {total:,} points."
    return f" All {total:,} points are shown."


def _marker_size(n: int) -> float:
    return float(np.clip(3000 / max(n, 1), 1.0, 25.0))


# --- figures --------------------------------------------------------------------------------------


def fig_pca_timestep(result: AnalysisResult, rows: np.ndarray) -> str:
    fig, ax = plt.subplots(figsize=(6.2, 5))
    t = result.timesteps[result.row_step[rows]]
    points = ax.scatter(
        result.projection[rows, 0],
        result.projection[rows, 1],
        c=t,
        cmap="viridis",
        s=_marker_size(len(rows)),
        alpha=0.75,
        linewidths=0,
    )
    fig.colorbar(points, ax=ax, label="timestep t")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("(b) coloured by timestep")
    return _png(fig)


def fig_pca_class(result: AnalysisResult, rows: np.ndarray) -> str:
    names = _class_names(result)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.2, 5))
    labels = result.row_label[rows]
    size = _marker_size(len(rows))
    for class_id, name in enumerate(names):
        mine = rows[labels == class_id]
        if len(mine) == 0:
            continue
        color = cmap(class_id % cmap.N) if len(names) <= 20 else plt.get_cmap("hsv")(class_id / len(names))
        ax.scatter(
            result.projection[mine, 0],
            result.projection[mine, 1],
            color=color,
            s=size,
            alpha=0.75,
            linewidths=0,
            label=_mpl_text(name),
        )
    if names:
        ax.legend(
            title="class",
            fontsize="small",
            markerscale=max(1.0, 6 / math.sqrt(size)),
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            ncol=1 if len(names) <= 15 else 2,
        )
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("(a) coloured by prompt class")
    return _png(fig)


def fig_pca_3d(result: AnalysisResult, rows: np.ndarray) -> str:
    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(projection="3d")
    p = result.projection[rows]
    points = ax.scatter(
        p[:, 0],
        p[:, 1],
        p[:, 2],
        c=result.timesteps[result.row_step[rows]],
        cmap="viridis",
        s=_marker_size(len(rows)),
        alpha=0.75,
        linewidths=0,
    )
    fig.colorbar(points, ax=ax, label="timestep t", shrink=0.7, pad=0.1)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_zlabel("PC3")
    return _png(fig)


def fig_explained_variance(result: AnalysisResult) -> str:
    ratio = np.asarray(result.explained_variance_ratio, dtype=float) * 100
    components = np.arange(1, len(ratio) + 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(components, ratio, color=BAR_COLOR, label="per component")
    ax.plot(components, np.cumsum(ratio), color=CHOSEN_COLOR, marker="o", markersize=3, label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance (%)")
    ax.set_ylim(0, max(100.0, float(np.cumsum(ratio)[-1]) * 1.05) if len(ratio) else 100.0)
    ax.set_xticks(components if len(components) <= 30 else components[:: math.ceil(len(components) / 30)])
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _sweep_plot(result: AnalysisResult, values: np.ndarray, ylabel: str, mark_k: int, mark_label: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.k_values, values, marker="o", color=BAR_COLOR)
    ax.axvline(result.k, color="tab:red", linestyle="--", label=f"chosen k = {result.k}")
    at_mark = np.flatnonzero(result.k_values == mark_k)
    if len(at_mark):
        ax.plot(
            mark_k,
            values[at_mark[0]],
            marker="*",
            markersize=16,
            color=CHOSEN_COLOR,
            linestyle="none",
            label=f"{mark_label} = {mark_k}",
        )
    ax.set_xlabel("k (clusters)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(result.k_values)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def fig_elbow(result: AnalysisResult) -> str:
    knee_k = result.meta.get("knee_k")
    return _sweep_plot(result, result.inertia, "inertia (sum of squared distances)", knee_k, "elbow")


def fig_silhouette(result: AnalysisResult) -> str:
    k_auto = result.meta.get("k_auto")
    return _sweep_plot(result, result.silhouette, "silhouette score", k_auto, "best silhouette")


TIMELINE_WIDTH, TIMELINE_MARGIN, TIMELINE_FONT = 1000, 40, 13  # SVG user units (the figure scales to the page width)
LABEL_CHAR_WIDTH = 0.62 * TIMELINE_FONT  # an upper bound of a digit's or '=' width in a sans-serif font, per character
LABEL_GAP = 8
LANE_HEIGHT = 18


def label_lanes(xs: list[float], widths: list[float], gap: float = LABEL_GAP) -> list[int]:
    """A lane (0 = nearest the axis) per label centred at ``xs`` with ``widths``, so no two labels of a lane overlap.

    Labels are placed left to right, each in the lowest lane whose last label ends ``gap`` before it starts.

    Example:
        >>> label_lanes([10, 30, 50, 200], [40, 40, 40, 40])  # the first three overlap their neighbours
        [0, 1, 2, 0]
        >>> label_lanes([10, 60, 110], [40, 40, 40])  # 10 apart: one lane
        [0, 0, 0]
    """
    ends: list[float] = []
    lanes = [0] * len(xs)
    for i in sorted(range(len(xs)), key=lambda j: xs[j]):
        left = xs[i] - widths[i] / 2
        lane = next((n for n, end in enumerate(ends) if end + gap <= left), len(ends))
        if lane == len(ends):
            ends.append(0.0)
        ends[lane] = xs[i] + widths[i] / 2
        lanes[i] = lane
    return lanes


def timeline_svg(result: AnalysisResult) -> str:
    """The chosen timesteps on the whole denoising trajectory as inline SVG: ticks for every sampled timestep, a dot and a
    label ``t=…`` per chosen one, labels stacked in lanes (:func:`label_lanes`) so that none overlaps another."""
    timesteps = np.asarray(result.timesteps)
    chosen = sorted((int(t) for t in timesteps[result.selected]), reverse=True)
    span = max(T_START, float(timesteps.max()))
    inner = TIMELINE_WIDTH - 2 * TIMELINE_MARGIN

    def x(t: float) -> float:
        return TIMELINE_MARGIN + (span - t) / span * inner

    texts = [f"t={t}" for t in chosen]
    lanes = label_lanes([x(t) for t in chosen], [len(text) * LABEL_CHAR_WIDTH for text in texts])
    top = 10 + (max(lanes, default=0) + 1) * LANE_HEIGHT
    axis = top + 14
    height = axis + 44
    parts = [(f'<svg class="timeline" viewBox="0 0 {TIMELINE_WIDTH} {height}" width="100%" role="img" '
              f'aria-label="chosen timesteps on the denoising timeline" font-family="sans-serif" font-size="{TIMELINE_FONT}">'),
             f'<line x1="{TIMELINE_MARGIN}" y1="{axis}" x2="{TIMELINE_WIDTH - TIMELINE_MARGIN}" y2="{axis}" stroke="#999"/>']  # fmt: skip
    parts += [f'<line x1="{x(t):.1f}" y1="{axis - 5}" x2="{x(t):.1f}" y2="{axis + 5}" stroke="#555"/>' for t in timesteps]
    for t, text, lane in zip(chosen, texts, lanes):
        y = top - lane * LANE_HEIGHT
        parts += [f'<line x1="{x(t):.1f}" y1="{y + 3}" x2="{x(t):.1f}" y2="{axis}" stroke="#bbb"/>',
                  f'<circle cx="{x(t):.1f}" cy="{axis}" r="6" fill="#ff7f0e"/>',
                  f'<text class="t-label" x="{x(t):.1f}" y="{y}" text-anchor="middle" data-t="{t}">{escape(text)}</text>']  # fmt: skip
    parts += [f'<text x="{TIMELINE_MARGIN}" y="{axis + 22}" text-anchor="middle" fill="#555">{int(span)}</text>',
              f'<text x="{TIMELINE_WIDTH - TIMELINE_MARGIN}" y="{axis + 22}" text-anchor="middle" fill="#555">0</text>',
              (f'<text x="{TIMELINE_WIDTH / 2}" y="{axis + 38}" text-anchor="middle" fill="#333">timestep t '
               "(denoising runs left to right: noise → image)</text>"), "</svg>"]  # fmt: skip
    return "".join(parts)


def timeline_html(result: AnalysisResult) -> str:
    """The ``timeline`` figure: :func:`timeline_svg` with its caption."""
    return (f'<figure id="timeline">\n{timeline_svg(result)}\n<figcaption>The whole denoising trajectory from t = {T_START} '
            f"(pure noise, left) to t = 0 (the image, right). Small ticks are the {len(result.timesteps)} sampled timesteps; "
            f"the orange dots, labelled with t, are the {len(result.selected)} chosen ones.</figcaption>\n</figure>")  # fmt: skip


def fig_cluster_histograms(result: AnalysisResult) -> str:
    timesteps = np.asarray(result.timesteps)
    n_clusters = int(result.k)
    cols = min(n_clusters, 4)
    rows = math.ceil(n_clusters / cols)
    gaps = np.diff(np.sort(timesteps))
    width = 0.8 * float(gaps.min()) if len(gaps) and gaps.min() > 0 else 8.0
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), sharex=True, squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= n_clusters:
            ax.set_visible(False)
            continue
        in_cluster = result.row_cluster == c
        counts = np.bincount(result.row_step[in_cluster], minlength=len(timesteps))[: len(timesteps)]
        picks = result.selected[result.selected_cluster == c]
        colors = np.full(len(timesteps), BAR_COLOR, dtype=object)
        colors[picks] = CHOSEN_COLOR
        ax.bar(timesteps, counts, width=width, color=list(colors))
        title = f"cluster {c}: {int(in_cluster.sum())} pts"
        if len(picks):
            title += ", t=" + ",".join(str(int(timesteps[p])) for p in picks)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes.flat[0].set_xlim(float(timesteps.max()) + width, float(timesteps.min()) - width)
    fig.supxlabel("timestep t (high t = start of denoising on the left)", fontsize=9)
    fig.supylabel("points", fontsize=9)
    fig.tight_layout()
    return _png(fig)


SELECTION_COLORS = {"representative": CHOSEN_COLOR, "uniform": "tab:green", "random": "tab:gray"}


def fig_selection_distance(result: AnalysisResult) -> str:
    """The three selections' distance against k; random with a band of one standard deviation."""
    rows = result.selection_distance_by_k()
    k = np.array([r["k"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in SELECTION_COLORS.items():
        values = np.array([r[name] for r in rows])
        ax.plot(k, values, marker="o", color=color, label=name)
        if name == "random":
            std = np.array([r["random_std"] for r in rows])
            ax.fill_between(k, values - std, values + std, color=color, alpha=0.2, label="random ± 1 std")
    ax.axvline(result.k, color="tab:red", linestyle="--", label=f"chosen k = {result.k}")
    ax.set_xlabel("k (selected timesteps)")
    ax.set_ylabel("mean distance to the nearest selected timestep")
    ax.set_xticks(k)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def selection_distance_table(result: AnalysisResult) -> str:
    """The three selections at the chosen k: how each is made and its selection distance."""
    d = result.selection_distances()
    steps, k = len(result.timesteps), int(result.k)
    uniform = ", ".join(str(int(result.timesteps[i])) for i in uniform_timesteps(steps, k))
    rows = [
        ["representative", f"one timestep per k-means cluster (k = {k})", f"{d['representative']:.4f}", "—"],
        ["uniform", f"k equally spaced DDIM indices, both ends included: t = {uniform}", f"{d['uniform']:.4f}", "—"],
        ["random", f"k distinct timesteps at random, mean of {RANDOM_DRAWS} seeded draws (every k-subset when fewer)",
         f"{d['random']:.4f}", f"{d['random_std']:.4f}"],
    ]  # fmt: skip
    return table_html("selection-distance", ["selection", "how it is made", "mean distance", "std"], rows)


def selection_distance_html(result: AnalysisResult) -> str:
    """The selection-distance section (empty for an analysis saved without it)."""
    if result.selection_distances() is None:
        return ""
    parts = [
        "<h2>Selection distance</h2>",
        "<p>How well k timesteps summarise the trajectories: for every trajectory and timestep, the Euclidean "
        "distance in the PCA space to the nearest selected timestep of the same trajectory, averaged over all of "
        "them (0 for a selected timestep; lower is better).</p>",
        selection_distance_table(result),
    ]
    if len(result.selection_k):
        parts.append(_figure_html(
            "selection-distance-plot",
            fig_selection_distance(result),
            "selection distance against k for the representative, uniform and random selections",
            "The selection distance of each kind of selection for every k of the sweep: representative (one timestep "
            "per k-means cluster), uniform (equally spaced, both ends of the trajectory included) and random (mean of "
            f"{RANDOM_DRAWS} seeded draws, the band one standard deviation). The dashed line marks the chosen k. A "
            "representative curve below the others means the clustering picks timesteps that cover the trajectories "
            "better than spacing them evenly or at random.",
        ))  # fmt: skip
    return "\n".join(parts)


# --- tables ---------------------------------------------------------------------------------------


def _chosen_rows(result: AnalysisResult) -> list[list]:
    rows = []
    for index, cluster, size in zip(result.selected, result.selected_cluster, result.cluster_sizes):
        rows.append([int(result.timesteps[index]), int(index), int(cluster) if cluster >= 0 else "—", int(size)])
    return rows


def summary_table(result: AnalysisResult) -> str:
    meta = result.meta
    k_auto, knee_k = meta.get("k_auto", "—"), meta.get("knee_k", "—")
    names = _class_names(result)
    class_counts = np.bincount(result.row_label, minlength=len(names)) if len(result.row_label) else []
    chosen = ", ".join(
        f"t={t} (DDIM index {i}, {size} points)" for t, i, _cluster, size in _chosen_rows(result)
    )
    rows = [
        ["model", meta.get("model", "—")],
        ["store", meta.get("store", "—")],
        ["trajectories", meta.get("trajectories", "—")],
        ["points (trajectory × timestep)", f"{len(result.row_step):,}"],
        ["denoising steps", len(result.timesteps)],
        ["classes", ", ".join(f"{n} ({int(c)} points)" for n, c in zip(names, class_counts)) or "—"],
        ["feature dim", meta.get("feature_dim", "—")],
        ["layers", ", ".join(map(str, meta.get("layers", []))) or "—"],
        ["CFG half", meta.get("half", "—")],
        ["PCA dims", result.projection.shape[1]],
        ["explained variance (total)", f"{float(np.sum(result.explained_variance_ratio)):.1%}"],
        ["strategy", meta.get("strategy", "—")],
        ["layer weighting", meta.get("layer_weighting", "—")],
        ["chosen k", f"{result.k} (best silhouette k_auto = {k_auto}, elbow knee_k = {knee_k})"],
        ["silhouette at chosen k", f"{result.metrics()['silhouette']:.3f}"],
        ["chosen timesteps", chosen],
    ]
    return table_html("summary", ["", "value"], rows)


def timesteps_table(result: AnalysisResult) -> str:
    return table_html("timesteps", ["timestep", "DDIM index", "cluster", "cluster size"], _chosen_rows(result))


# --- page -----------------------------------------------------------------------------------------


def _figures(result: AnalysisResult) -> str:
    rows = _scatter_rows(result)
    note = _subsample_note(result, rows)
    parts = [
        "<h2>PCA of the features</h2>",
        '<div class="side-by-side">',
        _figure_html(
            "pca-class",
            fig_pca_class(result, rows),
            "PCA scatter coloured by prompt class",
            "(a) Each point is one (trajectory, timestep) feature vector projected on the first two principal "
            "components, coloured by the class of the trajectory's prompt. Classes that mix show the features "
            "depend little on the prompt; separate groups show class-specific features." + note,
        ),
        _figure_html(
            "pca-timestep",
            fig_pca_timestep(result, rows),
            "PCA scatter coloured by timestep",
            "(b) The same points coloured by timestep (colour bar: t; yellow = high t, start of denoising; "
            "purple = low t, the end). A smooth colour gradient means the features move steadily along the "
            "denoising trajectory; bands of one colour are phases the timestep choice should cover." + note,
        ),
        "</div>",
    ]
    if result.projection.shape[1] >= 3:
        parts.append(
            _figure_html(
                "pca-3d",
                fig_pca_3d(result, rows),
                "3-D PCA scatter coloured by timestep",
                "The first three principal components, coloured by timestep as in (b). The third axis can separate "
                "timesteps that overlap in the 2-D view." + note,
            )
        )
    parts += [
        "<h2>Choosing k</h2>",
        _figure_html(
            "explained-variance",
            fig_explained_variance(result),
            "explained variance per principal component",
            "Bars: the share of the feature variance each principal component explains; line: the cumulative "
            f"share. The clustering runs on these {result.projection.shape[1]} components, which keep "
            f"{float(np.sum(result.explained_variance_ratio)):.1%} of the variance.",
        ),
        '<div class="side-by-side">',
        _figure_html(
            "elbow",
            fig_elbow(result),
            "k-means inertia against k",
            "k-means inertia (sum of squared distances of the points to their cluster centre) for each k of the "
            "sweep; lower is tighter. The dashed line marks the chosen k, the star the elbow (knee_k = "
            f"{result.meta.get('knee_k', '—')}): the k beyond which more clusters stop paying off.",
        ),
        _figure_html(
            "silhouette",
            fig_silhouette(result),
            "silhouette score against k",
            "Mean silhouette score (from −1 to 1; higher means better separated clusters, computed on a seeded "
            "sample of points) for each k. The dashed line marks the chosen k, the star the best score (k_auto = "
            f"{result.meta.get('k_auto', '—')}), which `k: auto` would choose.",
        ),
        "</div>",
        "<h2>The chosen timesteps</h2>",
        _figure_html(
            "cluster-histograms",
            fig_cluster_histograms(result),
            "per-cluster histograms of timesteps",
            f"One panel per cluster of the k = {result.k} clustering: bar height is how many of the cluster's "
            "points come from each timestep (high t on the left, as on the timeline). The orange bar is the "
            "timestep chosen to represent the cluster; a cluster concentrated on a few neighbouring timesteps "
            "is a distinct denoising phase." + _no_cluster_note(result),
        ),
        selection_distance_html(result),
    ]
    return "\n".join(parts)


def _no_cluster_note(result: AnalysisResult) -> str:
    if np.any(result.selected_cluster >= 0):
        return ""
    strategy = result.meta.get("strategy")
    return f" Strategy '{strategy}' picks timesteps without the clusters, so no bar is highlighted."


# --- feature maps ---------------------------------------------------------------------------------


def _feature_map_caption(result: AnalysisResult) -> list[str]:
    """The section's explanation: what is shown, then what the colours mean (one paragraph each)."""
    fm = result.feature_maps
    seconds = result.meta.get("feature_map_seconds")
    cost = f" in {seconds:.1f} s" if seconds is not None else ""
    return [
        f"What the chosen timesteps encode. The first {len(fm.trajectory_ids)} trajectories of the store were sampled "
        f"again{cost} (from their stored prompt, initial noise and seed), capturing the UNet features at full resolution "
        "at the chosen timesteps. Each grid has one row per UNet up-block layer (its name, channels and side) and one "
        "column per chosen timestep in denoising order (high t, early, on the left), beside the trajectory's final image.",
        "Colours: a PCA over each layer's channels, fitted on all of its pixels in these trajectories at these timesteps, "
        "shows its first three principal components as red, green and blue (each scaled from its 1st to its 99th "
        "percentile). Within a row a colour means the same feature direction at every timestep and in every trajectory, "
        "so a row shows how the layer's features change while denoising; colours do not compare between rows. Regions of "
        "one colour are pixels the layer encodes alike: maps that follow the objects of the final image mean that "
        "timestep already encodes its layout. The percentage under each layer is the share of its channel variance the "
        "three colours show.",
    ]


def _feature_map_grid(fm, slot: int) -> str:
    """One trajectory's table: its final image (spanning every row), then one row per layer, one column per timestep."""
    head = "".join(f"<th>t = {int(t)}<br><small>step {int(s)}</small></th>" for t, s in zip(fm.timesteps, fm.steps))
    rows, previous_size = [], None
    for spec, maps, explained in zip(fm.layers, fm.maps, fm.explained):
        cells = "".join(
            f'<td><img class="fm-cell" data-layer="{escape(spec.name)}" data-timestep="{int(t)}" src="{image_uri(maps[slot, j])}" '
            f'alt="{escape(spec.name)} at t = {int(t)}"></td>'
            for j, t in enumerate(fm.timesteps)
        )
        final = ""
        if not rows:
            final = (f'<td class="fm-final" rowspan="{len(fm.layers)}"><img class="fm-final-image" '
                     f'src="{image_uri(fm.finals[slot])}" alt="final image of trajectory {int(fm.trajectory_ids[slot])}"></td>')  # fmt: skip
        block = ' class="fm-block"' if previous_size is not None and spec.size != previous_size else ""
        label = (f'<th class="fm-layer">{escape(spec.name)}<br><small>{spec.channels} ch · {spec.size}×{spec.size}'
                 f"<br>RGB: {float(np.sum(explained)):.0%} of variance</small></th>")  # fmt: skip
        rows.append(f"<tr{block}>{final}{label}{cells}</tr>")
        previous_size = spec.size
    return (
        f'<table class="fm-grid"><thead><tr><th>final image</th><th>layer</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def feature_maps_html(result: AnalysisResult) -> str:
    """The feature-map section (empty when the analysis has none): a figure per shown trajectory."""
    fm = result.feature_maps
    if fm is None:
        return ""
    parts = [
        f'<section id="feature-maps" class="feature-maps" style="--cell: {FEATURE_MAP_CELL}px; --final: {FINAL_IMAGE_SIDE}px">',
        "<h2>Feature maps at the chosen timesteps</h2>",
        *(f'<p class="note">{escape(text)}</p>' for text in _feature_map_caption(result)),
        '<div class="figures">',
    ]
    for slot, (trajectory, prompt) in enumerate(zip(fm.trajectory_ids, fm.prompts)):
        parts += [
            f'<figure class="feature-map" id="feature-map-{int(trajectory)}" data-trajectory="{int(trajectory)}">',
            f"<figcaption>Trajectory {int(trajectory)}: <q>{escape(prompt)}</q></figcaption>",
            _feature_map_grid(fm, slot),
            "</figure>",
        ]
    parts.append("</div></section>")
    return "\n".join(parts)


# --- the interactive explorer (Plotly) -------------------------------------------------------------


def _interactive_rows(result: AnalysisResult, limit: int) -> np.ndarray:
    """The points the explorer draws: all of them, or the first ``limit`` of the seeded permutation (deterministic)."""
    order = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(result.row_step))
    return np.sort(order[:limit])


def _thumbnail_uris(result: AnalysisResult) -> list[str]:
    return [image_uri(thumb, "JPEG", quality=85) for thumb in result.thumbnails]


def explorer_figures(result: AnalysisResult, rows: np.ndarray) -> dict:
    """The Plotly figures (2-D and, with 3+ components, 3-D) as plain dicts: one trace per class, plus the chosen timesteps.

    Each point's ``customdata`` is ``[row, trajectory slot, DDIM index]``: the row of the analysis, the trajectory's
    position in ``result.trajectory_ids`` (-1 without previews) and the step; the page looks up the text and thumbnail.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    names = _class_names(result)
    slot_of = {int(t): i for i, t in enumerate(result.trajectory_ids)}
    slots = np.array([slot_of.get(int(t), -1) for t in result.row_trajectory[rows]], dtype=np.int64)
    custom = np.stack([rows, slots, result.row_step[rows]], axis=1)
    chosen = np.isin(result.row_step[rows], result.selected)
    three = result.projection.shape[1] >= 3
    figures = {}
    for dims in (2, 3) if three else (2,):
        fig = go.Figure()
        trace = go.Scatter3d if dims == 3 else go.Scatter
        # plain lists, not numpy: plotly would encode arrays as typed-array blobs the timestep filter cannot slice
        xyz = lambda mask: dict(zip("xyz", (result.projection[rows[mask], d].tolist() for d in range(dims))))  # noqa: E731
        for label, name in enumerate(names):
            mask = result.row_label[rows] == label
            if not mask.any():
                continue
            color = qualitative.Plotly[label % len(qualitative.Plotly)]
            fig.add_trace(trace(**xyz(mask), mode="markers", name=name, customdata=custom[mask].tolist(), hoverinfo="none",
                                marker=dict(size=6 if dims == 2 else 3, color=color, opacity=0.75)))  # fmt: skip
        fig.add_trace(trace(**xyz(chosen), mode="markers", name="chosen timesteps", customdata=custom[chosen].tolist(),
                            hoverinfo="none", marker=dict(size=11 if dims == 2 else 5, symbol="circle-open",
                                                          color="#111", line=dict(width=2, color="#111"))))  # fmt: skip
        axes = dict(xaxis_title="PC1", yaxis_title="PC2")
        layout = dict(margin=dict(l=50, r=10, t=30, b=45), legend=dict(title=dict(text="class (click to hide)")),
                      hovermode="closest", template="plotly_white", uirevision="keep")  # fmt: skip
        if dims == 3:
            layout["scene"] = dict(xaxis_title="PC1", yaxis_title="PC2", zaxis_title="PC3")
        else:
            layout.update(axes, dragmode="zoom")
        fig.update_layout(**layout)
        figures[f"{dims}d"] = fig.to_plotly_json()
    return figures


EXPLORER_SCRIPT = r"""
(function () {
  var D = JSON.parse(document.getElementById("explorer-data").textContent);
  var card = document.getElementById("hover-card"), cardImg = card.querySelector("img");
  var config = {responsive: true, displaylogo: false, scrollZoom: true};
  var plots = [];
  function show(ev) {
    var p = ev.points[0], row = p.customdata[0], slot = p.customdata[1], step = p.customdata[2];
    var thumb = slot >= 0 ? D.thumbnails[slot] : null;
    cardImg.style.display = thumb ? "" : "none";
    if (thumb) cardImg.src = thumb;
    card.querySelector(".prompt").textContent = slot >= 0 && D.prompts[slot] ? D.prompts[slot] : "(prompt not recorded)";
    card.querySelector(".class").textContent = D.classes[D.labels[row]];
    card.querySelector(".trajectory").textContent = D.trajectories[row];
    card.querySelector(".timestep").textContent = D.timesteps[step] + " (DDIM index " + step + ")" +
      (D.chosen.indexOf(step) >= 0 ? ", chosen" : "");
    var e = ev.event || {}, x = (e.clientX || 0) + 16, y = (e.clientY || 0) + 16;
    card.classList.add("shown");
    x = Math.min(x, window.innerWidth - card.offsetWidth - 8); y = Math.min(y, window.innerHeight - card.offsetHeight - 8);
    card.style.left = Math.max(x, 4) + "px"; card.style.top = Math.max(y, 4) + "px";
  }
  function hide() { card.classList.remove("shown"); }
  Object.keys(D.figures).forEach(function (key) {
    var el = document.getElementById("explorer-" + key), fig = D.figures[key];
    if (!el) return;
    // keep every trace's full data; the timestep filter restyles from it
    var full = fig.data.map(function (t) { return {x: t.x, y: t.y, z: t.z, customdata: t.customdata}; });
    Plotly.newPlot(el, fig.data, fig.layout, config).then(function () {
      el.on("plotly_hover", show); el.on("plotly_unhover", hide);
    });
    plots.push({el: el, full: full});
  });
  var lo = document.getElementById("t-min"), hi = document.getElementById("t-max"), out = document.getElementById("t-range");
  function filter() {
    var a = Math.min(+lo.value, +hi.value), b = Math.max(+lo.value, +hi.value);
    out.textContent = "t = " + D.timesteps[a] + " down to t = " + D.timesteps[b] + " (DDIM indices " + a + "–" + b + ")";
    plots.forEach(function (p) {
      var update = {x: [], y: [], z: [], customdata: []}, traces = [];
      p.full.forEach(function (t, i) {
        var keep = [];
        for (var j = 0; j < t.customdata.length; j++) { var s = t.customdata[j][2]; if (s >= a && s <= b) keep.push(j); }
        ["x", "y", "z", "customdata"].forEach(function (k) {
          if (t[k] !== undefined) update[k].push(keep.map(function (j) { return t[k][j]; }));
        });
        traces.push(i);
      });
      if (!update.z.length) delete update.z;
      Plotly.restyle(p.el, update, traces);
    });
    document.body.dataset.filtered = a + "-" + b;
  }
  lo.addEventListener("input", filter); hi.addEventListener("input", filter);
  filter();
})();
"""


def explorer_html(result: AnalysisResult, max_points: int | None = None) -> str:
    """The interactive section: Plotly's JavaScript inlined, the data as JSON, and the hover card; no network request."""
    from plotly.offline import get_plotlyjs

    limit = MAX_INTERACTIVE_POINTS if max_points is None else max_points
    rows = _interactive_rows(result, limit)
    total, steps = len(result.row_step), len(result.timesteps)
    figures = explorer_figures(result, rows)
    data = dict(
        figures=figures,
        classes=_class_names(result),
        labels=result.row_label.tolist(),
        trajectories=result.row_trajectory.tolist(),
        timesteps=[int(t) for t in result.timesteps],
        chosen=[int(i) for i in result.selected],
        prompts=[str(p) for p in result.prompts],
        thumbnails=_thumbnail_uris(result),
    )
    if len(rows) < total:
        drawn = (f"Drawing {len(rows):,} of the {total:,} points: above {limit:,} points the explorer thins them to a "
                 f"seeded random subsample (seed {SUBSAMPLE_SEED}, the same points on every run); the static figures "
                 f"below draw up to {MAX_SCATTER_POINTS:,}.")  # fmt: skip
    else:
        drawn = f"All {total:,} points are drawn."
    previews = "" if len(result.thumbnails) else (" This analysis was saved without trajectory previews, so the hover "
                                                   "card has no prompt or thumbnail; rerun `diffsketch analyze`.")  # fmt: skip
    plots = ['<h3>PC1 × PC2</h3>', '<div id="explorer-2d" class="plot"></div>']
    if "3d" in figures:
        plots += ['<h3>PC1 × PC2 × PC3</h3>', '<div id="explorer-3d" class="plot"></div>']
    return "\n".join([
        '<section id="explorer" class="explorer">',
        "<h2>Explore the PCA</h2>",
        f'<p class="note" id="explorer-note">Each point is one (trajectory, timestep) feature vector. Hover a point for '
        f"its prompt, class, trajectory, timestep and the trajectory's final image; drag to zoom (2-D) or rotate (3-D), "
        f"scroll to zoom, double-click to reset; click a class in the legend to hide or show it (double-click: only "
        f"that class). Open black circles mark the points of the chosen timesteps. {escape(drawn)}{escape(previews)}</p>",
        '<div class="controls">',
        f'<label>first step <input type="range" id="t-min" min="0" max="{steps - 1}" step="1" value="0"></label>',
        f'<label>last step <input type="range" id="t-max" min="0" max="{steps - 1}" step="1" value="{steps - 1}"></label>',
        '<span id="t-range"></span>',
        "</div>",
        *plots,
        "</section>",
        '<div id="hover-card"><img alt="final image of the trajectory"><div class="text"><div class="prompt"></div>'
        '<div class="fields"><b>class</b> <span class="class"></span><br><b>trajectory</b> <span class="trajectory"></span>'
        '<br><b>t</b> <span class="timestep"></span></div></div></div>',
        f'<script id="explorer-data" type="application/json">{safe_json(data)}</script>',
        f"<script>{get_plotlyjs()}</script>",
        f"<script>{EXPLORER_SCRIPT}</script>",
    ])  # fmt: skip


def render_html(result: AnalysisResult, max_points: int | None = None) -> str:
    """The whole report page as a string."""
    model = result.meta.get("model", "unknown model")
    chosen = ", ".join(str(int(result.timesteps[i])) for i in result.selected)
    return "\n".join(
        [
            *page_start(f"diffsketch analysis: {model}", STYLE),
            f"<h1>diffsketch analysis: {escape(model)}</h1>",
            *([f'<p class="smoke" id="smoke-note"><strong>Pipeline check, not a result.</strong> {escape(SMOKE_NOTE)}</p>']
              if model == "tiny" else []),
            f"<p>Chosen timesteps (k = {escape(result.k)}, strategy {escape(result.meta.get('strategy', '—'))}): "
            f"<strong>{escape(chosen)}</strong></p>",
            explorer_html(result, max_points),
            "<h2>Summary</h2>",
            timeline_html(result),
            '<div class="wide">',
            summary_table(result),
            "</div>",
            timesteps_table(result),
            feature_maps_html(result),
            "<h2>Static figures (for print)</h2>",
            _figures(result),
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(result: AnalysisResult, out_dir: str | Path, max_points: int | None = None) -> Path:
    """Write ``out_dir/index.html`` (creating ``out_dir``) and return its path; ``max_points`` thins the explorer."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_html(result, max_points), encoding="utf-8")
    return path

"""Line controls: stroke width, hysteresis binarisation, speck removal, ink and paper colours.

The same :class:`LineStyle` is applied by the Python API, ``diffsketch extract`` and the web page,
always to the network's output, a (H, W) sketch in [0, 1] with 1 = paper, in this order:

1. ``threshold`` (one cut: below = ink) or ``binarize`` (hysteresis, two cuts ``(low, high)``: a
   pixel below ``low`` is ink, and so is a pixel below ``high`` joined to such ink by pixels below
   ``high`` that share a side; ``skimage.filters.apply_hysteresis_threshold``). Both give black and
   white lines; without them the sketch keeps its grey values.
2. ``min_speck``: connected ink (8-connected, values below ``threshold``, below ``high`` with
   ``binarize``, else below :data:`SPECK_LEVEL`) covering fewer than ``min_speck`` pixels becomes
   paper, with the grey rim around it (``skimage.morphology``).
3. ``line_width``: 1 keeps the strokes as drawn; above 1 the ink is spread by a disc of that
   diameter (a grey erosion of the sketch: strokes grow by ``line_width - 1`` pixels); below 1 the
   sketch is blended (fully at 0.25) towards its grey dilation by a 3x3 cross, which takes a pixel
   off each side of a stroke, except on the stroke's middle line (its skeleton), so thin strokes
   thin but never vanish. Fractional widths above 1 blend the two nearest whole ones.
4. ``line_color`` and ``background`` colour the result: each pixel is the ink colour mixed with
   the paper colour by the sketch value; ``background="transparent"`` gives RGBA with the ink
   colour and alpha = 1 - sketch. Black on white stays one grey channel (mode ``L``).

Colours are anything ``PIL.ImageColor`` reads: a name (``navy``), ``#RRGGBB`` or ``rgb(r, g, b)``.

Example:
    >>> import numpy as np
    >>> sketch = np.ones((7, 7), np.float32)
    >>> sketch[3, 1:6] = 0.0                      # a one-pixel line
    >>> wide = apply_lines(sketch, LineStyle(line_width=3))
    >>> int((wide < 0.5).sum(axis=0)[3])          # three pixels across
    3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor

from diffsketch.core import DiffsketchError

SPECK_LEVEL = 0.5  # on grey sketches, specks are the connected pixels darker than this
MAX_LINE_WIDTH = 16.0
TRANSPARENT = "transparent"
ROWS = 256  # rows converted to 8-bit at a time


class LineStyleError(DiffsketchError, ValueError):
    """A line control is out of range or not a colour; the message names the option and the fix."""


def parse_colour(value: str, option: str = "--line-color") -> tuple[int, int, int]:
    """An RGB triple from a colour name, ``#RRGGBB`` or ``rgb(r, g, b)``.

    >>> parse_colour("#ff8000")
    (255, 128, 0)
    """
    try:
        rgb = ImageColor.getrgb(str(value).strip())
    except ValueError:
        raise LineStyleError(f"{option} {value!r} is not a colour; give a name (black), #RRGGBB or rgb(r, g, b)") from None
    return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]


def parse_binarize(value: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """``"LOW,HIGH"`` (or a pair) as the hysteresis thresholds, checked: 0 <= LOW <= HIGH <= 1.

    >>> parse_binarize("0.3,0.6")
    (0.3, 0.6)
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = value.replace(":", ",").split(",")
        try:
            pair = tuple(float(p) for p in parts)
        except ValueError:
            pair = ()
    else:
        pair = tuple(float(p) for p in value)
    if len(pair) != 2 or not 0.0 <= pair[0] <= pair[1] <= 1.0:
        raise LineStyleError(
            f"--binarize {value!r} must be two thresholds LOW,HIGH with 0 <= LOW <= HIGH <= 1 (for example 0.3,0.6)"
        )
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class LineStyle:
    """How a sketch's lines are drawn (see the module docstring); the defaults change nothing.

    Attributes:
        line_width: stroke width factor, 0.25 to 16 (1: as drawn).
        threshold: one cut in [0, 1]: below = ink (None: grey values).
        binarize: hysteresis thresholds ``(low, high)`` (None: off); not with ``threshold``.
        min_speck: ink specks smaller than this many pixels are removed (0: off).
        line_color: the ink colour.
        background: the paper colour, or ``transparent``; None: white (PNG), no paper (SVG).
    """

    line_width: float = 1.0
    threshold: float | None = None
    binarize: tuple[float, float] | None = None
    min_speck: int = 0
    line_color: str = "black"
    background: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.line_width, (int, float)) and 0.25 <= self.line_width <= MAX_LINE_WIDTH):
            raise LineStyleError(f"--line-width {self.line_width} must be between 0.25 and {MAX_LINE_WIDTH:g}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise LineStyleError(f"--threshold {self.threshold} must be between 0 and 1")
        object.__setattr__(self, "binarize", parse_binarize(self.binarize))
        if self.binarize is not None and self.threshold is not None:
            raise LineStyleError("--threshold and --binarize both binarise the lines; give one of them")
        if int(self.min_speck) != self.min_speck or self.min_speck < 0:
            raise LineStyleError(f"--min-speck {self.min_speck} must be a whole number of pixels, 0 or more")
        parse_colour(self.line_color, "--line-color")
        if self.background is not None and self.background != TRANSPARENT:
            parse_colour(self.background, "--background")

    @property
    def transparent(self) -> bool:
        """True when the paper is transparent (RGBA output)."""
        return self.background == TRANSPARENT

    @property
    def ink_level(self) -> float:
        """Values below this count as ink for specks and SVG tracing."""
        if self.binarize is not None:
            return self.binarize[1]
        return SPECK_LEVEL if self.threshold is None else self.threshold


def _disc(diameter: int) -> np.ndarray:
    """A ``diameter`` x ``diameter`` disc footprint (every cell whose centre is within diameter / 2)."""
    centre = (diameter - 1) / 2
    y, x = np.mgrid[:diameter, :diameter]
    return (y - centre) ** 2 + (x - centre) ** 2 <= (diameter / 2) ** 2 + 1e-9


def _widen(values: np.ndarray, diameter: int) -> np.ndarray:
    from scipy import ndimage

    if diameter <= 1:
        return values
    return ndimage.grey_erosion(values, footprint=_disc(diameter), mode="nearest")


def _line_width(values: np.ndarray, width: float) -> np.ndarray:
    if width == 1.0:
        return values
    if width < 1.0:
        from scipy import ndimage
        from skimage.morphology import skeletonize

        thin = ndimage.grey_dilation(values, footprint=ndimage.generate_binary_structure(2, 1), mode="nearest")
        middle = skeletonize(values < SPECK_LEVEL)  # a stroke's middle line stays: thin strokes thin, never vanish
        thin[middle] = values[middle]
        return values + (thin - values) * np.float32((1.0 - width) / 0.75)
    low, high = math.floor(width), math.ceil(width)
    narrow = _widen(values, low)
    if high == low:
        return narrow
    return narrow + (_widen(values, high) - narrow) * np.float32(width - low)


def _remove_specks(values: np.ndarray, ink: np.ndarray, area: int) -> np.ndarray:
    from scipy import ndimage

    labels, _ = ndimage.label(ink, structure=np.ones((3, 3), bool))
    small = np.bincount(labels.ravel()) < area
    small[0] = False  # the paper
    removed = small[labels]
    kept = ink & ~removed
    if not removed.any():
        return values
    # the grey rim of a removed speck goes with it, unless it belongs to a kept line
    rim = ndimage.binary_dilation(removed, structure=np.ones((3, 3), bool), iterations=1) & ~ndimage.binary_dilation(
        kept, structure=np.ones((3, 3), bool)
    )
    out = values.copy()
    out[removed | rim] = 1.0
    return out


def apply_lines(sketch: np.ndarray, style: LineStyle) -> np.ndarray:
    """The sketch's values after binarising, speck removal and stroke width (steps 1-3), (H, W) float32 in [0, 1]."""
    values = np.nan_to_num(np.asarray(sketch, dtype=np.float32), nan=1.0, copy=True)  # our own copy, clipped in place
    np.clip(values, 0.0, 1.0, out=values)
    if style.threshold is not None:
        values = np.where(values < style.threshold, 0.0, 1.0).astype(np.float32)
    elif style.binarize is not None:
        from skimage.filters import apply_hysteresis_threshold

        low, high = style.binarize
        ink = apply_hysteresis_threshold(1.0 - values, 1.0 - high, 1.0 - low)
        values = np.where(ink, 0.0, 1.0).astype(np.float32)
    if style.min_speck > 1:
        values = _remove_specks(values, values < style.ink_level, int(style.min_speck))
    return _line_width(values, float(style.line_width)).astype(np.float32, copy=False)


def render(values: np.ndarray, style: LineStyle) -> Image.Image:
    """Values in [0, 1] (after :func:`apply_lines`) as a PIL image in the style's colours (step 4).

    Black ink on white (the default) is mode ``L``; other colours ``RGB``; a transparent
    background ``RGBA`` with the ink colour and alpha = 255 minus the grey value.
    """
    grey = np.empty(values.shape, dtype=np.uint8)
    for top in range(0, values.shape[0], ROWS):  # a band of rows at a time: no full-size float temporaries
        grey[top : top + ROWS] = np.rint(np.clip(values[top : top + ROWS], 0.0, 1.0) * 255.0)
    ink = np.array(parse_colour(style.line_color), dtype=np.float32)
    if style.transparent:
        rgba = np.empty((*grey.shape, 4), dtype=np.uint8)
        rgba[..., :3] = ink.astype(np.uint8)
        rgba[..., 3] = 255 - grey
        return Image.fromarray(rgba)
    paper = np.array(parse_colour(style.background or "white", "--background"), dtype=np.float32)
    if not ink.any() and (paper == 255).all():
        return Image.fromarray(grey)
    rgb = np.empty((*grey.shape, 3), dtype=np.uint8)
    for top in range(0, grey.shape[0], ROWS):
        band = grey[top : top + ROWS].astype(np.float32) / 255.0
        for c in range(3):
            rgb[top : top + ROWS, :, c] = np.rint(ink[c] + (paper[c] - ink[c]) * band)
    return Image.fromarray(rgb)


def hex_colour(value: str) -> str:
    """A colour as ``#rrggbb``, for SVG fills.

    >>> hex_colour("navy")
    '#000080'
    """
    return "#{:02x}{:02x}{:02x}".format(*parse_colour(value))

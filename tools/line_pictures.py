"""Draw the before / after pictures of docs/lines.md: each line control applied to one sketch.

The sketch is the soft difference-of-Gaussians drawing (``diffsketch.training.dog``) of a packaged
photo, a stand-in for a student's output: the controls act on any (H, W) sketch in [0, 1] the same
way, through the same code as the API, ``diffsketch extract`` and the web page
(``diffsketch.extractor.api.sketch_to_png`` with a ``LineStyle``).

    python tools/line_pictures.py            # writes docs/assets/lines/*.png
    python tools/line_pictures.py --check    # exit 1 if a picture is missing or differs
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "assets" / "lines"

# picture name -> line controls (LineStyle keyword arguments); "before" is the sketch as it is
PICTURES = {
    "before": {},
    "width-0.5": {"line_width": 0.5},
    "width-3": {"line_width": 3},
    "threshold-0.5": {"threshold": 0.5},
    "binarize-0.3-0.8": {"binarize": (0.3, 0.8)},
    "speck-0": {"threshold": 0.8},
    "speck-40": {"threshold": 0.8, "min_speck": 40},
    "colours": {"line_color": "#1d3f8f", "background": "#f6efe0"},
    "transparent": {"line_color": "#b3261e", "background": "transparent"},
}


def sketch() -> np.ndarray:
    """The DoG drawing of the packaged ``coffee`` photo, cropped to 300 x 200 px."""
    from diffsketch.core import read_rgb
    from diffsketch.evaluation.data import PHOTOS
    from diffsketch.training import dog

    photo = read_rgb(PHOTOS["coffee"].source_path())[:, 100:300, 150:450]
    return dog(photo, sigma=1.0, phi=30.0)[0].numpy()


def pictures() -> dict[str, bytes]:
    """Every picture's PNG bytes."""
    from diffsketch.extractor.api import sketch_to_png
    from diffsketch.extractor.lines import LineStyle

    values = sketch()
    out = {}
    for name, controls in PICTURES.items():
        buffer = io.BytesIO()
        sketch_to_png(values, style=LineStyle(**controls)).save(buffer, format="PNG", optimize=True)
        out[name] = buffer.getvalue()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the pictures on disk instead of writing them")
    args = parser.parse_args()
    stale = []
    for name, data in pictures().items():
        path = OUT / f"{name}.png"
        if args.check:
            same = path.is_file() and np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(io.BytesIO(data))))
            if not same:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run python tools/line_pictures.py):", *(str(p.relative_to(ROOT)) for p in stale), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

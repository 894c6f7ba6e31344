"""diffsketch: learn a sketch style from one example with Stable Diffusion features.

``from diffsketch import SketchExtractor`` gives the extractor API (:mod:`diffsketch.extractor`);
it is imported on first use, so ``import diffsketch`` stays light (no torch).
"""

__version__ = "0.1.0"
__all__ = ["SketchExtractor", "__version__"]


def __getattr__(name: str):
    if name == "SketchExtractor":
        from diffsketch.extractor import SketchExtractor

        return SketchExtractor
    raise AttributeError(f"module 'diffsketch' has no attribute {name!r}")

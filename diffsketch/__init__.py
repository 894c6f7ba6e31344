"""diffsketch: learn a sketch style from one example with Stable Diffusion features.

``from diffsketch import SketchExtractor`` gives the extractor API (:mod:`diffsketch.extractor.api`).
It is imported on first use, so ``import diffsketch`` stays light (no torch).

The package has one subpackage per pipeline stage, over :mod:`diffsketch.core`; each imports only
``core`` and the stages before it:
``core`` < ``diffusion`` < ``store`` < ``analysis`` < ``training`` < ``student`` < ``extractor``
< ``evaluation`` < ``ablation`` < ``cli``.
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submod_attrs={
        "core.version": ["__version__"],
        "extractor.api": ["SketchExtractor"],
    },
)

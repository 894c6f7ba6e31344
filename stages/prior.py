"""DVC stage `prior`: Fit the text-condition prior (PCA-Gaussian of CLIP text embeddings) that CDST samples from.

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch prior``.
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.prior import prior

if __name__ == "__main__":
    run_stage(prior, ["prior", *sys.argv[1:]])

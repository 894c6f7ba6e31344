"""DVC stage `analyze`: Pick the representative timesteps from the feature store (PCA + k-means); write the analysis report.

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch analyze``.
"""

import sys

from diffsketch.cli.analyze import analyze
from diffsketch.cli.common import run_stage

if __name__ == "__main__":
    run_stage(analyze, ["analyze", *sys.argv[1:]])

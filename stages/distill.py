"""DVC stage `distill`: Train the fast student on the generated pairs (resumes from its last checkpoint).

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch distill``.
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.distill import distill

if __name__ == "__main__":
    run_stage(distill, ["distill", *sys.argv[1:]])

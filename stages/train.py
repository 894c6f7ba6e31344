"""DVC stage `train`: Train the one-shot sketch generator with CDST (resumes from its latest checkpoint).

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch train``.
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.train import train

if __name__ == "__main__":
    run_stage(train, ["train", *sys.argv[1:]])

"""DVC stage `evaluate`: Score the student and the baselines on real photos; write the evaluation report.

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch evaluate``.
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.evaluate import evaluate

if __name__ == "__main__":
    run_stage(evaluate, ["evaluate", *sys.argv[1:]])

"""DVC stage `eval-data`: Copy the freely licensed real photos that ship inside installed packages into the test folder.

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch eval-data``.
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.eval_data import eval_data

if __name__ == "__main__":
    run_stage(eval_data, ["eval-data", *sys.argv[1:]])

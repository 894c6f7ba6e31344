"""DVC stage `pairs`: Generate (image, sketch) pairs with the trained generator (resumable).

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch pairs``.
With ``launch.processes`` > 1 the stage reruns itself under torchrun, one worker per process
(results are identical).
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.pairs import pairs
from diffsketch.core.distributed import relaunch
from diffsketch.core.params import load_params

if __name__ == "__main__":
    launch = load_params("params.yaml").launch
    code = relaunch(launch.processes, launch.args, [__file__, *sys.argv[1:]])
    if code is not None:
        sys.exit(code)
    run_stage(pairs, ["pairs", *sys.argv[1:]])

"""DVC stage `sample`: Sample SD trajectories and store UNet / VAE-decoder features of every step in the Zarr store (resumable).

The paths are the arguments in ``dvc.yaml`` (``cmd:``); they go to ``diffsketch sample``.
With ``launch.processes`` > 1 the stage reruns itself under torchrun, one worker per process
(results are identical).
"""

import sys

from diffsketch.cli.common import run_stage
from diffsketch.cli.sample import sample
from diffsketch.core.distributed import relaunch
from diffsketch.core.params import load_params

if __name__ == "__main__":
    launch = load_params("params.yaml").launch
    code = relaunch(launch.processes, launch.args, [__file__, *sys.argv[1:]])
    if code is not None:
        sys.exit(code)
    run_stage(sample, ["sample", *sys.argv[1:]])

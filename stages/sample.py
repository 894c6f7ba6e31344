"""DVC stage `sample`: read params.yaml, fill data/features.zarr (resuming an interrupted run).

The store is a `persist: true` out, so an interrupted run resumes; when params change it is
replaced (DVC's cache keeps the previous finished version). With `launch.processes` > 1 the stage
reruns itself under torchrun, one worker per process (results are identical).
"""

import sys

from diffsketch.cli import app
from diffsketch.config import load_params
from diffsketch.distributed import relaunch

OUT = "data/features.zarr"

if __name__ == "__main__":
    launch = load_params("params.yaml").launch
    code = relaunch(launch.processes, launch.args, [__file__])
    if code is not None:
        sys.exit(code)
    app(["sample", "--params", "params.yaml", "--out", OUT, "--overwrite"])

"""DVC stage `pairs`: (image, sketch) pairs from the trained generator -> data/pairs.zarr.

The store is a `persist: true` out, so an interrupted run resumes; when the generator, prior or
settings change it is replaced. With `launch.processes` > 1 the stage reruns itself under
torchrun, one worker per process (results are identical).
"""

import sys

from diffsketch.cli import app
from diffsketch.config import load_params
from diffsketch.distributed import relaunch

if __name__ == "__main__":
    launch = load_params("params.yaml").launch
    code = relaunch(launch.processes, launch.args, [__file__])
    if code is not None:
        sys.exit(code)
    app(["pairs", "--params", "params.yaml", "--generator", "models/generator.safetensors",
         "--prior", "models/prior.safetensors", "--out", "data/pairs.zarr", "--overwrite"])  # fmt: skip

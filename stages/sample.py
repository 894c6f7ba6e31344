"""DVC stage `sample`: read params.yaml, fill data/features.zarr (resuming an interrupted run).

The store is a `persist: true` out, so an interrupted run resumes; when params change it is
replaced (DVC's cache keeps the previous finished version).
"""

from diffsketch.cli import app

OUT = "data/features.zarr"

if __name__ == "__main__":
    app(["sample", "--params", "params.yaml", "--out", OUT, "--overwrite"])

"""DVC stage `distill`: train the fast student on data/pairs.zarr -> models/student.safetensors.

Resumable checkpoints go to models/distill-checkpoints (a `persist: true` out, so an interrupted run
resumes; they are discarded when the settings change)."""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["distill", "--params", "params.yaml", "--pairs", "data/pairs.zarr", "--out", "models/student.safetensors",
         "--live", "reports/distill", "--checkpoints", "models/distill-checkpoints", "--overwrite"])  # fmt: skip

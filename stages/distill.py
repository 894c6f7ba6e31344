"""DVC stage `distill`: train the fast student on data/pairs.zarr -> models/student.safetensors."""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["distill", "--params", "params.yaml", "--pairs", "data/pairs.zarr", "--out", "models/student.safetensors",
         "--live", "reports/distill"])  # fmt: skip

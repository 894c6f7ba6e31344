"""DVC stage `analyze`: pick the representative timesteps from data/features.zarr.

Writes data/timesteps.json (read by training), data/analysis/ (saved results for
`diffsketch report`) and reports/analysis/ (HTML report, DVC metrics and plots). For the
report's feature maps (`analyze.feature_maps`, 0 = off) it loads the model (`model` params) and
samples that many trajectories of the store again.
"""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["analyze", "--params", "params.yaml", "--store", "data/features.zarr", "--results", "data/analysis",
         "--timesteps", "data/timesteps.json", "--reports", "reports/analysis"])  # fmt: skip

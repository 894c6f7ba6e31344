"""DVC stage `train`: one-shot training of the sketch generator with CDST.

Reads data/timesteps.json and models/prior.safetensors; writes models/generator.safetensors
(+ .json), resumable checkpoints in models/checkpoints (a `persist: true` out, so an interrupted
run resumes; they are discarded when the settings change) and the dvclive folder reports/train.
"""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["train", "--params", "params.yaml", "--timesteps", "data/timesteps.json", "--prior", "models/prior.safetensors",
         "--out", "models/generator.safetensors", "--checkpoints", "models/checkpoints", "--live", "reports/train",
         "--overwrite"])  # fmt: skip

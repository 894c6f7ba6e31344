"""DVC stage `prior`: fit the text-condition prior on data/captions -> models/prior.safetensors."""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["prior", "--params", "params.yaml", "--out", "models/prior.safetensors"])

"""DVC stage `pairs`: (image, sketch) pairs from the trained generator -> data/pairs.zarr.

The store is a `persist: true` out, so an interrupted run resumes; when the generator, prior or
settings change it is replaced.
"""

from diffsketch.cli import app

if __name__ == "__main__":
    app(["pairs", "--params", "params.yaml", "--generator", "models/generator.safetensors",
         "--prior", "models/prior.safetensors", "--out", "data/pairs.zarr", "--overwrite"])  # fmt: skip

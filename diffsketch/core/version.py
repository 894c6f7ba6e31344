"""The package version, recorded in stores, checkpoints and model files."""

__version__ = "0.1.0"

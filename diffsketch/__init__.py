"""diffsketch: learn a sketch style from one example with Stable Diffusion features."""

__version__ = "0.1.0"

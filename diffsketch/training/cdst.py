"""CDST, condition diffusion sampling for training (method.md §5).

Training samples a fresh image every iteration. Early on its text condition stays near the
example's prompt, so the directional CLIP losses compare semantically close images; it then
drifts to random conditions drawn from the text prior, for diversity. For iteration ``i`` before
the horizon ``h``, with ``r = i / h``, ``alpha = sqrt(1 - r)`` and ``beta = sqrt(r)``::

    c_i = alpha / (alpha + beta) * c_example + beta / (alpha + beta) * c_random_i

and from ``h`` on ``c_i = c_random_i``. The mix is linear in the embeddings, as in the authors'
code (not slerp).
"""

from __future__ import annotations

import math

import torch


def cdst_weight(iteration: int, horizon: int) -> float:
    """The weight on the example's condition at ``iteration`` (1 at the start, 0 from the horizon on)."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if iteration >= horizon:
        return 0.0
    r = iteration / horizon
    alpha, beta = math.sqrt(1 - r), math.sqrt(r)
    return alpha / (alpha + beta)


def cdst_condition(example: torch.Tensor, random: torch.Tensor, iteration: int, horizon: int) -> torch.Tensor:
    """Mix the example's condition (1, 77, D) with random conditions (B, 77, D)."""
    w = cdst_weight(iteration, horizon)
    return w * example.to(random.dtype) + (1 - w) * random

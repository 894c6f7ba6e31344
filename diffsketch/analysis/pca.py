"""Principal components of a tall, wide matrix read in row blocks: streamed block Krylov PCA.

The matrix X has M rows (one per (trajectory, timestep)) and D columns (every UNet layer's pooled
features side by side; D = 675,840 for SD 1.5 at pool 8). It arrives one *item* at a time (a
trajectory: T rows), each item as one block per layer. PCA runs on the weighted, centred matrix

    X_w = [ (X_l - 1 mu_l^T) * s_l ]  for every layer l,

where mu_l is the layer's column mean and s_l is 1 (``raw``) or 1 / sqrt(total variance of the
layer) (``equal``: every layer then carries the same variance). X_w is never formed. Products
with it are products with the raw blocks, corrected afterwards, because X_w is linear in each
layer's block:  W^T X_w,l = s_l (W^T X_l - (W^T 1) mu_l^T)  and  X_w Z = sum_l s_l (X_l Z_l - 1 mu_l^T Z_l).

Algorithm: randomized block Krylov iteration (Musco and Musco 2015, "Randomized block Krylov
methods for stronger and faster approximate singular value decomposition", NeurIPS; the range
finder of Halko, Martinsson and Tropp 2011, SIAM Review 53(2), Algorithm 4.4, keeping every block),
with r = n_components + oversamples columns per block. Every pass applies one D x r matrix Z to
each item and, in the same pass, accumulates the product of the result with the item again:

    Y_i = X_w,i Z   (T x r)        A += Y_i^T X_w,i   (r x D)

so one pass gives both a new block Y (its basis Q, QC = Y) and B = Q^T X_w = C^T A.

    pass 0      Z = Omega (seeded Gaussian). The layer statistics ride along: mu_l and s_l are not
                known yet, so Y uses s~_l from the first trajectory and no centring; Y is centred
                after the pass (1^T X_w = 0, so A needs no change), which makes it X_w Omega' for a
                per-layer rescaled Gaussian Omega' -- a random start like any other -- while A is
                folded with the exact mu_l, s_l.
    pass j      (j = 1..q) Z = orth(B_{j-1}^T), the exact weights.

The ``q + 1`` blocks span the Krylov space [X_w Omega, (X_w X_w^T) X_w Omega, ...]. Rayleigh-Ritz on
it: Q = orth([Q_0 .. Q_q]), B = Q^T X_w, B = U S V^T; the components are V, the explained
variances S^2 / (M - 1), and the projection of the rows Q U S, as in scikit-learn's randomized
PCA ``fit_transform`` (U * S). Every factorisation is of a small matrix (M x w or w x w, w = r(q+1));
the D-wide ones go through Gram matrices. Signs follow scikit-learn's ``svd_flip`` on U (the
largest absolute entry of each projection column is positive), so results are deterministic.

Cost: ``q + 1`` passes, each reading every item's chunks once and multiplying its T x D block by
thin matrices (D x r and T x r). Memory: (q + 1) r x D floats and M x r(q+1).

Accuracy (Musco and Musco 2015, Theorem 1): with q + 1 = O(log(D) / sqrt(eps)) blocks the
approximation of each of the top k singular values is within a factor (1 +- eps) with high
probability, independently of the gaps between singular values, whereas simple subspace
iteration needs O(log(D) / eps) passes; and the range-finder bound of HMT 2011 (Corollary 10.10)
holds for the first block already. In the tests (stores small enough for an exact PCA) the
default (p = 10, q = 2: 3 passes) gives every one of the first ``pca_dims`` explained variances
within 1% of scikit-learn's exact PCA and principal angles below a degree.

Everything runs in torch, so the same code runs on the CPU and on a GPU (``device``): Omega is drawn
on the CPU from a seeded generator and moved, the small factorisations run in float64, the
streamed products in float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Blocks = list[np.ndarray]  # one (T, D_l) array per layer, any float dtype


@dataclass
class PCAResult:
    projection: np.ndarray  # (M, k) float32, rows in item order
    components: np.ndarray  # (k, D) float32, unit rows, in the weighted coordinates
    explained_variance: np.ndarray  # (k,)
    explained_variance_ratio: np.ndarray  # (k,)
    total_variance: float
    passes: int
    seconds: float


def _prefetched(read: Callable[[int], Blocks], items: Sequence[int]) -> Iterator[Blocks]:
    """Each item's blocks, the next one read on a thread while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pca-read") as pool:
        pending = pool.submit(read, items[0]) if len(items) else None
        for pos in range(len(items)):
            blocks = pending.result()
            pending = pool.submit(read, items[pos + 1]) if pos + 1 < len(items) else None
            yield blocks


class _Progress:
    """One bar over every pass (unit: trajectories), and the projected total once it is known."""

    def __init__(self, items: int, passes: int, enabled: bool):
        self.total, self.passes = items * passes, passes
        self.bar = tqdm(total=self.total, desc="PCA", unit="traj", disable=not enabled)
        self.start, self.done, self.told = time.perf_counter(), 0, False

    def step(self, pass_name: str) -> None:
        self.done += 1
        self.bar.set_postfix_str(pass_name, refresh=False)
        self.bar.update(1)
        elapsed = time.perf_counter() - self.start
        if not self.told and (self.done >= max(3, self.total // 50) or elapsed > 20) and self.done < self.total:
            rate = self.done / elapsed
            log.info(
                "PCA: %d passes over %d trajectories at %.2f traj/s; projected total %.1f min",
                self.passes, self.total // self.passes, rate, self.total / rate / 60,
            )  # fmt: skip
            self.told = True

    def close(self) -> None:
        self.bar.close()


def _orth(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal basis Q of span(Y) (M x w, thin) and the map C with Q = Y C, by the SVD
    Y = U S W^T (Q = U, C = W S^-1). Directions with S below 1e-3 of the largest (a variance below
    1e-6 of the top) are dropped: the products they would scale by 1/S are streamed in float32, so
    a rank-deficient Y (tiny stores, converged Krylov blocks) never divides a rounding error."""
    u, sv, wt = torch.linalg.svd(y.double(), full_matrices=False)
    keep = sv > sv[0] * 1e-3
    return u[:, keep], wt[keep].T / sv[keep]


def _gram(b: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """B B^T in float64, a column chunk at a time (B is w x D with D large)."""
    return sum(part.double() @ part.double().T for part in torch.split(b, chunk, dim=1))


def _row_basis(b: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (D x w') of the row space of B (w x D) from the eigenvectors of B B^T:
    Z = B^T E L^-1/2, so only one w x w factorisation, never a D-tall QR."""
    eigenvalues, vectors = torch.linalg.eigh(_gram(b))
    keep = eigenvalues > eigenvalues.max() * 1e-12
    return b.T @ (vectors[:, keep] / eigenvalues[keep].sqrt()).to(b.dtype)


@dataclass
class LayerWeights:
    """What pass 0 learns about each layer: its column mean mu_l, its scale s_l, and the total
    variance of the weighted matrix X_w (the denominator of the explained-variance ratios)."""

    means: list[torch.Tensor]  # (D_l,) float32 per layer
    scales: list[float]
    total: float


class KrylovStream:
    """One read of every item per pass, computing ``Y = X_w Z`` (rows x r) and ``A = Y^T X_w`` (r x D).

    Pass 0 (:meth:`first_pass`) does not know the layer means and scales yet: it gathers them
    (running sums in float64) while it weights Y with the scales of item 0 and centres Y afterwards
    (see the module docstring); it sets :attr:`weights`. Later passes (:meth:`next_pass`) use the
    exact weights. Every block has item 0's layer means (:attr:`shift`) subtracted as it is read, so
    the float32 products hold deviations, not large offsets that cancel at the end.
    """

    def __init__(self, read, items, steps, widths, *, equal_weights, device, bar):
        self.read, self.items, self.steps, self.widths = read, items, steps, widths
        self.rows = steps * len(items)
        self.equal_weights, self.bar = equal_weights, bar
        self.f32 = dict(device=device, dtype=torch.float32)
        self.device = device
        self.shift: list[torch.Tensor] = []  # item 0's layer means, set on the first read
        self.weights: LayerWeights | None = None  # set by first_pass

    def _blocks(self):
        """Each item's position and its blocks, shifted, in float32 on the device."""
        for pos, blocks in enumerate(_prefetched(self.read, self.items)):
            raw = [torch.from_numpy(np.ascontiguousarray(b)).to(self.device) for b in blocks]  # as stored (float16)
            if not self.shift:
                self.shift.extend(x.float().mean(0) for x in raw)
            yield pos, [torch.sub(x, m) for x, m in zip(raw, self.shift)]  # the conversion and the shift in one op

    def _stream(self, z, scales, offset, name, on_item=None):
        """Y (rows x r, before any centring) and the per-layer Y_i^T X_l products, in one read."""
        steps = self.steps
        y = torch.zeros(self.rows, z[0].shape[1], **self.f32)
        products = [torch.zeros(z[0].shape[1], w, **self.f32) for w in self.widths]
        for pos, xs in self._blocks():
            if on_item is not None:
                scales = on_item(xs) or scales
            yi = sum(s * (x @ zl) for s, x, zl in zip(scales, xs, z)) - offset
            y[pos * steps : (pos + 1) * steps] = yi
            for l, x in enumerate(xs):
                products[l].addmm_(yi.T, x)
            self.bar.step(name)
        return y, products

    def _fold(self, y, products) -> torch.Tensor:
        """A = Y^T X_w from the per-layer products with the raw (shifted) blocks: the layer means
        folded in, each layer scaled."""
        y_sum = y.sum(0)
        w = self.weights
        return torch.cat([s * (al - torch.outer(y_sum, m)) for al, s, m in zip(products, w.scales, w.means)], 1)

    def first_pass(self, omega: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Y and A for the random start ``omega``; gathers the layer statistics (sets :attr:`weights`)."""
        sums = [torch.zeros(w, dtype=torch.float64, device=self.device) for w in self.widths]
        squares = [torch.zeros(w, dtype=torch.float64, device=self.device) for w in self.widths]
        ones = torch.ones(1, self.steps, **self.f32)
        first_scales: list[float] = []

        def gather(xs):
            for l, x in enumerate(xs):
                sums[l] += (ones @ x)[0]  # one item's T rows in float32, the running total in float64
                squares[l] += (ones @ (x * x))[0]
            if not first_scales:  # s~ from the first trajectory (any positive scales are a valid start)
                first_scales.extend(_scale(x.var(0).sum().item(), self.equal_weights) for x in xs)
            return first_scales

        y, products = self._stream(omega, None, 0, "statistics + sketch", on_item=gather)
        rows = self.rows
        means = [v / rows for v in sums]
        variances = [(q / rows - m.square()).clamp_min(0).sum().item() for q, m in zip(squares, means)]
        scales = [_scale(v, self.equal_weights) for v in variances]
        total = sum(s * s * v for s, v in zip(scales, variances)) * rows / max(rows - 1, 1)
        self.weights = LayerWeights(means=[m.float() for m in means], scales=scales, total=total)
        a = self._fold(y, products)
        return y - y.sum(0) / rows, a  # centred: 1^T X_w = 0, so A needs no change

    def next_pass(self, z: list[torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Y = X_w Z and A = Y^T X_w with the exact weights."""
        w = self.weights
        offset = sum(s * (m @ zl) for s, m, zl in zip(w.scales, w.means, z))
        y, products = self._stream(z, w.scales, offset, name)
        return y, self._fold(y, products)


def randomized_pca(
    read: Callable[[int], Blocks],
    items: Sequence[int],
    steps: int,
    widths: Sequence[int],
    n_components: int,
    *,
    equal_weights: bool,
    oversamples: int = 10,
    power_iterations: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> PCAResult:
    """PCA of the weighted, centred rows of every item's blocks (see the module docstring).

    ``read(item)`` returns the item's blocks: one (steps, widths[l]) array per layer."""
    start = time.perf_counter()
    device, items, widths = torch.device(device), list(items), list(widths)
    rows = steps * len(items)
    r = min(n_components + oversamples, rows, sum(widths))
    passes = 1 + power_iterations
    bar = _Progress(len(items), passes, progress)
    stream = KrylovStream(read, items, steps, widths, equal_weights=equal_weights, device=device, bar=bar)

    generator = torch.Generator("cpu").manual_seed(seed)
    omega = [torch.randn(w, r, generator=generator).to(device=device, dtype=torch.float32) for w in widths]

    with torch.inference_mode():
        # 1. The Krylov blocks: Q_j spans X_w Z_j, and B_j = Q_j^T X_w comes from the same pass.
        basis, products = [], []
        for it in range(passes):
            if it == 0:
                y, a = stream.first_pass(omega)
            else:
                z = list(torch.split(_row_basis(products[-1]), widths))  # orth(X_w^T Q_j), per layer
                y, a = stream.next_pass(z, f"Krylov block {it + 1}")
            q, c = _orth(y)
            basis.append(q)
            products.append(c.T.float() @ a)  # B_j = Q_j^T X_w = C^T Y^T X_w
        bar.close()

        # 2. Rayleigh-Ritz on the whole Krylov basis K = [Q_0 .. Q_q] with KB = K^T X_w (both known):
        # Q = orth(K) = K C, B = Q^T X_w = C^T KB, and B B^T = C^T (KB KB^T) C = U S^2 U^T.
        kb = torch.cat(products, dim=0)
        q, c = _orth(torch.cat(basis, dim=1))
        eigenvalues, u = torch.linalg.eigh(c.T @ _gram(kb) @ c)
        order = eigenvalues.argsort(descending=True)[: min(n_components, len(eigenvalues))]
        sv, u = eigenvalues[order].clamp_min(0).sqrt(), u[:, order]

        # 3. Projection, components and signs (scikit-learn's svd_flip on U).
        projection = q @ (u * sv)  # (M, k) = Q U S
        signs = torch.sign(projection.gather(0, projection.abs().argmax(0, keepdim=True)))
        signs = torch.where(signs == 0, 1.0, signs)
        components = (kb.T @ (c @ (u / sv.clamp_min(1e-300))).float()).T  # V = B^T U S^-1 = KB^T C U S^-1
        projection, components = projection * signs, components * signs.T
        variance = (sv**2 / max(rows - 1, 1)).cpu().numpy()
    total = stream.weights.total
    return PCAResult(
        projection=projection.float().cpu().numpy(),
        components=components.float().cpu().numpy(),
        explained_variance=variance,
        explained_variance_ratio=variance / total if total > 0 else np.zeros_like(variance),
        total_variance=float(total),
        passes=passes,
        seconds=time.perf_counter() - start,
    )


def _scale(total_variance: float, equal_weights: bool) -> float:
    return 1.0 / total_variance**0.5 if equal_weights and total_variance > 0 else 1.0

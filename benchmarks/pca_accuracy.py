"""How close the streamed randomized PCA comes to the exact PCA, on a store that fits in memory.

For each layer weighting and number of Krylov iterations, it prints the largest relative error of
the first ``pca_dims`` explained variances against scikit-learn's exact PCA (full SVD of the
whole weighted matrix, built in memory here) and the largest principal angle between the two
component subspaces (scipy's ``subspace_angles``).

    dvc repro sample && python benchmarks/pca_accuracy.py data/features.zarr [--pca-dims 25]
"""

import argparse

import numpy as np
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from diffsketch.analysis.timesteps import FeatureReader
from diffsketch.analysis.pca import randomized_pca


def weighted_matrix(reader: FeatureReader, equal: bool) -> np.ndarray:
    blocks = [[b.astype(np.float64) for b in reader.blocks(i)] for i in reader.trajectories]
    out = []
    for l in range(len(reader.layers)):
        x = np.concatenate([b[l] for b in blocks])
        x = x - x.mean(axis=0)
        out.append(x / np.sqrt(x.var(axis=0).sum()) if equal else x)
    return np.concatenate(out, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--pca-dims", type=int, default=25)
    parser.add_argument("--oversamples", type=int, default=10)
    args = parser.parse_args()
    reader = FeatureReader.open(args.store)
    items, steps = reader.trajectories, len(reader.timesteps)
    print(f"{args.store}: {len(items)} trajectories x {steps} steps, {reader.dim:,} values per vector; "
          f"pca_dims {args.pca_dims}, oversamples {args.oversamples}")  # fmt: skip
    print("| weighting | power_iterations | passes | max rel. error of an explained variance | largest principal angle |")
    print("|---|---|---|---|---|")
    for equal in (True, False):
        exact = PCA(args.pca_dims, svd_solver="full").fit(weighted_matrix(reader, equal))
        for q in range(4):
            fit = randomized_pca(
                reader.blocks, items, steps, reader.widths, args.pca_dims,
                equal_weights=equal, oversamples=args.oversamples, power_iterations=q,
            )  # fmt: skip
            error = np.abs(fit.explained_variance / exact.explained_variance_ - 1).max()
            angle = np.degrees(subspace_angles(fit.components.T.astype(np.float64), exact.components_.T)).max()
            print(f"| {'equal' if equal else 'raw'} | {q} | {fit.passes} | {100 * error:.3f}% | {angle:.3f}° |")


if __name__ == "__main__":
    main()

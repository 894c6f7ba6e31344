"""The `analyze` stage: representative timesteps from the feature store, and its report.

In: ``core``, ``diffusion`` (feature maps sample a few trajectories again) and ``store``. Out:
:func:`~diffsketch.analysis.timesteps.analyze` (streamed PCA, k-means sweep, elbow and silhouette,
the optimal timestep per cluster), the saved results and ``timesteps.json``, feature maps, and the
interactive HTML report.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.analysis.timesteps`: ``AnalysisInputError``, ``AnalysisResult``, ``analyze``, ``write_outputs``,
  ``selection_distance``, ``selection_distances``, ``uniform_timesteps``
- :mod:`~diffsketch.analysis.pca`: ``KrylovStream``, ``LayerWeights``, ``PCAResult``, ``randomized_pca``
- :mod:`~diffsketch.analysis.report`: ``write_report``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "timesteps": ["AnalysisInputError", "AnalysisResult", "analyze", "write_outputs", "selection_distance",
                      "selection_distances", "uniform_timesteps"],
        "pca": ["KrylovStream", "LayerWeights", "PCAResult", "randomized_pca"],
        "report": ["write_report"],
    },
)

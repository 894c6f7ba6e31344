"""The paper"s ablations as DVC experiments (``diffsketch ablate``), and their report.

In: ``core`` and the evaluation"s metrics and results. Out: one DVC experiment per row of
``presets/ablations.yaml``, their collected scores, and ``reports/ablation/index.html``.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.ablation.runner`: ``AblationError``, ``METHOD``, ``METHODS``, ``RowResult``, ``Run``, ``Score``, ``check_repo``, ``collect``, ``head_commit``, ``load_rows``, ``mean_interval``, ``run_ablation``
- :mod:`~diffsketch.ablation.report`: ``show_table``, ``write_report``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "runner": ["AblationError", "METHOD", "METHODS", "RowResult", "Run", "Score", "check_repo", "collect", "head_commit", "load_rows", "mean_interval", "run_ablation"],
        "report": ["show_table", "write_report"],
    },
)

"""The `eval-data` and `evaluate` stages: the student against baselines on real photos.

In: everything below it; it runs the student through the ``extractor``. Out: the packaged test
photos with their licences, weight-free baselines, metrics (SSIM, PSNR, chamfer, F-score, LPIPS),
the scores, the HTML report and the README's results table.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.evaluation.data`: ``EvalDataError``, ``PHOTOS``, ``run_eval_data``
- :mod:`~diffsketch.evaluation.baselines`: ``LEARNED``, ``baseline``, ``lineart``, ``sobel``, ``xdog_common``
- :mod:`~diffsketch.evaluation.metrics`: ``HIGHER_IS_BETTER``, ``UNITS``
- :mod:`~diffsketch.evaluation.protocol`: ``EvalError``, ``EvalResult``, ``evaluate``, ``write_outputs``
- :mod:`~diffsketch.evaluation.report`: ``ARROWS``, ``results_markdown``, ``results_or_reason``, ``run_evaluate``, ``saved_results``, ``update_readme``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "data": ["EvalDataError", "PHOTOS", "run_eval_data"],
        "baselines": ["LEARNED", "baseline", "lineart", "sobel", "xdog_common"],
        "metrics": ["HIGHER_IS_BETTER", "UNITS"],
        "protocol": ["EvalError", "EvalResult", "evaluate", "write_outputs"],
        "report": ["ARROWS", "results_markdown", "results_or_reason", "run_evaluate", "saved_results", "update_readme"],
    },
)

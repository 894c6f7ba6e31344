"""The `prior` and `train` stages: the one-shot sketch generator with CDST.

In: ``core`` and ``diffusion``, with the timesteps file and the example pair. Out:
the built-in line styles, the example pair, the CLIP text prior, CDST, the generator network,
the losses (L1, LPIPS, CLIP, directional CLIP), :func:`~diffsketch.training.trainer.run_train`, and
the checkpoint and non-finite-guard helpers that ``student`` reuses.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.training.styles`: ``STYLES``, ``StyleError``, ``apply_style``, ``xdog``, ``canny``, ``dog``
- :mod:`~diffsketch.training.example`: ``Example``, ``ExampleError``, ``build_example``, ``check_example``, ``inputs_from_result``, ``is_style``
- :mod:`~diffsketch.training.prior`: ``PriorError``, ``TextPrior``, ``run_prior``
- :mod:`~diffsketch.training.cdst`: ``cdst_condition``, ``cdst_weight``
- :mod:`~diffsketch.training.generator`: ``GeneratorInputs``, ``GeneratorLoadError``, ``SketchGenerator``, ``load_generator``, ``save_generator``
- :mod:`~diffsketch.training.losses`: ``ALEXNET_FILE``, ``LossSetupError``, ``SketchLoss``, ``alexnet_cached``, ``load_clip``, ``load_lpips``
- :mod:`~diffsketch.training.trainer`: ``TrainInputError``, ``TrainPaths``, ``TrainStep``, ``Trainer``, ``run_train``
- :mod:`~diffsketch.training.checkpoint`: ``NonFiniteError``, ``NonFiniteGuard``, ``check_finite_weights``, ``checkpoint_meta``, ``latest_checkpoint``, ``load_checkpoint``, ``load_module``, ``load_optimizer``, ``module_tensors``, ``open_live``, ``optimizer_tensors``, ``rng_tensor``, ``save_checkpoint``, ``trim_live``, ``resume_point``, ``kept_runs``, ``KeptRun``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "styles": ["STYLES", "StyleError", "apply_style", "xdog", "canny", "dog"],
        "example": ["Example", "ExampleError", "build_example", "check_example", "inputs_from_result", "is_style"],
        "prior": ["PriorError", "TextPrior", "run_prior"],
        "cdst": ["cdst_condition", "cdst_weight"],
        "generator": ["GeneratorInputs", "GeneratorLoadError", "SketchGenerator", "load_generator", "save_generator"],
        "losses": ["ALEXNET_FILE", "LossSetupError", "SketchLoss", "alexnet_cached", "load_clip", "load_lpips"],
        "trainer": ["TrainInputError", "TrainPaths", "TrainStep", "Trainer", "run_train"],
        "checkpoint": ["NonFiniteError", "NonFiniteGuard", "check_finite_weights", "checkpoint_meta", "latest_checkpoint", "load_checkpoint", "load_module", "load_optimizer", "module_tensors", "open_live", "optimizer_tensors", "rng_tensor", "save_checkpoint", "trim_live", "resume_point", "kept_runs", "KeptRun"],
    },
)

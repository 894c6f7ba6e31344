"""The ground floor: what every stage shares, and nothing specific to one stage.

In: nothing from the other subpackages (``core`` imports none of them). Out: the params schema
(:mod:`~diffsketch.core.params`) and presets, the one error base class, device choice, files
written atomically, the one image loader, the HTML report helpers, batch-size probing and the
split of work across processes, and the package version.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.core.params`: ``Params``, ``ParamsError``, ``load_params``, ``parse_params``, ``apply_overrides``, ``ModelConfig``, ``AnalyzeConfig``, ``DistillConfig``, ``LossConfig``, ``EvalDataConfig``, ``DatasetConfig``, ``NETWORK_STYLES``
- :mod:`~diffsketch.core.presets`: ``PresetError``, ``apply_preset``, ``available``
- :mod:`~diffsketch.core.errors`: ``DiffsketchError``
- :mod:`~diffsketch.core.devices`: ``resolve_device``
- :mod:`~diffsketch.core.files`: ``file_hash``, ``replaced_folder``
- :mod:`~diffsketch.core.keys`: ``NEUTRAL``, ``PROGRESS``, ``ResultKey``, ``content_hash``, ``file_inputs``, ``result_key``
- :mod:`~diffsketch.core.html`: ``escape``, ``image_uri``, ``page_start``, ``safe_json``, ``table_html``
- :mod:`~diffsketch.core.images`: ``ImageError``, ``READ_ERRORS``, ``check_image_file``, ``check_rgb``, ``load_image``, ``load_sketch``, ``pil_to_tensor``, ``read_rgb``, ``save_image``, ``save_sketch``, ``square_box``
- :mod:`~diffsketch.core.threads`: ``Threads``, ``ThreadsError``, ``apply_threads``, ``available_cores``, ``resolve_threads``, ``sleep_when_idle``
- :mod:`~diffsketch.core.version`: ``__version__``

Modules used as namespaces: ``batching``, ``devices``, ``distributed``, ``images``.
"""

from diffsketch.core.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=["batching", "devices", "distributed", "images"],
    submod_attrs={
        "params": ["Params", "ParamsError", "load_params", "parse_params", "apply_overrides", "ModelConfig", "AnalyzeConfig", "DistillConfig", "LossConfig", "EvalDataConfig", "DatasetConfig", "NETWORK_STYLES"],
        "presets": ["PresetError", "apply_preset", "available"],
        "errors": ["DiffsketchError"],
        "devices": ["resolve_device"],
        "files": ["file_hash", "replaced_folder"],
        "keys": ["NEUTRAL", "PROGRESS", "ResultKey", "content_hash", "file_inputs", "result_key"],
        "html": ["escape", "image_uri", "page_start", "safe_json", "table_html"],
        "images": ["ImageError", "READ_ERRORS", "check_image_file", "check_rgb", "load_image", "load_sketch", "pil_to_tensor", "read_rgb", "save_image", "save_sketch", "square_box"],
        "threads": ["Threads", "ThreadsError", "apply_threads", "available_cores", "resolve_threads", "sleep_when_idle"],
        "version": ["__version__"],
        "lazy": ["attach"],
    },
)

"""Using a learnt style: the :class:`~diffsketch.extractor.api.SketchExtractor` API, batch extraction, style folders, the web page.

In: ``core``, ``training`` (the built-in styles, for a style folder"s example) and ``student``
(the network, ONNX export). Out: sketches of images in memory or on disk (PNG, SVG), shareable
style folders, and ``diffsketch serve``.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.extractor.api`: ``SketchExtractor``, ``BACKENDS``, ``DEVICES``, ``PRECISIONS``, ``ExtractError``, ``extractor_device``, ``sketch_to_png``, ``sketch_to_svg``, ``MAX_MEGAPIXELS``, ``TooLargeError``
- :mod:`~diffsketch.extractor.lines`: ``LineStyle``, ``apply_lines``
- :mod:`~diffsketch.extractor.tiles`: ``DEFAULT_TILE``, ``TiledStudent``
- :mod:`~diffsketch.extractor.batch`: ``IMAGE_EXTENSIONS``, ``ExtractReport``, ``prepare_image``, ``run_extract``
- :mod:`~diffsketch.extractor.style_folder`: ``export_style``
- :mod:`~diffsketch.extractor.video`: ``VIDEO_EXTENSIONS``, ``TemporalFilter``, ``VideoError``, ``VideoReport``, ``extract_videos``, ``is_video``, ``sketch_video``, ``split_videos``
- :mod:`~diffsketch.extractor.web`: ``serve``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "api": ["SketchExtractor", "BACKENDS", "DEVICES", "PRECISIONS", "ExtractError", "extractor_device", "sketch_to_png", "sketch_to_svg",
                "MAX_MEGAPIXELS", "TooLargeError"],
        "lines": ["LineStyle", "apply_lines"],
        "tiles": ["DEFAULT_TILE", "TiledStudent"],
        "batch": ["IMAGE_EXTENSIONS", "ExtractReport", "prepare_image", "run_extract"],
        "style_folder": ["export_style"],
        "video": ["VIDEO_EXTENSIONS", "TemporalFilter", "VideoError", "VideoReport", "extract_videos", "is_video", "sketch_video", "split_videos"],
        "web": ["serve"],
    },
)

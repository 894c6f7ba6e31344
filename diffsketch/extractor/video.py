"""Video in, video out: clips decoded with PyAV, sketched in batches, encoded as they stream.

    from diffsketch import SketchExtractor

    extractor = SketchExtractor.load("styles/cat")
    report = extractor.sketch_video("clip.mp4", "clip_sketch.mp4")   # temporal mode on by default
    print(report.frames, report.flicker, report.lag)

A clip (``.mp4``, ``.m4v``, ``.mov``, ``.mkv``, ``.webm``, ``.gif``) is read frame by frame;
``batch_size`` frames at a time go through the extractor, and each sketch is encoded as soon as it
is made, so memory stays bounded whatever the clip's length. The output keeps the input's
container, frame count and timestamps (so its frame rate) and its first audio stream, copied as it
is (no re-encoding). The sketch is encoded with H.264 (``libx264``, CRF 18) in MP4, MOV and MKV, with
VP9 in WebM and as grey frames in a GIF. ``size`` caps the long side as for images; H.264 and VP9
store colour at half resolution (4:2:0) and need even sides, so their frames are rounded down to
even sides (one pixel at most).

**Temporal mode** (:class:`TemporalFilter`, on by default). A network applied to each frame alone
flickers: sensor noise and compression change the sketch between frames where the scene does not
change. The temporal mode keeps a running estimate of the sketch per pixel: where the input is
still it moves a small step (``step``) towards each frame's sketch, averaging the noise out; where
the input changes it takes the frame's sketch as it is, so lines follow motion without trails. The
input's change is measured against a running estimate of the input (so that slow drifts add up
until they count): the largest channel of the absolute difference, box-blurred over ``blur``
pixels, counts as change from ``change / 2`` (not at all) to ``change`` (fully), and a change
reaches ``reach`` pixels around it (the network's lines respond to a neighbourhood of the photo).

**Flicker and lag** (:class:`VideoFigures`), written for every clip to ``summary.json`` beside the
outputs and printed by ``diffsketch extract``. Between consecutive frames, the input *changed* at
a pixel where the largest channel of the absolute difference of the two frames, box-blurred over
:data:`FIGURE_BLUR` pixels, exceeds :data:`FIGURE_CHANGE`; it is *still* where no changed pixel
lies within :data:`FIGURE_REACH` pixels (the ring between is counted in neither). Sketch values
are in [0, 1] (0 = ink, 1 = paper), after ``threshold`` when one is given.

- **flicker**: the mean absolute change of the written sketch between consecutive frames over the
  still pixels: what the eye sees as shimmer on a static scene.
- **lag**: the mean absolute difference between the written sketch and the frame's own sketch
  (the per-frame output) over the changed pixels: how far the lines trail motion. Zero in
  per-frame mode.

``per_frame_flicker`` is the flicker the per-frame sketches have on the same clip (computed in both
modes, as the per-frame sketch is made anyway), so one run shows what the temporal mode gains.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffsketch.core import DiffsketchError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".gif")
SUMMARY_FILE = "summary.json"
FIGURE_CHANGE = 0.1  # blurred input difference (in [0, 1]) above which a pixel changed between frames
FIGURE_BLUR = 5  # box side of that blur, pixels
FIGURE_REACH = 4  # still = no changed pixel within this many pixels
_GLOB_CHARS = set("*?[")


class VideoError(DiffsketchError, ValueError):
    """A video cannot be read or written (corrupt, unsupported, no video stream); the message says which and why."""


# --------------------------------------------------------------------------------------------
# Change between frames, the temporal filter, the figures
# --------------------------------------------------------------------------------------------


def change_map(frame: torch.Tensor, reference: torch.Tensor, blur: int) -> torch.Tensor:
    """The input's change at each pixel: the largest channel of ``|frame - reference|``, box-blurred.

    Args:
        frame: (3, H, W) RGB in [0, 1].
        reference: the same shape: the previous frame, or a running estimate of it.
        blur: side of the box (odd; 1: no blur); the border averages the pixels inside the image.

    Returns:
        (H, W) values in [0, 1].

    Examples:
        >>> a = torch.zeros(3, 5, 5); b = a.clone(); b[1, 2, 2] = 0.9
        >>> round(float(change_map(b, a, 3)[2, 2]), 4), float(change_map(b, a, 3)[0, 0])
        (0.1, 0.0)
    """
    diff = (frame - reference).abs().amax(dim=0)[None, None]
    if blur > 1:
        diff = F.avg_pool2d(diff, blur, stride=1, padding=blur // 2, count_include_pad=False)
    return diff[0, 0]


def spread(mask: torch.Tensor, reach: int) -> torch.Tensor:
    """``mask`` (H, W) dilated by ``reach`` pixels (the maximum over a square of side ``2 * reach + 1``).

    Examples:
        >>> m = torch.zeros(5, 5); m[2, 2] = 1.0
        >>> int(spread(m, 1).sum()), int(spread(m, 0).sum())
        (9, 1)
    """
    if reach < 1:
        return mask
    return F.max_pool2d(mask[None, None].float(), 2 * reach + 1, stride=1, padding=reach)[0, 0]


@dataclass(frozen=True)
class TemporalFilter:
    """The temporal mode's settings (see the module docstring).

    Attributes:
        step: how far the running sketch moves towards each frame's sketch where the input is still
            (1: per-frame; 0.1: about the mean of the last ten frames).
        change: blurred input difference (in [0, 1]) from which the frame's sketch is taken as it is;
            from half of it the step grows linearly.
        blur: box side of the blur on the input difference, pixels.
        reach: a change counts this many pixels around it.
    """

    step: float = 0.1
    change: float = FIGURE_CHANGE
    blur: int = FIGURE_BLUR
    reach: int = FIGURE_REACH

    def __post_init__(self):
        if not 0.0 < self.step <= 1.0:
            raise VideoError(f"the temporal step {self.step} must be in (0, 1]")
        if self.change <= 0:
            raise VideoError(f"the temporal change threshold {self.change} must be positive")

    def weights(self, frame: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(H, W) weight of the frame's own sketch: ``step`` where still, 1 where the input changed.

        Examples:
            >>> f = TemporalFilter(step=0.1, change=0.2, blur=1, reach=0)
            >>> a = torch.zeros(3, 1, 3); b = torch.tensor([0.0, 0.15, 0.5]).expand(3, 1, 3)
            >>> [round(v, 2) for v in f.weights(b, a)[0].tolist()]
            [0.1, 0.55, 1.0]
        """
        half = self.change / 2
        gate = ((change_map(frame, reference, self.blur) - half) / half).clamp(0.0, 1.0)
        gate = spread(gate, self.reach)
        return self.step + (1.0 - self.step) * gate


class _Temporal:
    """The running sketch and the running input of one clip."""

    def __init__(self, settings: TemporalFilter):
        self.settings = settings
        self.sketch: torch.Tensor | None = None
        self.input: torch.Tensor | None = None

    def __call__(self, frame: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        if self.sketch is None or self.sketch.shape != sketch.shape:
            self.sketch, self.input = sketch.clone(), frame.clone()
            return sketch
        weight = self.settings.weights(frame, self.input)
        self.sketch = self.sketch + weight * (sketch - self.sketch)
        self.input = self.input + weight * (frame - self.input)
        return self.sketch


@dataclass
class VideoFigures:
    """Flicker and lag accumulated over a clip's frames (see the module docstring for the definitions).

    Feed every frame in order to :meth:`add`; the figures are pixel-weighted means over the clip.
    """

    flicker_sum: float = 0.0
    per_frame_sum: float = 0.0
    still_pixels: int = 0
    lag_sum: float = 0.0
    changed_pixels: int = 0
    _previous: tuple | None = field(default=None, repr=False)

    def add(self, frame: torch.Tensor, per_frame: torch.Tensor, written: torch.Tensor) -> None:
        """One frame: its input (3, H, W), its own sketch (H, W) and the sketch written (H, W)."""
        previous, self._previous = self._previous, (frame, per_frame, written)
        if previous is None or previous[0].shape != frame.shape:
            return
        changed = change_map(frame, previous[0], FIGURE_BLUR) > FIGURE_CHANGE
        still = spread(changed, FIGURE_REACH) == 0
        self.flicker_sum += float((written - previous[2]).abs()[still].sum())
        self.per_frame_sum += float((per_frame - previous[1]).abs()[still].sum())
        self.still_pixels += int(still.sum())
        self.lag_sum += float((written - per_frame).abs()[changed].sum())
        self.changed_pixels += int(changed.sum())

    def done(self) -> None:
        """Forget the last frame (the sums stay): the clip is over."""
        self._previous = None

    @property
    def flicker(self) -> float:
        """Mean absolute change of the written sketch between consecutive frames, over still pixels."""
        return self.flicker_sum / self.still_pixels if self.still_pixels else 0.0

    @property
    def per_frame_flicker(self) -> float:
        """The same for the per-frame sketches."""
        return self.per_frame_sum / self.still_pixels if self.still_pixels else 0.0

    @property
    def lag(self) -> float:
        """Mean absolute difference between the written and the per-frame sketch, over changed pixels."""
        return self.lag_sum / self.changed_pixels if self.changed_pixels else 0.0

    def merge(self, other: VideoFigures) -> None:
        """Add another clip's sums (for a run's overall figures)."""
        self.flicker_sum += other.flicker_sum
        self.per_frame_sum += other.per_frame_sum
        self.still_pixels += other.still_pixels
        self.lag_sum += other.lag_sum
        self.changed_pixels += other.changed_pixels


# --------------------------------------------------------------------------------------------
# Reading and writing clips
# --------------------------------------------------------------------------------------------


def is_video(path: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`VIDEO_EXTENSIONS` (any case).

    Examples:
        >>> is_video("clips/Walk.MP4"), is_video("anim.gif"), is_video("photo.png")
        (True, True, False)
    """
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("video input needs PyAV: pip install av") from None
    return av


def _first_line(err: BaseException) -> str:
    """An FFmpeg error's reason without its errno and file name; another error's first line."""
    reason = getattr(err, "strerror", None) or str(err)
    return (reason.splitlines() or [type(err).__name__])[0]


def _open_input(av, source: Path):
    if not source.is_file():
        raise VideoError(f"{source} does not exist" if not source.exists() else f"{source} is not a file")
    try:
        container = av.open(str(source), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoError(
            f"{source} is not a readable video ({_first_line(err)}): the file is corrupt, cut off before its index, "
            f"or not a video; give an {', '.join(e.lstrip('.') for e in VIDEO_EXTENSIONS)} file that a player opens"
        ) from None
    if not container.streams.video:
        container.close()
        raise VideoError(
            f"{source} holds no video stream (only {', '.join(s.type for s in container.streams) or 'nothing'}); give a clip with pictures"
        )
    return container


def _encoder(av, suffix: str) -> tuple[str, str, dict[str, str]]:
    """(codec, pixel format, options) for an output container."""
    if suffix == ".gif":
        return "gif", "gray", {}
    if suffix == ".webm":
        return "libvpx-vp9", "yuv420p", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
    for codec, options in (("libx264", {"crf": "18"}), ("h264", {}), ("mpeg4", {"qscale": "2"})):
        try:
            av.codec.Codec(codec, "w")
        except (av.FFmpegError, ValueError):
            continue
        return codec, "yuv420p", options
    raise VideoError(
        f"this PyAV build has no H.264 or MPEG-4 encoder to write {suffix}; install PyAV's wheel (pip install av)"
    )


def _audio_fits(source: Path, target: Path) -> bool:
    """Whether the source's audio can be copied as it is: the same container, or MKV (which takes any codec)."""
    same = source.suffix.lower() == target.suffix.lower() or {source.suffix.lower(), target.suffix.lower()} <= {
        ".mp4",
        ".m4v",
        ".mov",
    }
    return target.suffix.lower() != ".gif" and (same or target.suffix.lower() == ".mkv")


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def _declared_seconds(stream) -> Fraction | None:
    """The video stream's duration as its container declares it (MP4/MOV: the stream; WebM/MKV: a DURATION tag)."""
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    try:
        hours, minutes, seconds = tag.split(":")
        return Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)
    except (AttributeError, ValueError):
        return None


def output_size(height: int, width: int, size: int | None, even: bool) -> tuple[int, int]:
    """The sketch's (height, width): the long side capped at ``size`` (aspect kept), sides rounded down to even when ``even``.

    Examples:
        >>> output_size(480, 640, None, False), output_size(480, 640, 320, True), output_size(49, 65, None, True)
        ((480, 640), (240, 320), (48, 64))
    """
    long_side = max(height, width)
    if size is not None and long_side > size:
        scale = size / long_side
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if even:
        height, width = max(2, height - height % 2), max(2, width - width % 2)
    return height, width


def _fit(frame: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(frame.shape[-2:]) == shape:
        return frame
    out = F.interpolate(frame[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp(0, 1)


@dataclass
class VideoReport:
    """One clip sketched: where from and to, what was kept, and the flicker and lag of the mode used."""

    source: str
    target: str
    mode: str  # "temporal" or "per-frame"
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    truncated: bool
    seconds: float
    flicker: float
    lag: float
    per_frame_flicker: float
    figures: VideoFigures = field(repr=False, default_factory=VideoFigures)

    def to_dict(self) -> dict:
        """The report as JSON-ready values (without the raw sums)."""
        out = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "figures"}
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in out.items()}

    def line(self) -> str:
        """One line for the terminal: frames, rate, size, audio, and the figures."""
        audio = ", audio kept" if self.audio else ""
        cut = ", CUT OFF (the frames that decoded)" if self.truncated else ""
        return (
            f"{self.source}: {self.frames} frames at {self.fps:g} fps, {self.width}x{self.height}{audio}{cut} -> {self.target}; "
            f"{self.mode}: flicker {self.flicker:.4f}, lag {self.lag:.4f} (per-frame flicker {self.per_frame_flicker:.4f})"
        )


def _to_grey(values: torch.Tensor, threshold: float | None) -> torch.Tensor:
    values = values.nan_to_num(1.0).clamp(0.0, 1.0)
    if threshold is not None:
        values = (values >= threshold).float()
    return values


def sketch_video(
    extractor: SketchExtractor,  # noqa: F821 - the API calls this module: annotation only, no import circle
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    size: int | None = None,
    temporal: bool | TemporalFilter = True,
    threshold: float | None = None,
    progress: bool = False,
) -> VideoReport:
    """Sketch every frame of the clip ``source`` into the clip ``target``, streaming (see the module docstring).

    Args:
        extractor: a loaded :class:`~diffsketch.extractor.api.SketchExtractor` (its ``batch_size``
            frames go through the network together).
        source: a video file that FFmpeg reads (:data:`VIDEO_EXTENSIONS`).
        target: the file to write; its extension picks the container (one of :data:`VIDEO_EXTENSIONS`).
            Written beside itself under a temporary name, then renamed: never half a file.
        size: cap on the long side, as for images. None: the clip's own size.
        temporal: the temporal mode (True: default :class:`TemporalFilter`; a filter: its settings)
            or per-frame sketches (False).
        threshold: binarise each written frame at this value (below = ink).
        progress: show a progress bar (frames, frames per second).

    Returns:
        The :class:`VideoReport`. A clip cut off mid-stream keeps the frames that decoded
        (``truncated``, and a logged warning).

    Raises:
        VideoError: the file is missing, corrupt, unsupported or without pictures, nothing decodes,
            or the output cannot be written.
    """
    from tqdm.auto import tqdm

    av = _av()
    source, target = Path(source), Path(target)
    if not is_video(target):
        raise VideoError(
            f"{target}: a sketched video is written as {', '.join(VIDEO_EXTENSIONS)}; name the output with one of them"
        )
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise VideoError(f"--threshold {threshold} must be between 0 and 1")
    settings = TemporalFilter() if temporal is True else temporal or None
    started = time.perf_counter()
    container = _open_input(av, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        with container:
            report = _stream(av, extractor, container, source, target, tmp, size, settings, threshold, progress, tqdm)
        os.replace(tmp, target)
    except (av.FFmpegError, OSError) as err:  # decoding errors are handled inside: this is the output
        raise VideoError(
            f"{source}: writing {target} failed ({_first_line(err)}); check the disk space and the folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _stream(av, extractor, container, source, target, tmp, size, settings, threshold, progress, tqdm) -> VideoReport:
    in_video = container.streams.video[0]
    in_audio = container.streams.audio[0] if container.streams.audio else None
    codec, pix_fmt, options = _encoder(av, target.suffix.lower())
    rate = _frame_rate(in_video)
    expected = in_video.frames or 0
    figures = VideoFigures()
    temporal = _Temporal(settings) if settings is not None else None
    state = {"count": 0, "shape": None, "stream": None, "first_pts": None, "last_pts": None}
    audio_out = None
    truncated = False
    try:
        output = av.open(str(tmp), mode="w")
    except (av.FFmpegError, ValueError) as err:
        raise VideoError(f"cannot write {target} ({_first_line(err)}); check the folder and the extension") from None

    def open_video_stream(height: int, width: int):
        stream = output.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = in_video.time_base
        stream.codec_context.time_base = in_video.time_base
        return stream

    def encode(values: torch.Tensor, pts: int | None) -> None:
        grey = (values * 255.0).round().to(torch.uint8).numpy()
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
        if pts is None or (state["last_pts"] is not None and pts <= state["last_pts"]):
            step = max(1, round(1 / (rate * in_video.time_base))) if in_video.time_base else 1
            pts = 0 if state["last_pts"] is None else state["last_pts"] + step
        state["last_pts"] = pts
        if state["first_pts"] is None:
            state["first_pts"] = pts
        frame.pts, frame.time_base = pts, in_video.time_base
        for packet in state["stream"].encode(frame):
            output.mux(packet)

    def flush(pending: list) -> None:
        if not pending:
            return
        sketches = extractor.sketch_tensors([image for image, _ in pending], tile=0)  # whole frames, batched
        for (image, pts), sketch in zip(pending, sketches):
            own = torch.from_numpy(np.asarray(sketch, dtype=np.float32))
            written = temporal(image, own) if temporal is not None else own
            own_out, written_out = _to_grey(own, threshold), _to_grey(written, threshold)
            figures.add(image, own_out, written_out)
            encode(written_out, pts)
        bar.update(len(pending))
        pending.clear()

    with output, tqdm(total=expected or None, disable=not progress, unit="frame", desc=source.name) as bar:
        if not in_video.width or not in_video.height:
            raise VideoError(f"{source}: its video stream has no picture size; the file is corrupt")
        state["shape"] = output_size(in_video.height, in_video.width, size, even=pix_fmt == "yuv420p")
        state["stream"] = open_video_stream(*state["shape"])  # every stream before the first packet is written
        if in_audio is not None and not _audio_fits(source, target):
            log.warning("%s: its audio (%s) is not copied into a %s file; the sketch is written without it (keep the "
                        "container, or write .mkv, to keep the sound)", source, in_audio.codec_context.name, target.suffix)  # fmt: skip
        elif in_audio is not None:
            try:
                audio_out = output.add_stream_from_template(in_audio)
            except (av.FFmpegError, ValueError) as err:
                log.warning("%s: its audio (%s) cannot be copied into %s (%s); the sketch is written without it",
                            source, in_audio.codec_context.name, target.suffix, _first_line(err))  # fmt: skip
                audio_out = None
        pending: list = []

        def take(frames) -> None:
            for frame in frames:
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255.0
                pending.append((_fit(image, state["shape"]), frame.pts))
                state["count"] += 1
                if len(pending) >= extractor.batch_size:
                    flush(pending)

        packets = container.demux(*([in_video] + ([in_audio] if audio_out is not None else [])))
        error = None
        while True:
            try:
                packet = next(packets)
                frames = packet.decode() if packet.stream.index == in_video.index else None
            except StopIteration:
                break
            except av.FFmpegError as err:  # a cut-off or damaged file: keep what decoded, and what the decoder holds
                error = err
                break
            if frames is not None:
                take(frames)
            elif packet.dts is not None:
                packet.stream = audio_out
                output.mux(packet)
        if error is not None:
            truncated = True
            try:
                take(in_video.codec_context.decode(None))
            except av.FFmpegError:
                pass
            if state["count"]:
                log.warning("%s is cut off or damaged after %d frames (%s); the sketch keeps the frames that decoded",
                            source, state["count"], _first_line(error))  # fmt: skip
        if state["count"] == 0:
            reason = f" ({_first_line(error)})" if error is not None else ""
            raise VideoError(
                f"{source}: no frame could be decoded{reason}; the file is empty, corrupt or cut off before its first frame"
            )
        flush(pending)
        for packet in state["stream"].encode():
            output.mux(packet)
    declared = _declared_seconds(in_video)
    first, last = state["first_pts"], state["last_pts"]
    decoded = (last - first) * in_video.time_base + 1 / rate if first is not None and in_video.time_base else None
    short = (expected and state["count"] < expected) or (
        declared and decoded is not None and decoded < declared - Fraction(3, 2) / rate
    )
    if not truncated and short:
        truncated = True
        log.warning("%s declares %s but only %d frames (%.2f s) decoded: the file is cut off; the sketch keeps the frames that decoded",
                    source, f"{expected} frames" if expected else f"{float(declared):.2f} s", state["count"], float(decoded or 0))  # fmt: skip
    height, width = state["shape"]
    figures.done()
    return VideoReport(
        source=str(source), target=str(target), mode="temporal" if settings is not None else "per-frame",
        frames=state["count"], fps=float(rate), width=width, height=height, audio=audio_out is not None,
        truncated=truncated, seconds=0.0, flicker=figures.flicker, lag=figures.lag,
        per_frame_flicker=figures.per_frame_flicker, figures=figures,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Many clips: the command line's layer
# --------------------------------------------------------------------------------------------


def split_videos(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Separate video files from the other inputs of ``diffsketch extract``.

    A named file with a video extension is a video; a glob pattern gives its video matches, and
    stays among the other inputs when it also matches anything else. Folders stay with the other
    inputs (they give their images).

    Returns:
        (videos in the order given, without repeats; the other inputs).
    """
    videos: list[Path] = []
    others: list[str] = []
    for arg in map(str, inputs):
        if _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            found = [Path(m) for m in matches if is_video(m) and Path(m).is_file()]
            videos += found
            if len(found) < len(matches) or not matches:
                others.append(arg)
        elif is_video(arg) and not Path(arg).is_dir():
            videos.append(Path(arg))
        else:
            others.append(arg)
    unique = list(dict.fromkeys(videos))
    return unique, others


@dataclass
class VideoRun:
    """What :func:`extract_videos` did: a report per clip sketched, outputs skipped, messages for clips that failed."""

    reports: list[VideoReport] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    summary: Path | None = None

    def overall(self) -> VideoFigures:
        """The figures over every clip sketched (pixel-weighted)."""
        total = VideoFigures()
        for report in self.reports:
            total.merge(report.figures)
        return total


def extract_videos(
    extractor,
    videos: list[Path],
    out: str | os.PathLike,
    *,
    size: int | None = None,
    temporal: bool = True,
    threshold: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VideoRun:
    """Sketch each clip into ``out/<name>`` (same name and container) and write ``out/summary.json``.

    ``summary.json`` holds the mode and the overall ``flicker``, ``lag`` and ``per_frame_flicker``,
    and under ``videos`` each clip's :class:`VideoReport`. A clip that fails is reported and the
    others go on; an existing output is skipped unless ``overwrite``.

    Args:
        extractor: a loaded :class:`~diffsketch.extractor.api.SketchExtractor`.
        videos: the clips, as :func:`split_videos` gives them.
        out: the output folder.
        size, temporal, threshold, progress: as for :func:`sketch_video`.
        overwrite: replace existing outputs instead of skipping them.

    Returns:
        The :class:`VideoRun` (its ``summary`` is None when no clip was sketched).
    """
    out = Path(out)
    run = VideoRun()
    claimed: dict[Path, Path] = {}
    for source in videos:
        target = out / source.name
        other = claimed.setdefault(target, source)
        if other != source:
            run.failed.append(f"{source}: not sketched, its output {target} would overwrite the sketch of {other}; "
                              "rename one of them or extract them into different --out folders")  # fmt: skip
            continue
        if target.exists() and not overwrite:
            run.skipped.append(target)
            continue
        try:
            run.reports.append(
                sketch_video(
                    extractor, source, target, size=size, temporal=temporal, threshold=threshold, progress=progress
                )
            )
        except VideoError as err:
            run.failed.append(str(err))
    if run.reports:
        total = run.overall()
        summary = {
            "mode": "temporal" if temporal else "per-frame",
            "flicker": round(total.flicker, 6),
            "lag": round(total.lag, 6),
            "per_frame_flicker": round(total.per_frame_flicker, 6),
            "definitions": {
                "flicker": "mean |sketch(t) - sketch(t-1)| over pixels where the input did not change (sketch in [0, 1], 1 = paper)",
                "lag": "mean |sketch(t) - per-frame sketch(t)| over pixels where the input changed",
                "changed": f"max over RGB of |input(t) - input(t-1)|, box-blurred over {FIGURE_BLUR} px, above {FIGURE_CHANGE}",
                "still": f"no changed pixel within {FIGURE_REACH} px",
            },
            "videos": [report.to_dict() for report in run.reports],
        }
        run.summary = out / SUMMARY_FILE
        tmp = run.summary.with_name(f".{SUMMARY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, run.summary)
    return run

"""Video in, video out: `diffsketch extract clip.mp4` and `SketchExtractor.sketch_video` on tiny clips.

The clips (64x48, 20 frames) are written here with PyAV directly; the oracles are PyAV's own reading
of the files (frame counts, rates, audio packets), the student's ``Student.forward`` on each decoded
frame, and the flicker figure computed here with SciPy from its definition.
"""

import json
import logging
import os

import av
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.evaluation.data import PHOTOS
from diffsketch.extractor import SketchExtractor, TemporalFilter, VideoError, split_videos
from diffsketch.student.network import load_student

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
W, H, N = 64, 48, 20


def write_clip(path, frames, rate=25, audio=False, options=None, container_options=None):
    """Encode (H, W, 3) uint8 frames with PyAV: H.264 (MP4, MOV, MKV), VP9 (WebM) or a GIF; a 440 Hz tone as audio."""
    suffix = str(path).rsplit(".", 1)[-1]
    codec, pix_fmt = {"gif": ("gif", "rgb8"), "webm": ("libvpx-vp9", "yuv420p")}.get(suffix, ("libx264", "yuv420p"))
    with av.open(str(path), "w", options=container_options or {}) as out:
        video = out.add_stream(codec, rate=rate, options=options or {})
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        if audio:
            sound = out.add_stream("libopus" if suffix == "webm" else "aac", rate=48000)
            sound.layout = "mono"
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio:
            size = sound.codec_context.frame_size or 1024
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000 * len(frames) // rate) / 48000)).astype(np.float32)
            for start in range(0, len(tone), size):
                chunk = np.zeros(size, np.float32)
                chunk[: len(tone[start : start + size])] = tone[start : start + size]
                samples = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 48000, start
                out.mux(sound.encode(samples))
            out.mux(sound.encode())
    return path


def moving_square(noise=0.03, seed=0):
    """A static photo (chelsea at 64x48) with sensor noise on every frame and a red square moving right 2 px a frame."""
    with Image.open(PHOTOS["chelsea"].source_path()) as im:
        background = np.asarray(im.convert("RGB").resize((W, H), Image.BILINEAR)).astype(np.float32) / 255
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(N):
        image = background.copy()
        image[16:32, 4 + 2 * i : 16 + 2 * i] = [0.9, 0.2, 0.1]
        image = image + rng.normal(0, noise, image.shape)
        frames.append((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    return frames


def decode(path):
    """Every frame of a clip as (H, W, 3) uint8, with PyAV."""
    with av.open(str(path)) as clip:
        return [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)]


def clip_info(path):
    with av.open(str(path)) as clip:
        video = clip.streams.video[0]
        audio = [bytes(p) for p in clip.demux(audio=0) if p.size] if clip.streams.audio else None
        return {"rate": video.average_rate, "size": (video.width, video.height), "audio": audio}


@pytest.fixture(scope="module")
def extractor(student):
    return SketchExtractor.load(student, "cpu", "torch", precision="fp32", batch_size=4)


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "square.mp4", moving_square(), options={"crf": "12"})


def extract(*args):
    return runner.invoke(app, ["extract", *map(str, args), "--no-progress", "--precision", "fp32"])


# --- the command line --------------------------------------------------------------------------------


def test_cli_keeps_frames_rate_and_audio_and_writes_the_figures(student, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", moving_square(), rate=12, audio=True)
    result = extract(clip, "--out", tmp_path / "out", "--model", student)
    assert result.exit_code == 0, result.output
    written = tmp_path / "out" / "clip.mp4"
    assert len(decode(written)) == N
    source, sketched = clip_info(clip), clip_info(written)
    assert sketched["rate"] == 12 and sketched["size"] == (W, H)
    assert sketched["audio"] == source["audio"] and len(source["audio"]) > 10  # the audio packets copied byte for byte
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "temporal" and {"flicker", "lag"} <= summary.keys()
    assert summary["videos"][0]["frames"] == N and summary["videos"][0]["audio"] is True
    assert f"flicker {summary['flicker']:.4f}" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clip.mp4",
        "summary.json",
    ]  # no temporary file left

    result = extract(clip, "--out", tmp_path / "out", "--model", student, "--no-temporal", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mode"] == "per-frame"


@pytest.mark.parametrize("suffix", ["webm", "mov", "gif", "mkv"])
def test_every_container_keeps_frame_count_and_rate(extractor, tmp_path, suffix):
    clip = write_clip(tmp_path / f"clip.{suffix}", moving_square()[:12], rate=10)
    report = extractor.sketch_video(clip, tmp_path / f"out.{suffix}")
    assert len(decode(tmp_path / f"out.{suffix}")) == 12 == report.frames
    assert clip_info(tmp_path / f"out.{suffix}")["rate"] == 10


def test_audio_that_the_output_cannot_hold_is_dropped_with_a_warning(extractor, tmp_path, caplog):
    clip = write_clip(tmp_path / "clip.mp4", moving_square()[:6], audio=True)
    with caplog.at_level(logging.WARNING):
        report = extractor.sketch_video(clip, tmp_path / "out.gif")
    assert not report.audio and len(decode(tmp_path / "out.gif")) == 6
    assert "written without it" in caplog.text


def test_per_frame_output_is_the_students_sketch_of_each_frame(student, extractor, noisy_clip, tmp_path):
    extractor.sketch_video(noisy_clip, tmp_path / "out.mp4", temporal=False)
    model, _ = load_student(student)
    frames = torch.from_numpy(np.stack(decode(noisy_clip))).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        expected = model(frames)[:, 0].numpy()
    written = np.stack(decode(tmp_path / "out.mp4"))[..., 0].astype(np.float32) / 255  # grey: R = G = B
    assert written.shape == expected.shape
    assert np.abs(written - expected).mean() < 0.02  # H.264 at CRF 18 and the grey's YUV range, nothing more


def test_size_caps_the_long_side_to_even_sides(extractor, noisy_clip, tmp_path):
    report = extractor.sketch_video(noisy_clip, tmp_path / "small.mp4", size=41)  # 64x48 -> 41x31 -> even: 40x30
    assert clip_info(tmp_path / "small.mp4")["size"] == (40, 30) == (report.width, report.height)
    report = extractor.sketch_video(noisy_clip, tmp_path / "small.gif", size=41)  # a GIF takes odd sides
    assert clip_info(tmp_path / "small.gif")["size"] == (41, 31)


def test_frames_go_through_the_network_in_batches(extractor, noisy_clip, tmp_path, monkeypatch):
    sizes = []
    original = extractor.sketch_tensors
    monkeypatch.setattr(extractor, "sketch_tensors", lambda images, **kw: sizes.append(len(images)) or original(images, **kw))
    extractor.sketch_video(noisy_clip, tmp_path / "out.mp4")
    assert sizes == [4] * 5  # batch_size 4, 20 frames


def test_videos_are_told_apart_from_images(tmp_path):
    for name in ["a.mp4", "b.GIF", "c.png", "d.webm"]:
        (tmp_path / name).write_bytes(b"x")
    videos, others = split_videos(
        [str(tmp_path / "a.mp4"), str(tmp_path / "*"), str(tmp_path / "c.png"), str(tmp_path)]
    )
    assert videos == [tmp_path / "a.mp4", tmp_path / "b.GIF", tmp_path / "d.webm"]
    assert others == [str(tmp_path / "*"), str(tmp_path / "c.png"), str(tmp_path)]
    videos, others = split_videos([str(tmp_path / "*.mp4")])
    assert videos == [tmp_path / "a.mp4"] and others == []


# --- broken files --------------------------------------------------------------------------------------


def test_corrupt_and_unsupported_files_get_one_line(student, extractor, tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    result = extract(tmp_path / "noise.mp4", "--out", tmp_path / "out", "--model", student)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "noise.mp4 is not a readable video" in result.output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []

    with av.open(str(tmp_path / "tone.mp4"), "w") as out:  # audio only
        sound = out.add_stream("aac", rate=48000)
        sound.layout = "mono"
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 48000, 0
        out.mux(sound.encode(samples))
        out.mux(sound.encode())
    with pytest.raises(VideoError, match="holds no video stream"):
        extractor.sketch_video(tmp_path / "tone.mp4", tmp_path / "out" / "tone.mp4")
    with pytest.raises(VideoError, match="does not exist"):
        extractor.sketch_video(tmp_path / "missing.mp4", tmp_path / "out" / "missing.mp4")


@pytest.mark.parametrize("suffix", ["webm", "mp4"])
def test_a_cut_off_clip_keeps_the_frames_that_decode(extractor, tmp_path, caplog, suffix):
    faststart = {"movflags": "faststart"} if suffix == "mp4" else None  # the MP4's index first, so that a cut keeps it
    whole = write_clip(tmp_path / f"whole.{suffix}", moving_square(), container_options=faststart)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) * 8 // 10])
    decodable = 0
    with av.open(str(cut)) as clip:
        try:
            for packet in clip.demux(video=0):
                decodable += len(packet.decode())
        except av.FFmpegError:  # the packet cut in the middle; then the frames the decoder still holds
            decodable += len(clip.streams.video[0].codec_context.decode(None))
    assert 0 < decodable < N
    with caplog.at_level(logging.WARNING):
        report = extractor.sketch_video(cut, tmp_path / f"out.{suffix}")
    assert report.truncated and report.frames == decodable == len(decode(tmp_path / f"out.{suffix}"))
    assert "cut off" in caplog.text


# --- temporal mode -------------------------------------------------------------------------------------


def flicker(sketches, frames):
    """Mean |s(t) - s(t-1)| where no pixel within 4 px changed by more than 0.1 (max over RGB, 5x5 box mean)."""
    total = count = 0
    for t in range(1, len(frames)):
        change = np.abs(frames[t].astype(np.float64) - frames[t - 1]).max(axis=2) / 255
        changed = (
            ndimage.uniform_filter(change, 5, mode="constant")
            / ndimage.uniform_filter(np.ones_like(change), 5, mode="constant")
            > 0.1
        )
        still = ~ndimage.binary_dilation(changed, np.ones((9, 9), bool))
        total += np.abs(sketches[t] - sketches[t - 1])[still].sum()
        count += still.sum()
    return total / count


def test_temporal_mode_halves_flicker_and_follows_motion(student, extractor, noisy_clip, tmp_path):
    per_frame = extractor.sketch_video(noisy_clip, tmp_path / "per_frame.mp4", temporal=False)
    temporal = extractor.sketch_video(noisy_clip, tmp_path / "temporal.mp4")
    assert temporal.mode == "temporal" and per_frame.mode == "per-frame" and per_frame.lag == 0
    assert per_frame.flicker > 0.01  # the noise does make per-frame sketches flicker
    assert temporal.flicker <= 0.5 * per_frame.flicker
    assert temporal.lag <= 1.2 * per_frame.flicker
    assert temporal.per_frame_flicker == pytest.approx(per_frame.flicker)

    # the figure against its definition, on the student's own sketches of the decoded frames
    frames = decode(noisy_clip)
    model, _ = load_student(student)
    with torch.inference_mode():
        sketches = model(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    assert per_frame.flicker == pytest.approx(flicker(sketches, frames), rel=1e-3)

    # and what is written: the decoded temporal clip flickers less than half as much as the per-frame one
    written = {name: np.stack(decode(tmp_path / f"{name}.mp4"))[..., 0] / 255.0 for name in ("per_frame", "temporal")}
    assert flicker(written["temporal"], frames) <= 0.5 * flicker(written["per_frame"], frames)


def test_temporal_mode_follows_a_cut(extractor, tmp_path):
    """A scene cut (every pixel changes) gives the new frame's own sketch at once."""
    first, second = moving_square(noise=0.0)[0], moving_square(noise=0.0)[0][::-1].copy()
    clip = write_clip(tmp_path / "cut.mkv", [first] * 6 + [second] * 4, options={"crf": "0"})
    out = tmp_path / "out.mkv"
    report = extractor.sketch_video(clip, out, temporal=TemporalFilter(step=0.05))
    alone = extractor.sketch_video(clip, tmp_path / "alone.mkv", temporal=False)
    assert report.lag <= 0.01 and alone.frames == report.frames == 10
    after_cut = [
        np.abs(a[..., 0].astype(int) - b[..., 0]).mean()
        for a, b in zip(decode(out)[6:], decode(tmp_path / "alone.mkv")[6:])
    ]
    assert max(after_cut) < 2  # grey levels: the same sketch, whatever the codec rounds


def test_temporal_filter_settings_are_checked():
    with pytest.raises(VideoError, match="step"):
        TemporalFilter(step=0)
    with pytest.raises(VideoError, match="change"):
        TemporalFilter(change=0)


def test_the_output_must_be_a_video_name(extractor, noisy_clip, tmp_path):
    with pytest.raises(VideoError, match="name the output"):
        extractor.sketch_video(noisy_clip, tmp_path / "out.png")
    assert not os.listdir(tmp_path)

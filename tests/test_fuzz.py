"""Fuzzing (issue 17): mutated params files and broken image files end in one clean message, never a traceback.

Hypothesis drives mutations of the shipped params.yaml through ``load_params`` and the CLI, and broken,
truncated and mislabelled image files through ``diffsketch extract`` and the example checks of ``train``.
Every run is derandomised with a fixed example budget, so CI sees the same examples each time. The plain
tests at the end keep the concrete examples the fuzzing found.
"""

import copy
import functools
import io
import re
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from typer.testing import CliRunner

from conftest import REPO
from diffsketch.cli.main import app
from diffsketch.core.params import Params, ParamsError, load_params, parse_params

runner = CliRunner()
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())
PLACEHOLDER = "__fuzzed_value__"


def fuzz(examples: int):
    """A fixed, reproducible budget: the same examples on every run, no example database written."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


# --------------------------------------------------------------------------------------------
# params.yaml
# --------------------------------------------------------------------------------------------


def _paths(node, prefix=()) -> list[tuple]:
    """Every key and list-index path of a params tree, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, child in items:
        out += [prefix + (key,), *_paths(child, prefix + (key,))]
    return out


def _get(node, path):
    for part in path:
        node = node[part]
    return node


PATHS = _paths(SHIPPED)
MAPPINGS = [()] + [p for p in PATHS if isinstance(_get(SHIPPED, p), dict)]
KEYS = [p for p in PATHS if isinstance(_get(SHIPPED, p[:-1]), dict)]  # deletable: keys, not list items

HUGE = st.integers(min_value=10**18, max_value=10**400) | st.integers(min_value=-(10**400), max_value=-(10**18))
SCALARS = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | HUGE | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24) | st.sampled_from(["full", "auto", "on", "off", "", "xdog", "data/eval", "cuda:x", "ünïcødé ✏️"])
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=6)  # fmt: skip
# YAML scalars that parse but that PyYAML cannot build (dates out of range, bad tags), and other odd numbers
RAW_SCALARS = st.sampled_from([
    "2020-13-45", "2001-02-30", "9999-12-31 23:59:60", "!!int x", "!!float x", "!!timestamp x", "0x_", "0b2", "0o9",
    "1.0e+400", "-.inf", ".nan", "~", "1_000", "!!binary ###", "!!set {a}", "2020-01-01", "!!str", "'quoted'",
])  # fmt: skip
BROKEN_LINES = st.sampled_from([
    "key: [unclosed", "{", "  bad indent: 1", "\tx: 1", ": :", "- stray item", "*undefined", "'open quote", "x: @reserved",
    "%YAML 9.9", "? complex", "x: !!python/object:os.system ''", "a: b: c", "&anchor", "--- [1, 2]",
]) | st.text(max_size=20)  # fmt: skip


def _dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@st.composite
def mutated_params(draw) -> tuple[str, list[tuple], str]:
    """(params.yaml text, the mutations as (key path, value put there), the kind of mutation), from the shipped params.yaml."""
    data = copy.deepcopy(SHIPPED)
    kind = draw(st.sampled_from(["value", "unknown", "delete", "raw", "syntax", "top"]))
    if kind == "top":  # a top level that is not a mapping of sections
        return _dump(draw(VALUES.filter(lambda v: not isinstance(v, dict)))), [], kind
    touched = []
    for _ in range(draw(st.integers(1, 2)) if kind != "syntax" else 0):
        if kind in ("value", "raw"):
            path = draw(st.sampled_from(PATHS))
            value = PLACEHOLDER if kind == "raw" else draw(VALUES)
        elif kind == "unknown":
            parent = draw(st.sampled_from(MAPPINGS))
            path, value = parent + (draw(st.text(min_size=1, max_size=12)),), draw(VALUES)
        else:
            path, value = draw(st.sampled_from(KEYS)), None
        try:
            node = _get(data, path[:-1])
            if kind == "delete":
                del node[path[-1]]
            elif kind != "unknown" or (isinstance(node, dict) and path[-1] not in node):
                node[path[-1]] = value
            else:
                continue
        except (KeyError, IndexError, TypeError):  # below a key the first mutation replaced or deleted
            continue
        touched.append((path, value))
    text = _dump(data)
    if kind == "raw":
        text = text.replace(PLACEHOLDER, draw(RAW_SCALARS))
    if kind == "syntax":
        lines = text.splitlines()
        lines.insert(draw(st.integers(0, len(lines))), draw(BROKEN_LINES))
        text = "\n".join(lines)
    return text, touched, kind


def names(message: str, path: tuple, value=None) -> bool:
    """True when ``message`` names, as a whole dotted key (``train.lr: ...``), ``path``, one of its parent keys
    (a check across a section) or a key inside the ``value`` put there."""
    inside = [path + rest for rest in _paths(value)]
    keys = [".".join(map(str, key)) for key in [*inside, *(path[:n] for n in range(len(path), 0, -1))]]
    return any(re.search(rf"(?<![\w.]){re.escape(key)}(:| \(line)", message) for key in keys)


def _is_yaml(text: str) -> bool:
    """PyYAML's own verdict (the reference parser): does ``text`` parse as YAML at all?"""
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False
    return True


def check_outcome(text: str, touched: list[tuple], kind: str, message: str) -> None:
    """A clean ParamsError names a mutated key (or the line, for text that is not YAML) and holds no traceback."""
    assert "Traceback" not in message and len(message) < 4000, message
    if not _is_yaml(text):
        assert "not valid YAML" in message and re.search(r"line \d+", message), message
    elif kind == "top":
        assert "must be a mapping" in message, message
    elif kind != "syntax":  # an inserted line that is still YAML can add or shadow any key
        assert any(names(message, path, value) for path, value in touched), (touched, message)


@fuzz(150)
@given(mutated_params())
def test_mutated_params_load_or_name_the_key(case):
    text, touched, kind = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_bytes(text.encode("utf-8"))
        try:
            params = load_params(path)
        except ParamsError as err:
            check_outcome(text, touched, kind, str(err))
        else:
            assert isinstance(params, Params)
            Params.model_validate(params.model_dump())  # what loaded is valid per the schema, dumped and read again


@fuzz(25)
@given(mutated_params())
def test_mutated_params_through_the_cli(case):
    """`train` validates its params first, then stops cleanly at the missing timesteps file."""
    text, touched, kind = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_bytes(text.encode("utf-8"))
        missing = Path(folder) / "no-timesteps.json"
        result = runner.invoke(app, ["train", "--params", str(path), "--timesteps", str(missing), "--no-progress"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("error: "), result.output
    if "no-timesteps.json not found" not in result.output:
        check_outcome(text, touched, kind, result.output)


@fuzz(40)
@given(st.sampled_from(PATHS), st.text(max_size=6), RAW_SCALARS | BROKEN_LINES | st.text(max_size=12))
def test_fuzzed_overrides_are_clean(path, suffix, raw):
    """``--set key=value`` with any key below any param and any value text: loads, or one message naming the key."""
    key = ".".join(map(str, path)) + (f".{suffix}" if suffix else "")
    try:
        load_params(REPO / "params.yaml", [f"{key}={raw}"])
    except ParamsError as err:
        message = str(err)
        assert "Traceback" not in message
        assert key in message or names(message, path), message


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@functools.cache
def _photo(width: int = 48, height: int = 40) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((width, height))


def _with_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares another size (its CRC fixed, so only the pixel data disagrees)."""
    header = bytearray(png[16:29])  # IHDR: width, height, depth, colour type, compression, filter, interlace
    header[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header)) & 0xFFFFFFFF)
    return png[:16] + bytes(header) + crc + png[33:]


MODES = {  # PIL mode -> a format that stores it (all named .png below: the loader must go by the content)
    "I;16": "PNG", "LA": "PNG", "P": "PNG", "1": "PNG", "RGBA": "PNG", "L": "PNG",
    "CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "I": "TIFF",
}  # fmt: skip
DIMENSION = st.integers(0, 2**31 - 1)


@st.composite
def image_file(draw, width: int = 48, height: int = 40) -> tuple[str, bytes]:
    """(file suffix, bytes): random, truncated, damaged, mislabelled, odd-mode, empty or huge-header image files
    made from a ``width`` x ``height`` photo."""
    png, jpeg = _encoded(_photo(width, height), "PNG"), _encoded(_photo(width, height), "JPEG")
    kind = draw(st.sampled_from(["random", "truncated", "damaged", "renamed", "mode", "empty", "huge"]))
    suffix = draw(st.sampled_from([".png", ".jpg"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=600))
    if kind == "truncated":
        source = draw(st.sampled_from([png, jpeg]))
        return suffix, source[: len(source) * draw(st.integers(0, 99)) // 100]  # a share: any offset, not mostly the first bytes
    if kind == "damaged":
        data = bytearray(draw(st.sampled_from([png, jpeg])))
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return suffix, bytes(data)
    if kind == "renamed":
        return ".png", jpeg
    if kind == "mode":
        mode = draw(st.sampled_from(sorted(MODES)))
        image = _photo(draw(st.integers(1, 40)), draw(st.integers(1, 40)))
        image = image.convert("L").convert(mode) if mode in ("I;16", "I", "F") else image.convert(mode)
        return ".png", _encoded(image, MODES[mode])
    if kind == "empty":
        return suffix, b""
    # a header declaring a size PIL refuses outright (a decompression bomb), or a small one the data does not fill
    width, height = draw(st.tuples(DIMENSION, DIMENSION).filter(
        lambda s: s[0] * s[1] > 2 * Image.MAX_IMAGE_PIXELS or s[0] * s[1] <= 2**16))  # fmt: skip
    return ".png", _with_size(png, width, height)


def displayed_size(path: Path) -> tuple[int, int] | None:
    """The test's own oracle: (width, height) as displayed when PIL decodes the whole file, else None."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).size
    except Exception:  # noqa: BLE001 - whatever PIL raises, the file is unreadable
        return None


def _smallest_side(student_path) -> int:
    """Each side must exceed 2 ** downsamples (and reach 4, for the 7x7 stem's padding)."""
    from diffsketch.student.network import load_student

    return max(2 ** load_student(student_path)[0].config.downsamples + 1, 4)


@pytest.mark.usefixtures("one_thread")
@fuzz(50)
@given(st.lists(image_file(), min_size=1, max_size=3))
def test_extract_reports_bad_files_and_sketches_the_rest(student, files):
    min_side = _smallest_side(student)
    with tempfile.TemporaryDirectory() as folder:
        src, out = Path(folder) / "in", Path(folder) / "out"
        src.mkdir()
        _photo().save(src / "good.png")
        for i, (suffix, data) in enumerate(files):
            (src / f"bad{i}{suffix}").write_bytes(data)
        result = runner.invoke(app, ["extract", str(src), "-o", str(out), "-m", str(student), "--no-progress", "--precision", "fp32"])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output
        expected, failed = {}, []
        for source in sorted(src.iterdir()):
            size = displayed_size(source)
            if size is not None and min(size) >= min_side:
                expected[source.stem + ".png"] = size
            else:
                failed.append(source.name)
        assert sorted(p.name for p in out.rglob("*")) == sorted(expected)  # no output (or temporary file) for a bad input
        for name, size in expected.items():
            with Image.open(out / name) as sketch:
                sketch.load()  # complete, not cut short
                assert (sketch.mode, sketch.size) == ("L", size)
        assert result.exit_code == (1 if failed else 0), result.output
        for name in failed:
            assert name in result.output, result.output


@pytest.fixture(scope="module")
def tokenizer_once():
    """The example checks build the CLIP tokenizer on each call (0.2 s); build it once for the fuzzing."""
    from diffsketch.training import example
    from diffsketch.diffusion.models import clip_tokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(example, "clip_tokenizer", functools.cache(clip_tokenizer))
        yield


@pytest.mark.usefixtures("tokenizer_once")
@fuzz(60)
@given(image_file(48, 48), st.sampled_from(["example.image", "example.sketch"]))  # square: a generated source image is
def test_a_bad_example_file_is_refused_before_any_model_loads(file, param):
    """The example is one required input: a file training could not read is refused by the early check."""
    from diffsketch.core import images
    from diffsketch.training.example import ExampleError, check_example

    suffix, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"example{suffix}"
        path.write_bytes(data)
        section = {"image": str(path), "sketch": "xdog"} if param == "example.image" else {"image": None, "sketch": str(path)}
        params = parse_params({"example": section, "sample": {"resolution": 64}})
        try:
            check_example(params)
        except ExampleError as err:
            assert param in str(err) and str(path) in str(err) and "Traceback" not in str(err), str(err)
            return
        assert displayed_size(path) is not None, "an unreadable file passed the early check"
        # what build_example reads after the model has loaded must now work
        if param == "example.image":
            images.load_image(path, 64)
        else:
            images.load_sketch(path, 64)


# --------------------------------------------------------------------------------------------
# Regressions: the concrete examples the fuzzing found
# --------------------------------------------------------------------------------------------


def _params_file(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(callable_, *args) -> str:
    with pytest.raises(ParamsError) as err:
        callable_(*args)
    return str(err.value)


def test_a_union_param_is_named_by_its_key_alone():
    """pydantic's union members (constrained-int, literal['full']) and dict-key markers are not part of the key."""
    message = _error(parse_params, {"sample": {"pool": "x"}})
    assert message.splitlines()[1].startswith("  - sample.pool: ") and len(message.splitlines()) == 2, message
    assert "'full'" in message and "constrained-int" not in message and "literal[" not in message
    message = _error(parse_params, {"evaluate": {"weights": {"foo": "w.pth"}}})
    assert "  - evaluate.weights.foo: " in message and "[key]" not in message, message


@pytest.mark.parametrize("value", ["2020-13-45", "!!int x", "0x_", "!!timestamp x"])
def test_a_yaml_value_pyyaml_cannot_build_names_the_key_and_line(tmp_path, value):
    text = (REPO / "params.yaml").read_text().replace("  lr: 0.001", f"  lr: {value}")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith(f"  lr: {value}"))
    message = _error(load_params, _params_file(tmp_path, text))
    assert "train.lr" in message and f"line {line}" in message, message


def test_values_json_cannot_hold_are_validated_not_crashed(tmp_path):
    """Dates, bytes and sets from YAML once crashed the overrides' JSON copy (TypeError)."""
    message = _error(load_params, _params_file(tmp_path, "example:\n  prompt: 2020-01-01\ntrain:\n  lr: !!binary AAAA\n"))
    assert "example.prompt: Input should be a valid string" in message and "train.lr: " in message, message
    assert load_params(_params_file(tmp_path, "eval_data:\n  photos: !!set {camera}\n")).eval_data.photos == ["camera"]
    message = _error(load_params, _params_file(tmp_path, "eval_data:\n  photos: &a [*a]\n"))  # a list holding itself
    assert "eval_data.photos.0: " in message, message


@pytest.mark.parametrize("key, value", [("train.lr", ".inf"), ("sample.guidance", "1.0e+400"), ("losses.l1", ".nan")])
def test_non_finite_numbers_are_refused(tmp_path, key, value):
    section, leaf = key.split(".")
    message = _error(load_params, _params_file(tmp_path, f"{section}:\n  {leaf}: {value}\n"))
    assert f"  - {key}: Input should be a finite number" in message, message


def test_a_params_file_that_is_not_utf8_is_a_clean_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes("example:\n  prompt: caf\xe9\n".encode("latin-1"))
    assert "UTF-8" in _error(load_params, path)


def test_a_long_value_is_cut_in_the_message():
    message = _error(parse_params, {"train": {"lr": "x" * 5000}})
    assert "train.lr" in message and len(message) < 300 and "..." in message, message


def test_overrides_with_bad_yaml_or_below_a_value_are_clean_errors(tmp_path):
    message = _error(load_params, REPO / "params.yaml", ["train.lr=["])
    assert "--set train.lr=[" in message and "not valid YAML" in message, message
    message = _error(load_params, REPO / "params.yaml", ["train.lr.x=1"])
    assert "train.lr" in message and "not a section" in message, message
    result = runner.invoke(app, ["train", "--params", str(REPO / "params.yaml"), "--set", "train.lr=[", "--no-progress"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "--set train.lr=[" in result.output


@pytest.mark.usefixtures("tokenizer_once")
def test_a_truncated_jpeg_example_is_refused_before_the_model_loads(tmp_path):
    """verify() does not decode JPEG data: a cut-off JPEG once passed the early check and failed after the model loaded."""
    from diffsketch.training.example import ExampleError, check_example

    jpeg = _encoded(_photo(64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[: len(jpeg) // 2])
    for section in ({"image": str(path), "sketch": "xdog"}, {"image": None, "sketch": str(path)}):
        param = "example.image" if section["image"] else "example.sketch"
        with pytest.raises(ExampleError, match=rf"{re.escape(param)}: .*cut\.jpg.*truncated"):
            check_example(parse_params({"example": section}))


def test_a_lazily_opened_broken_pil_image_is_a_clean_error(student, tmp_path):
    """A PIL image handed to the API decodes on first use: a truncated one once leaked PIL's OSError."""
    from diffsketch.extractor.api import SketchExtractor
    from diffsketch.core.images import ImageError

    png = _encoded(_photo(), "PNG")
    extractor = SketchExtractor.load(student, "cpu", "torch", precision="fp32")
    with Image.open(io.BytesIO(png[: len(png) // 2])) as lazy, pytest.raises(ImageError, match="truncated"):
        extractor(lazy)
    with Image.open(io.BytesIO(png)) as whole:
        assert np.asarray(extractor(whole)).shape == (40, 48)


def test_fixtures_match_the_shipped_params():
    """The fuzzing starts from a valid file: the shipped params.yaml loads."""
    assert isinstance(load_params(REPO / "params.yaml"), Params)

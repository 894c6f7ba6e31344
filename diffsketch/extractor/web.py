"""``diffsketch serve``: a local web page that sketches photos with the styles of a styles folder.

Built on Starlette (ASGI) served by uvicorn: the page is one static HTML file with plain
JavaScript (no CDN, no build step; the files are in ``diffsketch/extractor/static``) and a small JSON
API, which calls :class:`~diffsketch.extractor.api.SketchExtractor` exactly as Python code would.

- ``GET /api/styles``: the styles (sub-folders of the styles folder that hold a student; the folder
  itself when it is one style folder).
- ``POST /api/sketch?style=NAME&size=S&name=FILE&LINES``: the photo's bytes as the body;
  answers ``{id, name, width, height, png, svg}`` (``png`` / ``svg``: download URLs with the
  line controls given), or ``{error}`` with status 400 (not an image, a truncated file, too
  small, a bad control), 404 (no such style) or 413 (over the upload or pixel limit).
- ``GET /api/result/ID.png?LINES`` / ``.svg?LINES``: the kept sketch drawn with the line
  controls (the network does not run again: the page's sliders preview live);
  ``POST /api/zip`` with ``{"ids": [...], "lines": {...}}``: every sketch as PNG and SVG in one ZIP.

``LINES`` are the line controls of :mod:`diffsketch.extractor.lines` as query parameters:
``threshold``, ``binarize=LOW,HIGH``, ``line_width``, ``min_speck``, ``line_color`` and
``background`` (a colour or ``transparent``).

Downloads are named after the uploaded file, in any script: the ``Content-Disposition`` header
carries an ASCII fallback and the UTF-8 name (RFC 6266 / RFC 5987, :func:`content_disposition`).

Safe defaults: bound to 127.0.0.1; uploads over ``max_upload_mb`` are refused while they are read
(before decoding); images over ``max_pixels`` (the extractor's megapixel cap,
:data:`~diffsketch.extractor.api.MAX_MEGAPIXELS`, by default) are refused from their header (PIL
reads the size without decoding the pixels), and a photo is decoded at a reduced size when the
output size is smaller (:meth:`~diffsketch.extractor.api.SketchExtractor.prepare`); style names are looked up among the folders found, never joined
into a path; each style's model is loaded once and shared by all requests; inference runs in a
worker thread, one image at a time per style, so the server keeps answering.
"""

from __future__ import annotations

import io
import json
import re
import threading
import unicodedata
import urllib.parse
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_MB = 25
MAX_PIXELS = 40_000_000  # the extractor's MAX_MEGAPIXELS (40), in pixels
MAX_RESULTS = 512  # sketches kept for download, oldest dropped first
MAX_RESULT_BYTES = 1 << 30  # ... and at most this much of them (the newest is always kept)
RENDERS_KEPT = 4  # drawings of one sketch (line settings) kept for repeated downloads
SIZES = (256, 512, 768, 1024, 2048)


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Result:
    name: str
    sketch: np.ndarray  # float32 (H, W): the network's output, drawn with the line controls on demand
    renders: OrderedDict = field(default_factory=OrderedDict)  # (kind, LineStyle) -> bytes or str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drawn(self, kind: str, style) -> bytes | str:
        """The sketch as PNG bytes or an SVG document in ``style``, kept for the next request."""
        from diffsketch.extractor.api import sketch_to_png, sketch_to_svg

        key = (kind, style)
        with self.lock:
            if key in self.renders:
                self.renders.move_to_end(key)
                return self.renders[key]
        values = self.sketch
        if kind == "png":
            buffer = io.BytesIO()
            sketch_to_png(values, style=style).save(buffer, format="PNG")
            out: bytes | str = buffer.getvalue()
        else:
            out = sketch_to_svg(values, style=style)
        with self.lock:
            self.renders[key] = out
            while len(self.renders) > RENDERS_KEPT:
                self.renders.popitem(last=False)
        return out


@dataclass
class _State:
    styles_dir: Path
    device: str
    backend: str
    max_upload: int
    max_pixels: int
    extractors: dict = field(default_factory=dict)
    locks: dict = field(default_factory=dict)
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    results: OrderedDict = field(default_factory=OrderedDict)
    results_lock: threading.Lock = field(default_factory=threading.Lock)

    def styles(self) -> dict[str, Path]:
        """Name -> folder of every style under the styles folder (a folder holding a student).

        A styles folder that is itself a style folder (``--styles styles/cat``) gives that one style.
        """
        if not self.styles_dir.is_dir():
            return {}
        if _is_style(self.styles_dir):
            return {self.styles_dir.resolve().name: self.styles_dir}
        found = {}
        for folder in sorted(self.styles_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and _is_style(folder):
                found[folder.name] = folder
        return found

    def extractor(self, name: str):
        """The style's extractor, loaded on first use and shared (one load per style)."""
        from diffsketch.extractor.api import SketchExtractor

        folders = self.styles()
        if name not in folders:
            raise UploadError(404, f"there is no style named {name!r}; choose one of: {', '.join(folders) or '(none)'}")
        with self.load_lock:
            if name not in self.extractors:  # the page checks the pixel count itself (max_pixels)
                self.extractors[name] = SketchExtractor.load(folders[name], self.device, self.backend, max_megapixels=None)
                self.locks[name] = threading.Lock()
        return self.extractors[name], self.locks[name]

    def keep(self, result: _Result) -> str:
        key = uuid.uuid4().hex
        with self.results_lock:
            self.results[key] = result
            held = sum(r.sketch.nbytes for r in self.results.values())
            while len(self.results) > 1 and (len(self.results) > MAX_RESULTS or held > MAX_RESULT_BYTES):
                held -= self.results.popitem(last=False)[1].sketch.nbytes
        return key

    def result(self, key: str) -> _Result:
        with self.results_lock:
            found = self.results.get(key)
        if found is None:
            raise UploadError(404, "this sketch is no longer kept by the server; sketch the photo again")
        return found


def _is_style(folder: Path) -> bool:
    """A style folder: one holding a student (safetensors weights or an ONNX graph)."""
    from diffsketch.extractor.api import ONNX_FILE, WEIGHTS_FILE

    return (folder / WEIGHTS_FILE).is_file() or (folder / ONNX_FILE).is_file()


def _style_info(name: str, folder: Path) -> dict:
    info = {"name": name, "licence": None, "teacher": None, "example": None, "example_sketch": None}
    manifest = folder / "style.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            info.update(licence=data.get("licence"), teacher=data.get("teacher"))
        except ValueError:
            pass
    for key, file in (("example", "example.png"), ("example_sketch", "example_sketch.png")):
        if (folder / file).is_file():
            info[key] = f"/api/styles/{name}/{file}"
    return info


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    mb = limit / 1e6
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(413, f"the file is {int(declared) / 1e6:.1f} MB; the upload limit is {mb:.0f} MB")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise UploadError(413, f"the file is over the upload limit of {mb:.0f} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_upload(data: bytes, name: str, max_pixels: int) -> None:
    """Check the upload is an image within ``max_pixels``, from its header only; clear errors for bad files."""
    if not data:
        raise UploadError(400, f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size  # from the header: no pixels decoded yet
    except Image.DecompressionBombError as err:  # PIL's own guard, for sizes far over any sane limit
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise UploadError(413, f"{name}: the image has {size}; the limit is {max_pixels / 1e6:.0f} megapixels") from None
    except Exception:  # noqa: BLE001 - PIL raises UnidentifiedImageError, SyntaxError, ... for non-images
        raise UploadError(400, f"{name}: not an image file (PNG, JPEG, WebP, BMP, TIFF...) that can be read") from None
    if width * height > max_pixels:
        raise UploadError(413, f"{name}: the image is {width} × {height} px ({width * height / 1e6:.0f} megapixels); the limit is {max_pixels / 1e6:.0f} megapixels")


def _number(request: Request, key: str, kind, low, high):
    raw = request.query_params.get(key, "")
    if raw in ("", "none", "null"):
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise UploadError(400, f"{key}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise UploadError(400, f"{key}={raw} must be between {low:g} and {high:g}")
    return value


LINE_KEYS = ("threshold", "binarize", "line_width", "min_speck", "line_color", "background")


def _line_style(values) -> object:
    """The :class:`~diffsketch.extractor.lines.LineStyle` of query parameters (or a JSON object); 400 for a bad one."""
    from diffsketch.extractor.api import ExtractError, line_style

    given = {key: values.get(key) for key in LINE_KEYS if values.get(key) not in (None, "", "none", "null")}
    try:
        threshold = float(given["threshold"]) if "threshold" in given else None
        width = float(given.get("line_width", 1.0))
        speck = int(float(given.get("min_speck", 0)))
    except (TypeError, ValueError):
        raise UploadError(400, "threshold, line_width and min_speck must be numbers") from None
    try:
        return line_style(threshold, False, width, given.get("binarize"), speck, given.get("line_color", "black"), given.get("background"))
    except ExtractError as err:
        raise UploadError(400, str(err)) from None


def _safe_name(name: str) -> str:
    """The stem of an uploaded file's name, in any script, without path parts, control characters or
    characters file systems refuse (``/ \\ : * ? " < > |``); ``sketch`` when nothing is left."""
    stem = Path(name.replace("\\", "/")).stem
    stem = re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]+', "_", stem)[:100].strip(" ._")
    return stem or "sketch"


def content_disposition(filename: str) -> str:
    """A ``Content-Disposition`` header value that downloads ``filename``, whatever its script (RFC 6266).

    ``filename*`` carries the name itself, UTF-8 and percent-encoded (RFC 5987); ``filename`` an
    ASCII fallback for clients that ignore ``filename*``: accents dropped (``é`` -> ``e``), other
    non-ASCII characters and ``" \\ ;`` replaced by ``_``, runs of ``_`` merged, leading and
    trailing ``_``, spaces and dots stripped from the stem (``download`` when nothing is left).

    >>> print(content_disposition("café.png"))
    attachment; filename="cafe.png"; filename*=UTF-8''caf%C3%A9.png
    """
    decomposed = "".join(c for c in unicodedata.normalize("NFKD", filename) if not unicodedata.combining(c))
    ascii_name = re.sub(r'[^\x20-\x7e]|["\\;]', "_", decomposed)
    stem, dot, suffix = ascii_name.rpartition(".")
    if not dot:
        stem, suffix = ascii_name, ""
    stem = re.sub(r"_+", "_", stem).strip("_ .") or "download"
    fallback = f"{stem}.{suffix}" if dot else stem
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def create_app(
    styles: str | Path = "styles",
    *,
    device: str = "auto",
    backend: str = "auto",
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
) -> Starlette:
    """The web app over the styles folder ``styles`` (see the module docstring)."""
    state = _State(Path(styles), device, backend, int(max_upload_mb * 1e6), int(max_pixels))

    def error(err: UploadError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def list_styles(request: Request) -> Response:
        return JSONResponse({"styles": [_style_info(n, f) for n, f in state.styles().items()], "folder": str(state.styles_dir),
                                 "max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "sizes": list(SIZES)})  # fmt: skip

    async def style_file(request: Request) -> Response:
        name, file = request.path_params["name"], request.path_params["file"]
        folders = state.styles()
        if name not in folders or file not in ("example.png", "example_sketch.png") or not (folders[name] / file).is_file():
            return error(UploadError(404, "no such file"))
        return FileResponse(folders[name] / file)

    def _sketch(extractor, lock, data, size, style, name) -> _Result:
        from diffsketch.core import ImageError
        from diffsketch.extractor.api import ExtractError

        try:
            tensor = extractor.prepare(data, size)  # EXIF-uprighted, as the browser shows the photo
            with lock:
                sketch = extractor.sketch_tensors([tensor])[0]
        except ImageError as err:
            raise UploadError(400, f"{name}: the image data is damaged or truncated ({err}); re-save the file and try again") from None
        except ExtractError as err:
            raise UploadError(400, f"{name}: {err}") from None
        result = _Result(name, sketch)
        result.drawn("png", style)
        return result

    async def sketch(request: Request) -> Response:
        name = request.query_params.get("name", "photo")
        try:
            style = _line_style(request.query_params)
            size = _number(request, "size", int, 16, 8192)
            extractor, lock = await run_in_threadpool(state.extractor, request.query_params.get("style", ""))
            data = await _read_body(request, state.max_upload)
            _check_upload(data, name, state.max_pixels)
            result = await run_in_threadpool(_sketch, extractor, lock, data, size, style, name)
        except UploadError as err:
            return error(err)
        key = state.keep(result)
        height, width = result.sketch.shape
        lines = urllib.parse.urlencode({k: v for k, v in request.query_params.items() if k in LINE_KEYS})
        query = f"?{lines}" if lines else ""
        return JSONResponse({"id": key, "name": _safe_name(name), "width": width, "height": height,
                                 "png": f"/api/result/{key}.png{query}", "svg": f"/api/result/{key}.svg{query}"})  # fmt: skip

    async def result_file(request: Request) -> Response:
        key, kind = request.path_params["key"], request.path_params["kind"]
        try:
            result = state.result(key)
            if kind not in ("png", "svg"):
                raise UploadError(404, "no such file: ask for .png or .svg")
            style = _line_style(request.query_params)
        except UploadError as err:
            return error(err)
        stem = _safe_name(result.name)
        body = await run_in_threadpool(result.drawn, kind, style)
        media = "image/png" if kind == "png" else "image/svg+xml"
        return Response(body, media_type=media, headers={"Content-Disposition": content_disposition(f"{stem}_sketch.{kind}")})

    async def zip_all(request: Request) -> Response:
        try:
            body = json.loads(await _read_body(request, 1_000_000) or b"{}")
            keys = body.get("ids") if isinstance(body, dict) else None
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                raise UploadError(400, 'send {"ids": [...]} with the ids of the sketches to download')
            lines = body.get("lines") or {}
            style = _line_style(lines if isinstance(lines, dict) else {})
            results = [state.result(k) for k in keys]
        except ValueError:
            return error(UploadError(400, "the request is not JSON"))
        except UploadError as err:
            return error(err)

        def build() -> bytes:
            buffer, used = io.BytesIO(), set()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for result in results:
                    stem, n = _safe_name(result.name), 1
                    while stem in used:
                        n += 1
                        stem = f"{_safe_name(result.name)}_{n}"
                    used.add(stem)
                    archive.writestr(f"{stem}_sketch.png", result.drawn("png", style))
                    archive.writestr(f"{stem}_sketch.svg", result.drawn("svg", style))
            return buffer.getvalue()

        data = await run_in_threadpool(build)
        return Response(data, media_type="application/zip", headers={"Content-Disposition": content_disposition("sketches.zip")})

    routes = [
        Route("/", index),
        Route("/api/styles", list_styles),
        Route("/api/styles/{name}/{file}", style_file),
        Route("/api/sketch", sketch, methods=["POST"]),
        Route("/api/result/{key:str}.{kind:str}", result_file),
        Route("/api/zip", zip_all, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.diffsketch = state
    return app


def serve(styles: str | Path = "styles", host: str = "127.0.0.1", port: int = 7860, **options) -> None:
    """Run the page with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(styles, **options), host=host, port=port, log_level="info")

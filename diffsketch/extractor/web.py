"""``diffsketch serve``: a local web page that sketches photos with the styles of a styles folder.

Built on Starlette (ASGI) served by uvicorn: the page is one static HTML file with plain
JavaScript (no CDN, no build step; the files are in ``diffsketch/extractor/static``) and a small JSON
API, which calls :class:`~diffsketch.extractor.api.SketchExtractor` exactly as Python code would.

- ``GET /api/styles``: the styles (sub-folders of the styles folder that hold a student; the folder
  itself when it is one style folder).
- ``POST /api/sketch?style=NAME&threshold=T&size=S&name=FILE``: the photo's bytes as the body;
  answers ``{id, name, width, height, png, svg}`` (``png`` / ``svg``: download URLs), or
  ``{error}`` with status 400 (not an image, a truncated file, too small), 404 (no such style)
  or 413 (over the upload or pixel limit).
- ``GET /api/result/ID.png`` / ``.svg``; ``POST /api/zip`` with ``{"ids": [...]}``: every sketch
  as PNG and SVG in one ZIP.

Downloads are named after the uploaded file, in any script: the ``Content-Disposition`` header
carries an ASCII fallback and the UTF-8 name (RFC 6266 / RFC 5987, :func:`content_disposition`).

Safe defaults: bound to 127.0.0.1; uploads over ``max_upload_mb`` are refused while they are read
(before decoding); images over ``max_pixels`` are refused from their header (PIL reads the size
without decoding the pixels); style names are looked up among the folders found, never joined
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
from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_MB = 25
MAX_PIXELS = 40_000_000  # 40 megapixels
MAX_RESULTS = 512  # sketches kept for download, oldest dropped first
SIZES = (256, 512, 768, 1024, 2048)


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Result:
    name: str
    png: bytes
    sketch: np.ndarray  # float16 (H, W), for SVG tracing on demand
    threshold: float | None
    svg: str | None = None


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
            if name not in self.extractors:
                self.extractors[name] = SketchExtractor.load(folders[name], self.device, self.backend)
                self.locks[name] = threading.Lock()
        return self.extractors[name], self.locks[name]

    def keep(self, result: _Result) -> str:
        key = uuid.uuid4().hex
        with self.results_lock:
            self.results[key] = result
            while len(self.results) > MAX_RESULTS:
                self.results.popitem(last=False)
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
    info = dict(name=name, licence=None, teacher=None, example=None, example_sketch=None)
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


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open the upload, check its size from the header, then decode it; clear errors for bad files."""
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
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)  # upright, as the browser shows the photo
    except Image.DecompressionBombError:
        raise UploadError(413, f"{name}: the image is over the limit of {max_pixels / 1e6:.0f} megapixels") from None
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        raise UploadError(400, f"{name}: the image data is damaged or truncated ({err}); re-save the file and try again") from None
    return image


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
        return JSONResponse(dict(styles=[_style_info(n, f) for n, f in state.styles().items()], folder=str(state.styles_dir),
                                 max_upload_mb=max_upload_mb, max_pixels=max_pixels, sizes=list(SIZES)))  # fmt: skip

    async def style_file(request: Request) -> Response:
        name, file = request.path_params["name"], request.path_params["file"]
        folders = state.styles()
        if name not in folders or file not in ("example.png", "example_sketch.png") or not (folders[name] / file).is_file():
            return error(UploadError(404, "no such file"))
        return FileResponse(folders[name] / file)

    def _sketch(extractor, lock, image, size, threshold, name) -> _Result:
        from diffsketch.extractor.api import ExtractError, sketch_to_png

        try:
            tensor = extractor.prepare(image, size)
            with lock:
                sketch = extractor.sketch_tensors([tensor])[0]
        except ExtractError as err:
            raise UploadError(400, f"{name}: {err}") from None
        buffer = io.BytesIO()
        sketch_to_png(sketch, threshold=threshold).save(buffer, format="PNG")
        return _Result(name, buffer.getvalue(), sketch.astype(np.float16), threshold)

    async def sketch(request: Request) -> Response:
        name = request.query_params.get("name", "photo")
        try:
            threshold = _number(request, "threshold", float, 0.0, 1.0)
            size = _number(request, "size", int, 16, 8192)
            extractor, lock = await run_in_threadpool(state.extractor, request.query_params.get("style", ""))
            data = await _read_body(request, state.max_upload)
            image = _decode(data, name, state.max_pixels)
            result = await run_in_threadpool(_sketch, extractor, lock, image, size, threshold, name)
        except UploadError as err:
            return error(err)
        key = state.keep(result)
        height, width = result.sketch.shape
        return JSONResponse(dict(id=key, name=_safe_name(name), width=width, height=height,
                                 png=f"/api/result/{key}.png", svg=f"/api/result/{key}.svg"))  # fmt: skip

    def _svg(result: _Result) -> str:
        from diffsketch.extractor.api import sketch_to_svg

        if result.svg is None:
            result.svg = sketch_to_svg(result.sketch.astype(np.float32), result.threshold)
        return result.svg

    async def result_file(request: Request) -> Response:
        key, kind = request.path_params["key"], request.path_params["kind"]
        try:
            result = state.result(key)
        except UploadError as err:
            return error(err)
        stem = _safe_name(result.name)
        if kind == "png":
            return Response(result.png, media_type="image/png", headers={"Content-Disposition": content_disposition(f"{stem}_sketch.png")})
        svg = await run_in_threadpool(_svg, result)
        return Response(svg, media_type="image/svg+xml", headers={"Content-Disposition": content_disposition(f"{stem}_sketch.svg")})

    async def zip_all(request: Request) -> Response:
        try:
            body = json.loads(await _read_body(request, 1_000_000) or b"{}")
            keys = body.get("ids") if isinstance(body, dict) else None
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                raise UploadError(400, 'send {"ids": [...]} with the ids of the sketches to download')
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
                    archive.writestr(f"{stem}_sketch.png", result.png)
                    archive.writestr(f"{stem}_sketch.svg", _svg(result))
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

"""The built-in test set: real, freely licensed photographs that ship inside installed packages.

No dataset can be downloaded offline, so the `eval-data` stage copies photographs that come with
scikit-image, scikit-learn and matplotlib into ``data/eval/``, byte for byte, with a licence list
(``LICENSES.md``) and a manifest (``manifest.json``: source, licence, size and SHA-256 of each
file). Users add their own folders (BSDS500, COCO val, ...) through ``evaluate.datasets``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from diffsketch.core import DiffsketchError, EvalDataConfig, replaced_folder

MANIFEST = "manifest.json"


class EvalDataError(DiffsketchError, RuntimeError):
    """A photo cannot be found in its package, or the output folder cannot be used; the message says why."""


@dataclass(frozen=True)
class Photo:
    """Where one photograph lives inside an installed package, and what it may be used for."""

    package: str  # importable module whose folder holds the file
    folder: str  # sub-folder of the module's folder
    file: str
    content: str
    licence: str
    credit: str
    pip: str  # what to install when the package is missing

    def source_path(self) -> Path:
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            raise EvalDataError(f"photo {self.file} ships with {self.pip}, which is not installed: pip install {self.pip}") from None
        path = Path(module.__file__).parent / self.folder / self.file
        if not path.is_file():
            raise EvalDataError(
                f"{path} is missing from the installed {self.pip}; reinstall it (pip install --force-reinstall {self.pip}) "
                "or drop the photo from eval_data.photos"
            )
        return path


_SKIMAGE = dict(package="skimage.data", folder="", pip="scikit-image")
PHOTOS: dict[str, Photo] = {
    "astronaut": Photo(**_SKIMAGE, file="astronaut.png", content="portrait (astronaut Eileen Collins)", licence="public domain", credit="NASA"),
    "camera": Photo(**_SKIMAGE, file="camera.png", content="photographer with a camera, grey", licence="CC0", credit="Lav Varshney"),
    "chelsea": Photo(**_SKIMAGE, file="chelsea.png", content="Chelsea the cat", licence="CC0", credit="Stefan van der Walt"),
    "coffee": Photo(**_SKIMAGE, file="coffee.png", content="a cup of coffee", licence="CC0", credit="Rachel Michetti"),
    "rocket": Photo(**_SKIMAGE, file="rocket.jpg", content="Falcon 9 launch scene", licence="public domain", credit="SpaceX"),
    "coins": Photo(**_SKIMAGE, file="coins.png", content="Greek coins, grey", licence="no known copyright restrictions", credit="Brooklyn Museum"),
    "clock": Photo(**_SKIMAGE, file="clock_motion.png", content="a clock, motion-blurred, grey", licence="public domain", credit="Stefan van der Walt"),
    "china": Photo(
        package="sklearn.datasets", folder="images", file="china.jpg", content="a Chinese temple", licence="CC BY 2.0",
        credit="danielbuechele (Flickr)", pip="scikit-learn",
    ),
    "flower": Photo(
        package="sklearn.datasets", folder="images", file="flower.jpg", content="a flower", licence="CC BY 2.0",
        credit="vultilion (Flickr)", pip="scikit-learn",
    ),
    "grace_hopper": Photo(
        package="matplotlib", folder="mpl-data/sample_data", file="grace_hopper.jpg", content="portrait (Grace Hopper)",
        licence="US Navy photograph, presumed public domain (matplotlib states no licence)", credit="US Navy", pip="matplotlib",
    ),
}  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _licences(entries: list[dict]) -> str:
    lines = [
        "# Evaluation photos",
        "",
        "Copied unchanged by the `eval-data` stage (`diffsketch eval-data`) from packages installed with diffsketch.",
        "",
        "| file | content | licence | credit | copied from |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(f"| {e['file']} | {e['content']} | {e['licence']} | {e['credit']} | {e['source']} |")
    lines += ["", "CC BY 2.0 photos: keep the credit when you redistribute them (https://creativecommons.org/licenses/by/2.0/)."]
    return "\n".join(lines) + "\n"


def run_eval_data(cfg: EvalDataConfig, out: str | Path) -> list[dict]:
    """Copy the photos in ``cfg.photos`` into ``out`` with ``LICENSES.md`` and ``manifest.json``.

    ``out`` is replaced as a whole, so a photo dropped from the list disappears from the test set.
    A folder that was not written by this function is never touched.

    Returns:
        One manifest entry per photo.

    Raises:
        EvalDataError: a photo is missing from its package, or ``out`` holds other files.
    """
    from diffsketch.core import check_image_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or (not (out / MANIFEST).is_file() and any(out.iterdir()))):
        raise EvalDataError(f"{out} exists and was not written by eval-data; choose another --out or empty it")
    sources = {name: PHOTOS[name].source_path() for name in cfg.photos}  # every photo found before anything is written
    entries = []
    with replaced_folder(out) as staging:
        for name, source in sources.items():
            photo = PHOTOS[name]
            target = staging / photo.file
            shutil.copyfile(source, target)
            height, width = check_image_file(target)
            entries.append(
                dict(name=name, file=photo.file, content=photo.content, licence=photo.licence, credit=photo.credit,
                     source=f"{photo.pip}: {photo.package.replace('.', '/')}/{photo.folder + '/' if photo.folder else ''}{photo.file}",
                     width=width, height=height, sha256=_sha256(target))
            )  # fmt: skip
        (staging / "LICENSES.md").write_text(_licences(entries))
        (staging / MANIFEST).write_text(json.dumps(entries, indent=2) + "\n")
    return entries

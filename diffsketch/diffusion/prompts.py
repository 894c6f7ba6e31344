"""Prompts grouped into human-labelled classes, and the plan of which trajectory uses which.

A prompts source is a folder of ``<class>.txt`` files (or one such file): one prompt per line,
blank lines and lines starting with ``#`` ignored. Trajectory ``i`` takes the ``i``-th prompt of
a class-interleaved order (so any prefix of the plan is balanced over classes) and seed
``seed + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffsketch.core import DiffsketchError


class PromptsError(DiffsketchError, ValueError):
    """The prompts source is missing or empty; the message names the file and the fix."""


@dataclass(frozen=True)
class Prompt:
    text: str
    label: str  # class name


@dataclass(frozen=True)
class Trajectory:
    index: int
    prompt: str
    label: str
    seed: int


def _read_class_file(path: Path) -> list[Prompt]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PromptsError(f"prompts file {path} is not UTF-8 text") from None
    prompts = [Prompt(line.strip(), path.stem) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise PromptsError(f"prompts file {path} has no prompts; write one prompt per line (lines starting with # are comments)")
    return prompts


def load_prompts(source: str | Path) -> list[Prompt]:
    """All prompts of a folder of class files (sorted by class name) or of one file."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.txt"))
        if not files:
            raise PromptsError(f"prompts folder {source} has no .txt files; add one <class>.txt file per class")
    elif source.is_file():
        files = [source]
    else:
        raise PromptsError(f"prompts source {source} does not exist; set sample.prompts to a folder of <class>.txt files")
    return [prompt for path in files for prompt in _read_class_file(path)]


def interleave(prompts: list[Prompt]) -> list[Prompt]:
    """Round-robin over classes: first prompt of every class, then the second, ..."""
    by_class: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        by_class.setdefault(prompt.label, []).append(prompt)
    longest = max(len(group) for group in by_class.values())
    return [group[r] for r in range(longest) for group in by_class.values() if r < len(group)]


def plan_trajectories(prompts: list[Prompt], count: int, seed: int) -> list[Trajectory]:
    order = interleave(prompts)
    return [Trajectory(i, order[i % len(order)].text, order[i % len(order)].label, seed + i) for i in range(count)]

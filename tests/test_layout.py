"""The package's shape: one subpackage per stage, imports pointing one way, stage deps that cover
the code each stage runs, public names declared in each ``__init__``, and a light command line.

The import graph here is read from the source (``ast``), imports inside functions included, so it
is independent of import-linter (which CI runs too, see ``pyproject.toml``).
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "diffsketch"
LAYERS = ["core", "diffusion", "store", "analysis", "training", "student", "extractor", "evaluation", "ablation", "cli"]
HEAVY = ("torch", "diffusers", "transformers", "zarr", "open_clip", "sklearn")


def module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def public_modules(package: str) -> dict[str, str]:
    """name -> submodule of a subpackage's lazy public table (read from its ``__init__``'s source;
    ``package=""``: the root package's)."""
    tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
    table: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "submod_attrs":
            for key, value in zip(node.value.keys, node.value.values):
                for element in value.elts:
                    table[element.value] = key.value
        if isinstance(node, ast.keyword) and node.arg == "submodules":
            for element in node.value.elts:
                table[element.value] = element.value
    return table


def imported_modules(path: Path) -> set[str]:
    """The diffsketch modules ``path`` imports, at any depth of the file, resolved to module files.

    ``from diffsketch.P import name`` is resolved through P's public table to the submodule that
    defines ``name`` (that is the module Python runs when the name is used).
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("diffsketch")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("diffsketch"):
            found.add(node.module)
            parts = node.module.split(".")
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}"):
                    found.add(f"{node.module}.{alias.name}")
                elif len(parts) == 1:
                    found.add(f"diffsketch.{public_modules('')[alias.name]}")
                elif len(parts) == 2 and parts[1] in LAYERS[:-1]:
                    target = public_modules(parts[1]).get(alias.name)
                    assert target, f"{path}: {alias.name} is not a public name of {node.module}"
                    found.add(f"{node.module}.{target}")
    return {m for m in found if module_file(m)}


def closure(path: Path) -> set[str]:
    """Every diffsketch module that running ``path`` can import, parents' ``__init__`` included."""
    seen: set[str] = set()
    todo = list(imported_modules(path))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imported_modules(module_file(name))
    return seen


def library_graph() -> dict[str, set[str]]:
    graph = {}
    for file in PACKAGE.rglob("*.py"):
        name = ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(file) if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


# --- the helpers above, on hand-built cases -------------------------------------------------------


def test_cycle_finder_finds_a_planted_circle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_closure_follows_imports_inside_functions(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from diffsketch.cli.train import train\n")
    reached = closure(script)
    assert "diffsketch.training.trainer" in reached  # imported inside the command function
    assert "diffsketch.cli.train" in reached and "diffsketch" in reached
    assert not {m for m in reached if layer(m) in ("evaluation", "extractor", "ablation", "student")}


# --- the package ------------------------------------------------------------------------------------


def test_no_import_circle_in_the_package():
    assert cycles(library_graph()) == []


def test_every_import_points_down_the_layers():
    order = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, targets in library_graph().items():
        for target in targets:
            if layer(module) and layer(target) and order[layer(target)] > order[layer(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_other_subpackages_import_public_names_not_modules():
    """``from diffsketch.training import load_lpips``, never ``from diffsketch.training.losses import ...``,
    across subpackages (within one, modules import each other directly)."""
    reaching = []
    for file in PACKAGE.rglob("*.py"):
        own = layer(".".join(file.relative_to(REPO).with_suffix("").parts))
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffsketch."):
                parts = node.module.split(".")
                if len(parts) > 2 and parts[1] != own and parts[1] != "cli":
                    reaching.append(f"{file.relative_to(REPO)}:{node.lineno} from {node.module}")
    assert reaching == []


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_public_names_resolve_and_never_shadow_a_module(package):
    module = importlib.import_module(f"diffsketch.{package}")
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert module.__doc__ and "In:" in module.__doc__ and "Out:" in module.__doc__
    for name, source in public_modules(package).items():
        assert source in submodules, f"{package}: {name} names the missing module {source}"
        value = getattr(module, name)
        if name in submodules:  # a module handed out as a namespace
            assert name == source and value.__name__ == f"diffsketch.{package}.{name}"
        else:
            assert getattr(importlib.import_module(f"diffsketch.{package}.{source}"), name) is value


def test_expected_errors_share_one_base_class():
    from diffsketch.core import DiffsketchError

    errors = []
    for info in pkgutil.walk_packages([str(PACKAGE)], "diffsketch."):
        if info.name.endswith("__main__") or ".cli" in info.name:
            continue
        module = importlib.import_module(info.name)
        errors += [v for k, v in vars(module).items() if k.endswith("Error") and isinstance(v, type) and v.__module__ == info.name]
    assert len(errors) > 20
    assert [e.__name__ for e in errors if not issubclass(e, DiffsketchError) and e.__name__ != "UploadError"] == []


# --- dvc.yaml stage deps ----------------------------------------------------------------------------


def stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        script = stage["cmd"].split()[1]
        found[name] = (REPO / script, [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])])
    return found


def uncovered(modules: set[str], deps: list[str]) -> list[str]:
    missing = []
    for module in sorted(modules):
        path = module_file(module).relative_to(REPO).as_posix()
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(path)
    return missing


def test_uncovered_names_a_module_outside_the_deps():
    modules = {"diffsketch.training.losses", "diffsketch.core.params"}
    assert uncovered(modules, ["diffsketch/core"]) == ["diffsketch/training/losses.py"]
    assert uncovered(modules, ["diffsketch/core", "diffsketch/training/losses.py"]) == []
    assert uncovered({"diffsketch.core.params"}, ["diffsketch/cor"]) == ["diffsketch/core/params.py"]


@pytest.mark.parametrize("stage", list(stage_scripts()))
def test_stage_deps_cover_every_module_the_stage_runs(stage):
    script, deps = stage_scripts()[stage]
    assert script.relative_to(REPO).as_posix() in deps
    assert uncovered(closure(script), deps) == []


def test_stage_deps_name_no_module_the_stage_does_not_run():
    """Editing a later stage's code must not rerun an earlier stage: ``sample`` does not depend on training."""
    for stage, (script, deps) in stage_scripts().items():
        reached = {module_file(m).relative_to(REPO).as_posix() for m in closure(script)}
        extra = [d for d in deps if d.startswith("diffsketch") and not any(r == d or r.startswith(d + "/") for r in reached)]
        assert extra == [], stage


# --- the command line stays light -------------------------------------------------------------------


def test_help_imports_no_heavy_library():
    """``diffsketch --help`` and every ``diffsketch <command> --help`` import no torch, diffusers or zarr."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from diffsketch.cli.main import app\n"
        "import typer\n"
        "names = list(typer.main.get_command(app).commands)\n"
        "runner = CliRunner()\n"
        "for args in [['--help']] + [[n, '--help'] for n in names]:\n"
        "    result = runner.invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        f"print(len(names), sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) == 17 and heavy == "[]"


def test_import_linter_names_a_planted_upward_import(tmp_path):
    """CI runs ``lint-imports``; an import from core up into the extractor must break the layers contract."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    shutil.copytree(PACKAGE, tmp_path / "diffsketch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    clean = subprocess.run([lint], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert clean.returncode == 0, clean.stdout
    with (tmp_path / "diffsketch" / "core" / "files.py").open("a") as file:
        file.write("\n\ndef _upward():\n    from diffsketch.extractor import SketchExtractor  # noqa: F401\n")
    broken = subprocess.run([lint], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert broken.returncode != 0
    assert "diffsketch.core.files -> diffsketch.extractor" in broken.stdout


def test_run_stage_runs_one_command_with_the_logging_setup(tmp_path):
    """A stage script runs its command as ``diffsketch <command> ...`` would: same arguments, same logging."""
    code = (
        "import logging, sys\n"
        "from typing import Annotated\n"
        "import typer\n"
        "from diffsketch.cli.common import run_stage\n"
        "def demo(count: Annotated[int, typer.Option()] = 0) -> None:\n"
        "    logging.getLogger('diffsketch.demo').info('count %d', count)\n"
        "run_stage(demo, ['demo', '--count', '3'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "INFO diffsketch.demo: count 3" in out.stderr

"""MkDocs hooks: the parts of the site that are generated, so that they cannot drift from the code.

A page asks for a generated block with an HTML comment on a line of its own:

- ``<!-- generated:params SECTION -->``: the table of one ``params.yaml`` section, walked from the
  pydantic schema (``diffsketch.core.params.Params``): key, type and allowed range, schema default,
  the value in each preset of ``presets/`` (with the preset's own comment on where it comes from),
  description. A page that uses it must name every section of the schema, so a section added to
  the schema fails the build until it is documented.
- ``<!-- generated:cli -->``: every command of the Typer app (``diffsketch.cli``), its help,
  usage, arguments and options.
- ``<!-- generated:results -->``: the evaluation's mean scores from ``reports/eval`` (rendered by
  the package's own ``results_markdown``), or, when the pipeline has not run in this checkout, a
  note saying which command fills it and the table recorded in ``README.md``.
- ``<!-- generated:ablation -->``: the ablation table from ``reports/ablation/table.md`` (written by
  ``diffsketch ablate``), or a note saying which command fills it.
- ``<!-- generated:ablation-rows -->``: the ablation rows of ``presets/ablations.yaml``.
- ``<!-- generated:reruns -->``: each parameter, the stages that rerun when it changes (from
  ``dvc.yaml``) and what happens to finished work (from ``diffsketch.core.keys``).

Anything that cannot be imported or read raises, so ``mkdocs build --strict`` fails instead of
publishing an empty page. The example pair of ``data/example`` and, when present, the HTML
reports of ``reports/eval`` and ``reports/ablation`` are added to the site as files. In the API
reference, Sphinx roles of docstrings (``:func:`~a.b.c```) are shown as plain code names.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*generated:([\w-]+)(?:[ \t]+([^>]*?))?\s*-->[ \t]*$", re.MULTILINE)
ISSUE_REF = re.compile(r"\s*\(issues? #?\d+\)")  # "(issue 3)" in a docstring is development history, not reference

# files of the repository published with the site: (source under ROOT, path in the site)
EXAMPLE_FILES = [
    ("data/example/cat.png", "assets/example/cat.png"),
    ("data/example/cat_sketch.png", "assets/example/cat_sketch.png"),
]
REPORT_FILES = [
    ("reports/eval/index.html", "reports/eval.html"),
    ("reports/ablation/index.html", "reports/ablation.html"),
]


def _import(*names: str) -> types.ModuleType:
    """The first of ``names`` that imports; raises with every failure when none does."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    failures = []
    for name in names:
        try:
            return importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - reported below, all of them
            failures.append(f"{name}: {type(err).__name__}: {err}")
    raise PluginError("generated docs: cannot import " + " or ".join(names) + "\n  " + "\n  ".join(failures))


# ---------------------------------------------------------------------------------------------
# files


def on_files(files: Files, config) -> Files:
    for source, dest in EXAMPLE_FILES + REPORT_FILES:
        path = ROOT / source
        if path.is_file():
            files.append(File.generated(config, dest, abs_src_path=str(path)))
        elif source.startswith("data/"):
            raise PluginError(f"generated docs: {source} not found")
    return files


# ---------------------------------------------------------------------------------------------
# parameters


def _cell(text: Any) -> str:
    """Prose for a table cell: one line, pipes escaped, and no character Markdown or HTML would take as markup."""
    text = str(text).replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("*", "\\*").replace("|", "\\|")


def _code(text: Any) -> str:
    """A code span for a table cell."""
    return "`" + str(text).replace("\n", " ").replace("|", "\\|") + "`"


def _yaml_value(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _constraints(metadata: list) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
    parts = []
    for item in metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        for inner in getattr(item, "metadata", None) or []:  # a FieldInfo inside Annotated[...]
            parts.append(_constraints([inner]))
    return ", ".join(p for p in parts if p)


def _type_name(annotation: Any) -> str:
    """A readable type: ``int ≥ 1 | "full"``, ``"auto" | "cpu"``, ``list[DatasetConfig]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        limits = _constraints(list(args[1:]))
        return _type_name(args[0]) + (f" ({limits})" if limits else "")
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict, tuple, set):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation: Any) -> list[type]:
    """The pydantic models an annotation holds (``list[DatasetConfig]`` -> ``[DatasetConfig]``)."""
    if inspect.isclass(annotation) and hasattr(annotation, "model_fields"):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        return _yaml_value(field.default_factory())
    if field.default is PydanticUndefined:
        return "(required)"
    return _yaml_value(field.default)


def _presets() -> dict[str, tuple[Any, dict[str, str]]]:
    """Each preset of ``presets/``: its values and the comment of each ``section.key`` line."""
    folder = ROOT / "presets"
    available = _import("diffsketch.core.presets", "diffsketch.presets").available(folder)
    current = (ROOT / "params.yaml").read_text(encoding="utf-8") if (ROOT / "params.yaml").is_file() else None
    out = {}
    # the preset params.yaml is a copy of comes first, and says so
    ordered = sorted(available.items(), key=lambda item: Path(item[1]).read_text(encoding="utf-8") != current)
    for name, path in ordered:
        text = Path(path).read_text(encoding="utf-8")
        comments, section = {}, None
        for line in text.splitlines():
            top = re.match(r"^([A-Za-z_]\w*):", line)
            if top:
                section = top.group(1)
                continue
            keyed = re.match(r"^  ([A-Za-z_]\w*):[^#]*?#\s*(.+)$", line)
            if section and keyed:
                comments[f"{section}.{keyed.group(1)}"] = keyed.group(2).strip()
        values = _import("diffsketch.core.params", "diffsketch.config").load_params(path)  # as the stages read it
        label = f"{name} (params.yaml)" if text == current else name
        out[label] = (values, comments)
    return out


def _lookup(params: Any, dotted: str) -> tuple[bool, Any]:
    """The value at ``section.key`` of a validated Params (attributes, so fields excluded from dumps are found too)."""
    node: Any = params
    for part in dotted.split("."):
        fields = getattr(type(node), "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return False, None
        node = getattr(node, part)
    return True, node


def _fields_table(model: type, prefix: str, presets: dict, only: str | None = None) -> tuple[str, list[tuple[str, type]]]:
    names = list(presets)
    head = ["key", "type", "default", *names, "description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    nested = []
    for key, field in model.model_fields.items():
        if only is not None and key != only:
            continue
        dotted = f"{prefix}.{key}" if prefix else key
        type_text = _type_name(field.annotation)
        limits = _constraints(field.metadata)
        if limits:
            type_text += f" ({limits})"
        cells = [_code(dotted), _cell(type_text), _code(_default(field))]
        for name in names:
            values, comments = presets[name]
            found, value = _lookup(values, dotted)
            text = _code(_yaml_value(value)) if found else "–"
            note = comments.get(dotted, "")
            # a note says where a value comes from ([code], [reviews], [ours]) or why it departs from the default
            if note and (re.match(r"^\[\w+\]", note) or (found and _yaml_value(value) != _default(field))):
                text += f" <small>{_cell(note)}</small>"
            cells.append(text)
        cells.append(_cell(field.description or ""))
        lines.append("| " + " | ".join(cells) + " |")
        nested += [
            (f"{dotted}[]" if typing.get_origin(field.annotation) is list else dotted, m)
            for m in _models_in(field.annotation)
        ]
    return "\n".join(lines), nested


def render_params(section: str | None, state: dict) -> str:
    module = _import("diffsketch.core.params", "diffsketch.config")
    params = module.Params
    if not section:
        raise PluginError("generated:params needs a section name, e.g. <!-- generated:params sample -->")
    if section not in params.model_fields:
        raise PluginError(f"generated:params: {section!r} is no section of Params ({', '.join(params.model_fields)})")
    state.setdefault("params", set()).add(section)
    models = _models_in(params.model_fields[section].annotation)
    if not models:  # a top-level setting (threads), not a section: its one row
        return _fields_table(params, "", _presets(), only=section)[0]
    model = models[0]
    presets = _presets()
    blocks = []
    doc = ISSUE_REF.sub("", inspect.getdoc(model) or "").strip()
    if doc:
        blocks.append(doc.split("\n\n")[0].replace("\n", " "))
    table, nested = _fields_table(model, section, presets)
    blocks.append(table)
    while nested:
        dotted, sub = nested.pop(0)
        sub_table, deeper = _fields_table(sub, dotted, presets)
        sub_doc = ISSUE_REF.sub("", inspect.getdoc(sub) or "").strip().split("\n\n")[0].replace("\n", " ")
        blocks.append(f"Each item of `{dotted.removesuffix('[]')}`: {sub_doc}".rstrip(": "))
        blocks.append(sub_table)
        nested += deeper
    return "\n\n".join(blocks)


def _check_params_complete(state: dict) -> None:
    if "params" not in state:
        return
    sections = list(_import("diffsketch.core.params", "diffsketch.config").Params.model_fields)
    missing = [s for s in sections if s not in state["params"]]
    if missing:
        raise PluginError(f"generated:params: the page documents no table for section(s) {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# command line


def _clean_help(text: str | None) -> str:
    lines = [line for line in inspect.cleandoc(text or "").splitlines() if line.strip() != "\b"]
    return "\n".join(lines).strip()


def _param_kind(param) -> str:
    """The value a parameter takes, from its Python annotation (Typer) or its click type."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        annotation = descriptor.annotation
        if typing.get_origin(annotation) is list:  # repeatable: the item type
            annotation = typing.get_args(annotation)[0]
        kind = _type_name(annotation).replace("NoneType", "null")
        kind = " | ".join(k for k in kind.split(" | ") if k != "null")
    else:
        choices = getattr(param.type, "choices", None)
        kind = " | ".join(json.dumps(c) for c in choices) if choices else param.type.name.lower()
    if getattr(param, "multiple", False) or param.nargs == -1:
        kind += ", repeatable"
    return _cell(kind)


def _param_row(param, name: str) -> str:
    default = param.default
    if param.required:
        default_text = "required"
    elif callable(default) or default is None or default == () or default == []:
        default_text = "–"
    elif isinstance(default, bool) and param.secondary_opts:
        default_text = _code(param.opts[0] if default else param.secondary_opts[0])
    elif isinstance(default, bool):
        default_text = "on" if default else "off"
    else:
        default_text = _code(default)
    help_text = _cell(_clean_help(getattr(param, "help", None)))
    return f"| {name} | {_param_kind(param)} | {default_text} | {help_text} |"


def _usage(command, path: str, arguments: list) -> str:
    pieces = [path]
    if any(p.param_type_name == "option" for p in command.params) or hasattr(command, "list_commands"):
        pieces.append("[OPTIONS]")
    for p in arguments:
        name = (p.metavar or p.name).upper() + ("..." if p.nargs == -1 else "")
        pieces.append(name if p.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _command_markdown(command, path: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{path}`", ""]
    help_text = _clean_help(command.help)
    if help_text:
        out += [help_text, ""]
    # duck-typed: Typer builds on click or on its own copy of it (typer._click)
    arguments = [p for p in command.params if p.param_type_name == "argument" and not getattr(p, "hidden", False)]
    options = [p for p in command.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    out += ["```text", _usage(command, path, arguments), "```", ""]
    if arguments:
        out += ["| argument | takes | default | meaning |", "|---|---|---|---|"]
        out += [_param_row(p, f"`{(p.metavar or p.name).upper()}`") for p in arguments]
        out.append("")
    if options:
        out += ["| option | takes | default | meaning |", "|---|---|---|---|"]
        out += [_param_row(p, ", ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])) for p in options]
        out.append("")
    return out


def render_cli(_arg: str | None, state: dict) -> str:
    cli = _import("diffsketch.cli", "diffsketch.cli.main")
    app = getattr(cli, "app", None) or _import("diffsketch.cli.main").app
    typer_main = _import("typer.main")
    group = typer_main.get_command(app)
    root = group.context_class(group, info_name="diffsketch")
    out = _command_markdown(group, "diffsketch", 2)
    names = group.list_commands(root) if hasattr(group, "list_commands") else []
    if not names:
        raise PluginError("generated:cli: the Typer app has no commands")
    for name in names:
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        out += _command_markdown(command, f"diffsketch {name}", 3)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# results


def _readme_block(begin: str, end: str) -> str | None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1:
        return None
    return text.split(begin)[1].split(end)[0].strip()


def render_results(_arg: str | None, state: dict) -> str:
    reports = ROOT / "reports" / "eval"
    if (reports / "summary.json").is_file() and (reports / "metrics.json").is_file():
        report = _import("diffsketch.evaluation.report", "diffsketch.eval_report")
        link = (
            " The full report, with every per-image score and the side-by-side grid: [reports/eval](reports/eval.html)."
            if (reports / "index.html").is_file()
            else ""
        )
        return f"Generated from `reports/eval/` of this checkout.{link}\n\n" + report.saved_results(reports)
    report = _import("diffsketch.evaluation.report", "diffsketch.eval_report")
    note = (
        '!!! info "Not evaluated in this checkout"\n'
        "    `reports/eval/` is written by the `evaluate` stage: run `dvc repro` (or `dvc repro evaluate`),\n"
        "    then build the site again. `diffsketch results --readme README.md` copies the same table into\n"
        "    the README."
    )
    recorded = _readme_block(report.BEGIN, report.END)
    if recorded:
        note += (
            "\n\nThe table that `diffsketch results --readme README.md` last recorded in `README.md`:\n\n" + recorded
        )
    return note


def render_ablation(_arg: str | None, state: dict) -> str:
    reports = ROOT / "reports" / "ablation"
    table, results = reports / "table.md", reports / "results.json"
    if table.is_file() and results.is_file():
        rows = json.loads(results.read_text(encoding="utf-8"))
        images = sorted({r.get("images") for r in rows})
        seeds = sorted({r.get("seeds", 1) for r in rows})
        link = (
            " The full report (sketches side by side, training curves): [reports/ablation](reports/ablation.html)."
            if (reports / "index.html").is_file()
            else ""
        )
        head = (
            f"Generated from `reports/ablation/` of this checkout: {len(rows)} rows, {'/'.join(map(str, seeds))} training "
            f"seed(s) each, scored on {', '.join(map(str, images))} test photos: each row's generator and student "
            f"(mean ± half-width of the 95 % interval; bold where a row's interval clears every other row's).{link}"
        )
        return head + "\n\n" + table.read_text(encoding="utf-8").strip()
    return (
        '!!! info "No ablation run in this checkout"\n'
        "    `reports/ablation/` is written by `diffsketch ablate` (after `dvc repro` and a commit, see below),\n"
        "    or redrawn from finished rows by `diffsketch ablate --report`; then build the site again."
    )


def render_ablation_rows(_arg: str | None, state: dict) -> str:
    rows = yaml.safe_load((ROOT / "presets" / "ablations.yaml").read_text(encoding="utf-8"))
    if not rows:
        raise PluginError("generated:ablation-rows: presets/ablations.yaml has no rows")
    lines = ["| row | what it tests | params changed |", "|---|---|---|"]
    for name, row in rows.items():
        changes = ", ".join(_code(f"{k}: {_yaml_value(v)}") for k, v in (row.get("set") or {}).items()) or "(none)"
        lines.append(f"| {_code(name)} | {_cell(row.get('description', ''))} | {changes} |")
    return "\n".join(lines)


def _stage_params(spec: dict) -> list[str]:
    names: list[str] = []
    for item in spec.get("params", []) or []:
        names += [item] if isinstance(item, str) else [n for values in item.values() for n in values]
    return names


def _schema_settings(model: type, prefix: str = "") -> list[str]:
    """Every leaf setting of the params schema, dotted (``train.lr``)."""
    out = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        inner = _models_in(field.annotation)
        # sections are walked; inside a section, a list of models (evaluate.datasets) is one setting
        out += _schema_settings(inner[0], f"{name}.") if inner and not prefix else [f"{prefix}{name}"]
    return out


def _downstream(stages: dict) -> dict[str, list[str]]:
    """Each stage and the stages DVC reruns after it (their deps include its outputs), in dvc.yaml order."""
    outs = {name: [next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", []) or []] for name, spec in stages.items()}
    after: dict[str, list[str]] = {}
    for name in stages:
        reached, frontier = {name}, [name]
        while frontier:
            current = frontier.pop()
            for other, spec in stages.items():
                deps = [str(d) for d in spec.get("deps", []) or []]
                if other not in reached and any(d == o or d.startswith(o + "/") for d in deps for o in outs[current]):
                    reached.add(other)
                    frontier.append(other)
        after[name] = [s for s in stages if s in reached]
    return after


def render_reruns(_arg: str | None, state: dict) -> str:
    """Each parameter: the stages whose ``params:`` name it (and those DVC reruns after them), and what
    happens to finished work, from ``dvc.yaml`` and :mod:`diffsketch.core.keys`."""
    keys = _import("diffsketch.core.keys")
    schema = _import("diffsketch.core.params").Params
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    after = _downstream(stages)
    resumable = {"sample": "a new store; the old one is kept under its key", "pairs": "a new store; the old one is kept under its key",
                 "train": "new checkpoints; the old ones are kept under their key", "distill": "new checkpoints; the old ones are kept under their key"}  # fmt: skip
    lines = ["| parameter | stages that rerun | finished work |", "|---|---|---|"]
    for name in _schema_settings(schema):
        direct = [s for s, spec in stages.items() if any(name == p or name.startswith(p + ".") for p in _stage_params(spec))]
        if name in keys.NEUTRAL:
            if direct:
                raise PluginError(f"generated:reruns: {name} cannot change a result but dvc.yaml lists it for {', '.join(direct)}")
            lines.append(f"| {_code(name)} | none | carries over: {_cell(keys.NEUTRAL[name])} |")
            continue
        if not direct:
            raise PluginError(f"generated:reruns: {name} is in no stage's params in dvc.yaml and not in keys.NEUTRAL")
        rerun = [s for s in stages if any(s in after[d] for d in direct)]
        if name in keys.PROGRESS:
            work = f"carries over: {keys.PROGRESS[name]}"
        else:
            work = "; ".join(f"{s}: {resumable[s]}" for s in direct if s in resumable) or "recomputed"
        lines.append(f"| {_code(name)} | {', '.join(_code(s) for s in rerun)} | {_cell(work)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

RENDERERS = {
    "params": render_params,
    "cli": render_cli,
    "results": render_results,
    "ablation": render_ablation,
    "ablation-rows": render_ablation_rows,
    "reruns": render_reruns,
}


SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|mod|class|meth|attr|data|obj|exc):<code>(~?)([^<]+)</code>")


def on_page_content(html: str, page, config, files) -> str:
    """Docstrings written with Sphinx roles (``:func:`~a.b.c```) show the name as code, without the role."""
    return SPHINX_ROLE.sub(
        lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html
    )


def on_page_markdown(markdown: str, page, config, files) -> str:
    state: dict = {}

    def replace(match: re.Match) -> str:
        name, arg = match.group(1), (match.group(2) or "").strip() or None
        if name not in RENDERERS:
            raise PluginError(f"{page.file.src_uri}: unknown generated block {name!r} (known: {', '.join(RENDERERS)})")
        return RENDERERS[name](arg, state)

    out = MARKER.sub(replace, markdown)
    _check_params_complete(state)
    return out

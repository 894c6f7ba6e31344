"""The README and the documentation site: size, set-up commands, links, navigation, wording.

Fast and offline; no browser. The last test builds the site with ``mkdocs build --strict`` when
MkDocs is installed (``pip install -e ".[docs]"``) and is skipped otherwise.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_BYTES = 12 * 1024

INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ."
INSTALL_DEV = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[dev]"'

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
ISSUE_HASH = re.compile(r"(?<![\w&/#])#\d+\b")  # "#12", not "&#123;", a URL's "#12" anchor or "##"
HISTORY = re.compile(r"\b(now|since|new|newly|previously|used to|no longer|anymore|any more)\b", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def fenced_blocks(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text a reader reads as sentences: without code blocks, inline code and HTML comments."""
    return INLINE_CODE.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def issue_references(text: str) -> list[str]:
    body = prose(text)
    return ISSUE_WORD.findall(body) + ISSUE_HASH.findall(body)


def history_words(text: str) -> list[str]:
    return [m.group(0) for m in HISTORY.finditer(prose(text))]


def relative_targets(text: str) -> list[str]:
    """Relative link and image targets of a Markdown text (no URLs, no pure anchors), without anchors."""
    body = FENCE.sub("", text)
    targets = LINK.findall(body) + HTML_REF.findall(body)
    out = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
            continue
        out.append(target.split("#", 1)[0].split("?", 1)[0])
    return [t for t in out if t]


def missing_targets(text: str, base: Path) -> list[str]:
    return [t for t in relative_targets(text) if not (base / t).exists()]


def has_command_block(text: str, *lines: str) -> bool:
    """True when one fenced block holds ``lines`` in this order, each a whole line."""
    for block in fenced_blocks(text):
        body = [line.strip() for line in block.splitlines()]
        positions = [body.index(line) if line in body else -1 for line in lines]
        if -1 not in positions and positions == sorted(positions):
            return True
    return False


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml holds ``!!python/name:`` tags (Mermaid fences); they are irrelevant here."""


_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages(config: dict) -> list[str]:
    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [page for item in node for page in walk(item)]
        if isinstance(node, dict):
            return [page for value in node.values() for page in walk(value)]
        return []

    return [p for p in walk(config.get("nav", [])) if p.endswith(".md")]


def mkdocs_config() -> dict:
    return yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags)


# ---------------------------------------------------------------------------------------------


def test_readme_is_a_landing_page():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {MAX_README_BYTES})"


def test_readme_has_the_two_setup_blocks():
    text = README.read_text(encoding="utf-8")
    assert has_command_block(text, INSTALL, "dvc repro"), "the install + `dvc repro` block is missing"
    assert has_command_block(text, INSTALL_DEV, "python -m pytest -q"), "the install[dev] + pytest block is missing"


def test_readme_install_pins_match_ci():
    """CI runs the README's install command; the torch pins must be the same in both."""
    pins = re.search(r"torch==\S+ torchvision==\S+", INSTALL).group(0)
    assert pins in README.read_text(encoding="utf-8")
    assert pins in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_keeps_the_generated_results_block():
    """`diffsketch results --readme README.md` rewrites the text between these markers."""
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- results:begin -->") == 1 and text.count("<!-- results:end -->") == 1
    assert text.index("<!-- results:begin -->") < text.index("<!-- results:end -->")


@pytest.mark.parametrize("path", [README, *doc_pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_no_issue_numbers(path):
    found = issue_references(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)} refers to issues: {found}"


@pytest.mark.parametrize("path", [README, *doc_pages()], ids=lambda p: str(p.relative_to(REPO)))
def test_no_development_history(path):
    """The text describes the software as it is, not how it came to be."""
    found = history_words(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(REPO)} tells history: {sorted(set(found))}"


def test_readme_links_resolve():
    missing = missing_targets(README.read_text(encoding="utf-8"), REPO)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_links_into_the_docs():
    targets = relative_targets(README.read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") and t.endswith(".md") for t in targets)


def test_nav_lists_every_page():
    config = mkdocs_config()
    nav = nav_pages(config)
    pages = [p.relative_to(DOCS).as_posix() for p in doc_pages()]
    assert sorted(set(pages) - set(nav)) == [], "docs pages missing from mkdocs.yml nav"
    assert sorted(set(nav) - set(pages)) == [], "mkdocs.yml nav names pages that do not exist"
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"


def test_site_settings():
    config = mkdocs_config()
    assert config["site_name"] == "diffsketch"
    assert config["theme"]["name"] == "material"
    assert config.get("strict") is True
    hooks = config.get("hooks", [])
    assert hooks and all((REPO / h).is_file() for h in hooks)


def test_checks_catch_what_they_are_for():
    """Each helper above fails on the text it exists to reject."""
    assert issue_references("Fixed in issue 12 and #14.") == ["issue 12", "#14"]
    assert issue_references("`#14` in code, &#123; and [x](page.md#14) are fine") == []
    assert history_words("The store is now written first; it used to be last.") == ["now", "used to"]
    assert history_words("```\nnew = 1\n```\nA `new` key.") == []
    assert missing_targets("[a](no/such/file.md) [b](https://x.org) [c](#anchor)", REPO) == ["no/such/file.md"]
    assert not has_command_block("```bash\ndvc repro\n" + INSTALL + "\n```", INSTALL, "dvc repro")
    assert nav_pages({"nav": [{"A": "a.md"}, {"B": [{"C": "b/c.md"}]}]}) == ["a.md", "b/c.md"]


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "site" / "parameters" / "index.html").is_file()

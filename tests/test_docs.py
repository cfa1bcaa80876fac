"""The documentation site: every config key has a one-line help in its dataclass (the config
reference is rendered from it), ``mkdocs build --strict`` passes, and the README stays a
short entry point that links existing pages."""

import os
import re
import subprocess
import sys

from fedtune.config import Config
from fedtune.config_help import field_comments, key_help, markdown, missing_help
from tests.conftest import ROOT


def test_every_config_key_has_help():
    assert not missing_help(), f"config keys without a `# comment` in their dataclass: " \
        f"{missing_help()}"
    assert [k.key for k in key_help()] == list(Config().to_flat())


def test_help_is_read_from_trailing_and_preceding_comments():
    from dataclasses import dataclass

    @dataclass
    class Section:
        a: int = 1  # trailing help
        # a block above,
        # two lines
        b: str = "x"
        c: float = 0.0

    assert field_comments(Section) == {"a": "trailing help", "b": "a block above, two lines",
                                       "c": ""}


def test_reference_table_has_every_key_with_default_and_section():
    table = markdown()
    for k in key_help():
        assert f"| `{k.key}` |" in table and f" | {k.section} | " in table
    assert '| `lora-alpha` | `32` | lora | LoRA alpha (scale alpha/r) |' in table
    assert "<i>" not in table  # angle brackets escaped


def test_config_markdown_command_prints_the_reference(capsys):
    from fedtune.cli import main

    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown()


def test_mkdocs_build_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "config" / "index.html").exists()


def test_readme_is_short_keeps_the_two_commands_and_links_existing_pages():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert ("pip install torch==2.13.0 -e . && fedtune simulate\n" in readme
            and 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q\n' in readme)
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 15
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links pages that do not exist: {missing}"
    assert "docs/default-run.png" in readme


def test_every_figure_in_the_readme_is_on_a_docs_page():
    """The README summarises the pages: a figure there that no page holds has drifted."""
    readme = (ROOT / "README.md").read_text()
    pages = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    figures = set(re.findall(r"\d+(?:[.,]\d+)+", readme))
    assert len(figures) >= 20
    drifted = sorted(f for f in figures if f not in pages)
    assert not drifted, f"README figures on no docs page: {drifted}"

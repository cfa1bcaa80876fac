"""The house rules, checked on the source: layers import only downwards, only the Flower layer
and the deployment tools (which build and sign Flower's app bundles) import Flower, modules
stay small, no code compares algorithm names, the registries and the config are import-light
(no torch, no Flower) so user errors come back in a blink, and ``ruff`` is clean."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "fedtune"
MAX_LINES = 400
#: Bottom to top. A module may import its own layer and the layers below, never above.
#: ``results`` holds the ``output`` section and imports nothing of fedtune at run time but the
#: ``report-to`` parser (``tracking.config``, a section module).
#: ``wire`` (records, reply checks, the 16-bit rounding, Flower conversion and byte counts) is
#: below every method, so algorithms, strategies and privacy share it without importing each
#: other.
LAYERS = [
    ("sections", r"fedtune$|fedtune\.(errors|seeding|logs|results|[\w.]+\.config)$"),
    ("config", r"fedtune\.config(_help)?$"),
    ("wire", r"fedtune\.wire(\..+)?$"),
    ("library", r"fedtune\.(data|models|train|eval|seeded|deploy|secagg|tracking)(\..+)?$"
                r"|fedtune\.(node|node_pins|plot|progress|payloads|checkpoint|driver)$"),
    ("methods", r"fedtune\.(algorithms|strategies|privacy)(\..+)?$"
                r"|fedtune\.(compat(_adapter)?|key_readers)$"),
    ("runtime", r"fedtune\.flower(\..+)?$"),
    ("cli", r"fedtune\.cli(_\w+)?$"),
]
FLOWER_ALLOWED = (r"fedtune\.(flower|strategies|deploy)(\..+)?$|fedtune\.cli(_\w+)?$"
                  r"|fedtune\.wire\.flower$")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    for i, (_, pattern) in enumerate(LAYERS):
        if re.match(pattern, module):
            return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def _runtime_imports(path: Path) -> list[str]:
    """Modules imported at run time (anywhere in the file, TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_layers_import_only_downwards_and_only_the_runtime_imports_flower():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        mine = _layer(module)
        for imported in _runtime_imports(path):
            if imported.split(".")[0] == "flwr" and not re.match(FLOWER_ALLOWED, module):
                wrong.append(f"{module} imports {imported} (Flower)")
            target = _resolve(imported, modules) if imported.startswith("fedtune") else None
            if target and _layer(target) > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} "
                             f"({LAYERS[_layer(target)][0]})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"),
                                                *(ROOT / "server_app").glob("*.py"),
                                                *(ROOT / "client_app").glob("*.py")]
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_no_code_compares_algorithm_names():
    """An algorithm is chosen through the registry, never ``if algorithm == ...``."""
    pattern = re.compile(r"\.algorithm\s*(==|!=|in\s|not in\s)"
                         r"|[\"']fedkseed(-pro)?[\"']\s*(==|in\s)")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in [*PACKAGE.rglob("*.py"), *(ROOT / "server_app").glob("*.py"),
                      *(ROOT / "client_app").glob("*.py")]
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("module", ["fedtune.config", "fedtune.algorithms",
                                    "fedtune.strategies", "fedtune.cli"])
def test_config_and_registries_import_neither_torch_nor_flower(module):
    code = (f"import sys, {module}, fedtune.config as c, fedtune.algorithms as a; "
            "a.resolve(c.Config.from_flat({'algorithm': 'fedkseed'})); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', "
            "'transformers', 'peft'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]", f"{module} pulls in {out}"


def test_algorithms_and_strategies_do_not_import_each_other_both_ways():
    """Strategies may build on an algorithm's interface (``fedtune.algorithms.base``), never
    the reverse: a strategy's client half reaches an algorithm through the runtime. Privacy and
    secure aggregation know payloads, not algorithms."""
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for imported in _runtime_imports(path):
            target = _resolve(imported, modules) if imported.startswith("fedtune") else None
            if not target:
                continue
            if module.startswith("fedtune.algorithms") and target.startswith("fedtune.strategies"):
                wrong.append(f"{module} imports {target}")
            if re.match(r"fedtune\.(privacy|secagg)\b", module) and target.startswith(
                    "fedtune.algorithms"):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_tree_is_ruff_clean():
    """``ruff check`` passes on the whole tree (rules in pyproject.toml, ruff's version pinned
    in the test extra): a style slip fails the suite, not a later reader."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]

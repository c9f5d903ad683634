"""How the package hangs together: dependencies point one way (imports inside functions and under
``if TYPE_CHECKING`` count too), no import circle between modules, and the command line starts without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tokenclean

PACKAGE = Path(tokenclean.__file__).parent

# The order of the package's parts, lowest first: a module may import its own part and the parts before it, never
# one after it. Parts on one line are peers: they may import each other as long as no circle closes.
ORDER = [
    {"errors"},
    {"io", "config", "commands", "lock"},
    {"core"},
    {"compute"},
    {"selection", "evaluation"},
    {"runs"},
    {"api", "report"},
    {"cli", "demo", "__init__", "__main__"},
]


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path] = MODULES, root: Path = PACKAGE) -> set[str]:
    """The modules of ``modules`` (the package ``root``'s) that ``path`` imports anywhere: at the top, inside
    functions, under ``if TYPE_CHECKING``. ``from . import x`` imports module ``x``; ``from .m import name``, ``m``."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & set(modules)
            found |= submodules or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t in modules and t != name}


def part(module: str) -> str:
    """``tokenclean.runs.stages`` -> ``runs``; a top-level module is its own part (``tokenclean`` is ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


RANK = {p: i for i, peers in enumerate(ORDER) for p in peers}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_every_part_has_a_place():
    assert {part(m) for m in MODULES} <= set(RANK), sorted({part(m) for m in MODULES} - set(RANK))


def test_no_import_points_up():
    up = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if RANK[part(t)] > RANK[part(m)])
    assert not up, "imports pointing up the order " + " < ".join("/".join(sorted(p)) for p in ORDER) + ":\n" + \
        "\n".join(up)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules that import each other (directly or not)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in sorted(graph[m]):
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            group = []
            while not group or group[-1] != m:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


def test_no_import_circle():
    # a package's __init__ is initialised before its modules, so a module importing its own package closes no circle
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in GRAPH.items()}
    assert not cycles(graph), f"import circles: {cycles(graph)}"


@pytest.mark.parametrize("a, b, circle", [
    ("from .b import x", "def f():\n    from .a import y", True),  # closed by an import inside a function
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x", "from . import a", True),
    ("from .b import x", "import pkg.a", True),
    ("from .b import x", "import os\nfrom . import c", False),
])
def test_the_checks_see_every_import(tmp_path, a, b, circle):
    (tmp_path / "pkg").mkdir()
    modules = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.a": tmp_path / "pkg" / "a.py",
               "pkg.b": tmp_path / "pkg" / "b.py"}
    for path, text in zip(modules.values(), ("", a, b)):
        path.write_text(text)
    graph = {m: imports_of(p, modules, tmp_path / "pkg") for m, p in modules.items()}
    assert bool(cycles(graph)) is circle


def test_help_imports_no_torch():
    code = ("import sys\nfrom tokenclean.cli import main\n"
            "for argv in (['--help'], ['show', '--help'], ['report', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import tokenclean, tokenclean.report.view, tokenclean.runs.layout, tokenclean.runs.methods\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: tokenclean" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_public_api_is_reexported():
    for name in ("score", "select", "train", "export", "run", "compare", "prepare_tokens", "RunConfig", "RunSettings",
                 "TokenTable", "Scores", "Selection", "SelectConfig", "select_tokens", "IGNORE_INDEX", "DataConfig"):
        assert callable(getattr(tokenclean, name)) or name == "IGNORE_INDEX", name
    assert tokenclean.IGNORE_INDEX == -100
    assert set(tokenclean.__all__) >= {"score", "select", "train", "export", "run", "compare"}

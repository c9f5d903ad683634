"""How the package hangs together: no import cycle between modules, and the command line starts without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import tokenclean

PACKAGE = Path(tokenclean.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports when it is imported (not inside functions or
    ``if TYPE_CHECKING``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("tokenclean"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` imports module x
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tokenclean")}
    return found


def test_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # a module's own packages are initialised before it, so importing them is no cycle
    graph = {m: {t for t in _top_level_imports(p) if t in modules and not m.startswith(t)}
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


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

"""Folder rules that code review would otherwise have to catch: tests never import the benchmark scripts."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_tests_do_not_import_benchmarks():
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.split(".")[0] == "benchmarks")
                 for p in sorted((ROOT / "tests").glob("*.py"))}
    assert not {name: mods for name, mods in offenders.items() if mods}

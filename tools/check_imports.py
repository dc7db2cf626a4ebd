"""The import contract of kevo's three packages, checked from the source (nothing is imported).

    ingest -> kevo_store <- queries

- `kevo_store` imports neither `ingest` nor `queries`;
- `ingest` and `queries` never import each other;
- no import cycle inside a package (module-level and function-level imports alike: a lazy import
  only hides a cycle, it does not remove it).

Run as `python tools/check_imports.py [ROOT]`; prints one line per violation and exits 1 if any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("kevo_store", "ingest", "queries")
# who may import whom (besides itself)
ALLOWED = {"kevo_store": set(), "ingest": {"kevo_store"}, "queries": {"kevo_store"}}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    """The project modules that `path` imports, resolved to the longest existing module name."""
    this = module_name(root, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from a import b`: b is either a module (a.b) or a name in a; the longest module wins
            names = [f"{prefix}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(root, p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    modules = set(files)
    return {m: imports_of(root, p, modules) for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            # a package's __init__ re-exporting its children is not a cycle of design
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def violations(root: Path) -> list[str]:
    g = graph(root)
    problems = []
    for mod, deps in sorted(g.items()):
        top = mod.split(".")[0]
        for dep in sorted(deps):
            other = dep.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                problems.append(f"{mod} imports {dep}: {top} may import only {sorted(ALLOWED[top]) or 'itself'}")
    # an __init__ that imports its own children is how a package exposes its API; drop those edges
    # before looking for cycles, so only module-to-module cycles count
    g2 = {m: {d for d in deps if not (m and d.startswith(m + ".") and _is_init(root, m))} for m, deps in g.items()}
    for comp in cycles(g2):
        problems.append("import cycle: " + " <-> ".join(comp))
    return problems


def _is_init(root: Path, mod: str) -> bool:
    return (root / Path(*mod.split(".")) / "__init__.py").exists()


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    problems = violations(root)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} import-contract violation(s)")
        return 1
    print("import contract holds: ingest -> kevo_store <- queries, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

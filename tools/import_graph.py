"""The import graph of the `swd` package, by unit (a top-level module or sub-package).

Every `import` in a file counts, also those inside functions (a lazy import is still a
dependency). Prints one line per unit with the units it imports, and any cycles:

    python tools/import_graph.py            # the graph
    python tools/import_graph.py --modules  # per module instead of per unit
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "swd"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The swd modules a file imports (`from swd.x import y` counts swd.x.y when it is a module)."""
    found = set()
    root = next(p for p in path.parents if p.name == "swd")
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("swd"):
                found.add(name)
    return found


def unit_of(module: str) -> str:
    """swd.train.distill -> swd.train; swd.losses -> swd.losses."""
    return ".".join(module.split(".")[:2])


def graph(by_unit: bool = True) -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        src = unit_of(name) if by_unit else name
        targets = {unit_of(m) if by_unit else m for m in imported_modules(path, modules)}
        edges.setdefault(src, set()).update(t for t in targets if t != src and t != "swd")
    edges.pop("swd", None)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    edges = graph(by_unit="--modules" not in sys.argv)
    for src in sorted(edges):
        print(f"{src:<24} -> {', '.join(sorted(edges[src])) or '-'}")
    found = cycles(edges)
    for comp in found:
        print("cycle:", " <-> ".join(comp))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

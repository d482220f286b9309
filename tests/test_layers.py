"""The package's layers point one way: no import cycles, and no unit imports a higher layer.

Every import counts, lazy ones inside functions too (tools/import_graph.py prints the graph).
"""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"
spec = importlib.util.spec_from_file_location("import_graph", TOOL)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

# Lowest first. A unit may import units of lower layers and, without cycles, of its own.
LAYERS = [
    {"swd.errors"},
    {"swd.config", "swd.runtime", "swd.images", "swd.hub", "swd.processes", "swd.schedules", "swd.video"},
    {"swd.models"},
    {"swd.sampling", "swd.lora", "swd.data"},
    {"swd.losses", "swd.pipelines"},
    {"swd.objectives"},
    {"swd.train"},
    {"swd.eval"},
    {"swd.demo"},
    {"swd.app"},
    {"swd.commands"},
    {"swd.cli"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def test_every_unit_has_a_layer():
    assert set(import_graph.graph()) == set(LEVEL)


def test_no_import_cycles_between_units_or_modules():
    assert import_graph.cycles(import_graph.graph()) == []
    assert import_graph.cycles(import_graph.graph(by_unit=False)) == []


def test_no_upward_imports():
    upward = [f"{src} -> {dst}" for src, targets in import_graph.graph().items() for dst in targets
              if LEVEL[dst] > LEVEL[src]]
    assert upward == []


def test_the_checker_sees_an_upward_lazy_import(tmp_path):
    """The graph reads imports inside functions too, and resolves `from swd.x import module`."""
    pkg = tmp_path / "swd"
    (pkg / "train").mkdir(parents=True)
    (pkg / "eval").mkdir()
    for f in ("__init__.py", "train/__init__.py", "eval/__init__.py", "eval/evaluate.py"):
        (pkg / f).write_text("")
    (pkg / "train" / "distill.py").write_text("def f():\n    from swd.eval import evaluate\n")
    files = {import_graph.module_name(p, pkg): p for p in pkg.rglob("*.py")}
    assert import_graph.imported_modules(pkg / "train" / "distill.py", set(files)) == {"swd.eval.evaluate"}

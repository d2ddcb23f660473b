"""The package's shape, read from the source with ast (nothing is imported):
modules stay under 700 lines, our module-level imports form no cycle, and our
own modules are imported at module top except where a lazy import is listed
below with its reason. Also: the public export lists name only real things."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fcn_repro"
MAX_LINES = 700

#: (importing module, imported module of ours) -> why the import is inside a function
LAZY_IMPORTS = {
    ("fcn_repro", "fcn_repro.predict"): "fcn_repro.load: `import fcn_repro` must not import torch",
    ("fcn_repro", "fcn_repro.caffe"): "the package's caffe names on first use: `import fcn_repro` stays "
                                      "free of torch and h5py",
    ("fcn_repro", "fcn_repro.resolve"): "fcn_repro.list_nets: `import fcn_repro` stays light",
    ("fcn_repro", "fcn_repro.evaluation"): "fcn_repro.evaluate: `import fcn_repro` must not import torch",
    ("fcn_repro", "fcn_repro.fast"): "fcn_repro.optimize: `import fcn_repro` must not import torch",
    ("fcn_repro", "fcn_repro.training"): "fcn_repro.train: `import fcn_repro` must not import torch",
    ("fcn_repro.caffe", "fcn_repro.caffe.net"): "the builder's names on first use: the formats (and the tools "
                                                "that only read or convert weights) stay free of torch",
    ("fcn_repro.hub", "fcn_repro.caffe.net"): "check_parses builds the net (on the meta device): listing, "
                                             "downloading and hashing weights stay free of torch",
    ("fcn_repro.conversion", "fcn_repro.caffe"): "Net, only for `convert --prototxt`: converting weights "
                                                 "stays free of torch",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` (a module or a name in one) lives in, or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name if name.startswith("fcn_repro") else None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: None if is_package else -1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        # `from pkg import sub` imports the submodule; `from mod import name` the module
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return {t for t in map(_ours, names) if t and t != module}


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(our modules imported at module level, [(line, our module) imported inside a function])."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top, local = set(), []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = _targets(module, path.name == "__init__.py", child)
                if in_function:
                    local.extend((child.lineno, t) for t in sorted(found))
                elif not type_checking:
                    top.update(found)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_checking)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)   # never run: not an import at run time
            else:
                visit(child, in_function, type_checking)

    visit(tree, False, False)
    return top, local


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_walk_sees_the_package():
    assert {"fcn_repro", "fcn_repro.caffe.net", "fcn_repro.data.transforms", "fcn_repro.fast"} <= set(MODULES)
    top, _ = GRAPH["fcn_repro.caffe.net"]
    assert {"fcn_repro.caffe.prototxt", "fcn_repro.caffe.layers.base"} <= top   # absolute `from a.b import c`
    top, _ = GRAPH["fcn_repro.caffe.layers.input"]
    assert "fcn_repro.caffe.layers.base" in top                                 # relative `from .base import`
    _, local = GRAPH["fcn_repro.caffe"]
    assert (("fcn_repro.caffe", "fcn_repro.caffe.net") in LAZY_IMPORTS
            and "fcn_repro.caffe.net" in {t for _, t in local})                  # function-local, seen as such


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_the_size_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_no_import_cycle_among_our_modules():
    cycles = _cycles({m: top for m, (top, _) in GRAPH.items()})
    assert not cycles, f"module-level import cycles: {cycles}"


def test_our_modules_are_imported_at_module_top():
    offenders = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
                 for m, (_, local) in sorted(GRAPH.items()) for line, t in local if (m, t) not in LAZY_IMPORTS]
    assert not offenders, ("function-local imports of our own modules (move them to the top, or list them in "
                           "LAZY_IMPORTS with the reason):\n  " + "\n  ".join(offenders))


def test_every_listed_lazy_import_still_exists():
    seen = {(m, t) for m, (_, local) in GRAPH.items() for _, t in local}
    assert not set(LAZY_IMPORTS) - seen, f"stale LAZY_IMPORTS entries: {set(LAZY_IMPORTS) - seen}"


# ---------------------------------------------------------------- export lists

@pytest.mark.parametrize("package", ["fcn_repro", "fcn_repro.caffe"])
def test_export_lists_name_real_things(package):
    import importlib

    mod = importlib.import_module(package)
    assert len(set(mod.__all__)) == len(mod.__all__), f"{package}.__all__ repeats a name"
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    assert set(mod.__all__) <= set(dir(mod))


def test_exports_include_the_readme_api_and_the_error_family():
    import importlib.util

    import fcn_repro
    import fcn_repro.caffe
    from fcn_repro.caffe.layers.base import BlobLimitError
    from fcn_repro.errors import FcnReproError

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = set()
    for names in re.findall(r"^from fcn_repro\.caffe import ([\w, ]+)$", readme, re.M):
        shown |= {n.strip() for n in names.split(",")}
    assert {"Net", "load_weights", "save_weights", "parse_prototxt"} <= shown
    for module, names in re.findall(r"^from (fcn_repro[\w.]*) import ([\w, ]+)$", readme, re.M):
        mod = importlib.import_module(module)
        for n in names.split(","):
            n = n.strip()
            assert hasattr(mod, n) or importlib.util.find_spec(f"{module}.{n}"), f"README: from {module} import {n}"
    for n in re.findall(r"\bfcn_repro\.(\w+)\(", readme):
        assert n in fcn_repro.__all__, f"README calls fcn_repro.{n}"
    for pkg in (fcn_repro, fcn_repro.caffe):
        assert shown | {"BlobLimitError"} <= set(pkg.__all__), pkg.__name__
        assert pkg.BlobLimitError is BlobLimitError
    assert "load" in fcn_repro.__all__ and fcn_repro.Net is fcn_repro.caffe.Net
    for name in fcn_repro.__all__:
        obj = getattr(fcn_repro, name)
        if name.endswith("Error"):
            assert issubclass(obj, FcnReproError), name


def test_importing_the_package_and_the_formats_does_not_import_torch():
    code = ("import sys, fcn_repro, fcn_repro.caffe, fcn_repro.zoo, fcn_repro.hub; fcn_repro.caffe.parse_prototxt; "
            "fcn_repro.load_weights; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- library and tools

def _is_tool(module: str) -> bool:
    """A tool: a ``python -m`` entry point (``if __name__ == "__main__"``, a ``__main__`` module) or the
    command-line conventions every tool shares (fcn_repro.cli)."""
    if module == "fcn_repro.cli" or module.split(".")[-1] == "__main__":
        return True
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
               for n in tree.body)


TOOLS = {m for m in MODULES if _is_tool(m)}


def test_the_tools_are_found():
    assert {"fcn_repro.cli", "fcn_repro.evaluate", "fcn_repro.infer", "fcn_repro.convert", "fcn_repro.train",
            "fcn_repro.zoo", "fcn_repro.compare", "fcn_repro.netspec", "fcn_repro.export.__main__"} <= TOOLS
    assert not {"fcn_repro.evaluation", "fcn_repro.hub", "fcn_repro.resolve", "fcn_repro.trainer"} & TOOLS


def test_no_library_module_imports_a_tool():
    """The library (everything but the tools) never imports a tool module, at the top or in a function:
    the tools are shells over the library, and process groups and devices are set up by them only."""
    offenders = sorted(f"{m} imports {t}" for m, (top, local) in GRAPH.items() if m not in TOOLS
                       for t in top | {t for _, t in local} if t in TOOLS)
    assert not offenders, "library modules importing tools:\n  " + "\n  ".join(offenders)


def test_the_library_parses_no_command_line_and_starts_no_process_group():
    offenders = []
    for m, path in MODULES.items():
        if m in TOOLS:
            continue
        text = path.read_text(encoding="utf-8")
        for bad in ("import argparse", "init_process_group(", "cuda.set_device(", "sys.argv"):
            if bad in text:
                offenders.append(f"{m}: {bad}")
    assert not offenders, offenders


def test_tools_do_not_re_export_library_names():
    """A library name has one import path: a tool's ``__all__`` lists only what the tool defines."""
    offenders = []
    for m in sorted(TOOLS):
        tree = ast.parse(MODULES[m].read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for tt in n.targets
                    for t in (tt.elts if isinstance(tt, ast.Tuple) else [tt]) if isinstance(t, ast.Name)}
        for n in tree.body:
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
                offenders += [f"{m}.{x}" for x in ast.literal_eval(n.value) if x not in defined]
    assert not offenders, f"tools re-exporting library names: {offenders}"


#: modules that still compare a name with 'sample' -> why (the sample is otherwise data: its cards)
SAMPLE_BRANCHES = {
    "fcn_repro.owntrain": "own classes: the sample's reduced widths and fine-tuning recipe (the own-data issue's)",
}


def test_the_sample_is_data_not_a_branch():
    """The bundled sample is a card (registry.SAMPLE, its dataset card, `resource:` entries), read like
    every other card: no module compares a name with "sample" (`== "sample"`, `in ("sample", ...)`)."""
    found = {}
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value == "sample" for c in [node.left, *node.comparators]):
                found.setdefault(m, []).append(node.lineno)
    unexpected = {m: lines for m, lines in found.items() if m not in SAMPLE_BRANCHES}
    assert not unexpected, f"branches on the name 'sample': {unexpected}"
    assert not set(SAMPLE_BRANCHES) - set(found), f"stale SAMPLE_BRANCHES: {set(SAMPLE_BRANCHES) - set(found)}"

"""The tools' front: ``python -m fcn_repro`` lists them; every option of every tool has help
text and every tool's --help has examples; one progress switch (``--no-progress``) for all;
no progress-bar frames off a terminal."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcn_repro.__main__ import TOOLS

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fcn_repro"


def _tool_modules() -> set:
    """Every module of the package that runs as ``python -m``, read from the source."""
    found = set()
    for p in PKG.rglob("*.py"):
        if '__name__ == "__main__"' not in p.read_text(encoding="utf-8"):
            continue
        rel = p.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__main__" else rel.parts
        if parts:   # fcn_repro/__main__.py itself is the listing
            found.add(".".join(parts))
    return found


def test_python_m_fcn_repro_lists_every_tool():
    assert set(TOOLS) == _tool_modules()
    r = subprocess.run([sys.executable, "-m", "fcn_repro"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    for name, what in TOOLS.items():
        assert any(line.split()[:1] == [name] and what in line for line in r.stdout.splitlines()), name
    r = subprocess.run([sys.executable, "-m", "fcn_repro", "nosuchtool"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "no tool 'nosuchtool'" in r.stderr


def test_python_m_fcn_repro_runs_a_tool():
    r = subprocess.run([sys.executable, "-m", "fcn_repro", "zoo", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m fcn_repro.zoo"), r.stderr


class _Parsed(Exception):
    pass


def _parsers(tool: str, argv: list) -> list:
    """The argument parser a tool's ``main(argv)`` builds (caught as it parses), with its sub-parsers."""
    module = importlib.import_module(f"fcn_repro.{tool}" if (PKG / f"{tool}.py").exists()
                                     else f"fcn_repro.{tool}.__main__")
    seen = []

    def parse(self, args=None, namespace=None):
        seen.append(self)
        raise _Parsed

    mp = pytest.MonkeyPatch()
    mp.setattr(argparse.ArgumentParser, "parse_args", parse)
    mp.setattr(argparse.ArgumentParser, "parse_known_args", parse)
    try:
        with pytest.raises(_Parsed):
            module.main(argv)
    finally:
        mp.undo()
    out, todo = [], list(seen)
    while todo:
        ap = todo.pop()
        out.append(ap)
        for a in ap._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += list(a.choices.values())
    return out


#: (tool, argv reaching its parser): every parser of every tool (zoo's download has its own)
PARSERS = [(t, []) for t in TOOLS] + [("zoo", ["download"])]


@pytest.mark.parametrize("tool,argv", PARSERS, ids=[" ".join([t, *a]) for t, a in PARSERS])
def test_every_option_has_help_and_the_tool_has_examples(tool, argv):
    parsers = _parsers(tool, argv)
    for ap in parsers:
        for a in ap._actions:
            if isinstance(a, argparse._SubParsersAction):
                for choice in a._choices_actions:
                    assert choice.help, f"{ap.prog} {choice.dest}: no help text"
                continue
            assert a.help and a.help != argparse.SUPPRESS, f"{ap.prog} {a.option_strings or a.dest}: no help text"
        opts = {o for a in ap._actions for o in a.option_strings}
        assert not ({"-q", "--quiet"} & opts) or "--no-progress" in opts, f"{ap.prog}: -q is --no-progress's alias"
    top = parsers[0]
    assert top.epilog and f"-m fcn_repro.{tool}" in top.epilog, f"{top.prog}: no example in --help"
    assert top.epilog in top.format_help()


def test_one_progress_switch_for_every_tool_with_a_bar():
    """Every tool with a progress bar turns it off with --no-progress (convert keeps -q as an alias)."""
    for tool, argv in [("evaluate", []), ("infer", []), ("train", []), ("convert", []), ("zoo", ["download"]),
                       ("data", [])]:
        opts = {o for ap in _parsers(tool, argv) for a in ap._actions for o in a.option_strings}
        assert "--no-progress" in opts, tool
    (convert,) = _parsers("convert", [])
    a = convert.parse_args(["in.caffemodel", "-q"])
    assert a.no_progress is True


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    from fcn_repro import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress.bar(total=3, desc="x")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert bar.disable and capsys.readouterr().err == ""


def test_evaluate_off_a_terminal_writes_no_bar_frames(tmp_path):
    """The bundled evaluation with stderr a file: plain lines, no tqdm frames ('\\r')."""
    err = tmp_path / "err.log"
    with open(err, "w") as f:
        r = subprocess.run([sys.executable, "-m", "fcn_repro.evaluate", "--net", "sample", "--limit", "2"],
                           stdout=subprocess.PIPE, stderr=f, text=True, cwd=tmp_path, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = err.read_text()
    assert r.returncode == 0, text
    assert "\r" not in text and "img/s" not in text and "it/s" not in text, text

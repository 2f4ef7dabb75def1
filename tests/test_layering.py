"""The floors of the code: util/ imports nothing above it; models/ and datasets/ import nothing from engine/;
engine/'s job packages import only the jobs below them. The earlier ``python -m engine.<name>`` commands run.

A function-local import that reaches up a floor is a circle in disguise, so every import statement counts,
at module level or inside a function.
"""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABOVE = {"util": ("models", "datasets", "engine"), "models": ("engine",), "datasets": ("engine",)}


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).glob("*.py"))


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``path``, wherever it stands."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
    return names


def _reaches(module: str, packages: tuple[str, ...]) -> bool:
    return module.split(".")[0] in packages


# engine/'s jobs, each with the jobs it may import (engine/cli.py, the shared argument parsing, is open to all).
ENGINE_JOBS = {
    "training": (),
    "evaluation": ("training",),
    "robustness": ("training", "evaluation"),
    "deployment": ("evaluation",),
    "reproduction": ("training", "evaluation", "robustness"),
}


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_import_reaches_up_a_floor(package):
    above = ABOVE[package]
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imported_names(path)
        if _reaches(name, above)
    ]
    assert not bad, f"{package}/ must not import {', '.join(above)}:\n" + "\n".join(bad)


@pytest.mark.slow
def test_importing_util_loads_nothing_above_it():
    modules = [f"util.{p.stem}" for p in _modules("util") if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'datasets', 'engine'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing util/ loaded: {out.stdout.split()}"


@pytest.mark.parametrize("job", sorted(ENGINE_JOBS))
def test_engine_jobs_import_only_the_jobs_below_them(job):
    allowed = {"cli", job, *ENGINE_JOBS[job]}
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted((REPO / "engine" / job).glob("*.py"))
        for line, name in _imported_names(path)
        if name.startswith("engine.") and name.split(".")[1] not in allowed
    ]
    assert not bad, f"engine/{job}/ may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_every_engine_module_belongs_to_a_job_or_keeps_a_command():
    assert {p.name for p in (REPO / "engine").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ENGINE_JOBS)
    for path in (REPO / "engine").glob("*.py"):
        if path.stem in ("__init__", "cli"):
            continue
        names = [name for _, name in _imported_names(path)]
        assert len(path.read_text().splitlines()) < 12 and any(n.startswith("engine.") for n in names), path.name


@pytest.mark.parametrize("command", ["compare", "demo", "export", "exported", "reproduce", "retrieval", "robustness"])
def test_earlier_command_paths_still_run(command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"engine.{command}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"engine.{command}", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out

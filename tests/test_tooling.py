"""The static checks run with the suite (tools/check.py): ruff, mypy and the import contracts, over every package
— scanctl/, and drivers/ and simulators/ under the names they are installed with (scanctl.drivers,
scanctl.simulators), which neither plain mypy nor plain lint-imports sees."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "tools" / "check.py"
#: Every module of the installed package (its folders: pyproject.toml's [tool.setuptools] packages and package-dir).
PACKAGE_FILES = sorted(path for folder in ("scanctl", "drivers", "simulators")
                       for path in (ROOT / folder).rglob("*.py"))


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tools_check", CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(name: str) -> str:
    """Run ``tools/check.py NAME`` as CI does; its output, or a failure that shows it."""
    proc = subprocess.run([sys.executable, str(CHECK), name], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"tools/check.py {name} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_ruff_passes():
    run_check("ruff")


def test_no_module_imports_itself_round_a_loop():
    assert "0 import cycles" in run_check("cycles").splitlines()


def test_a_cycle_is_found():
    loops = _load_check().loops
    assert loops({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert loops({"a": ["b"], "b": [], "c": ["c"]}) == []  # a chain, and a module importing itself, loop nothing


def test_mypy_passes_on_every_package():
    out = run_check("mypy")
    assert f"no issues found in {len(PACKAGE_FILES) + 1} source files" in out, out  # + tools/check.py


def test_import_contracts_hold_on_every_package():
    out = run_check("imports")
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Analyzed {len(PACKAGE_FILES)} files" in out, out  # drivers/ and simulators/ are in the graph
    assert f"Contracts: {len(contracts)} kept, 0 broken." in out, out


def test_files_are_named_as_installed():
    check = _load_check()
    mapping = check.package_dirs()
    assert mapping == {"scanctl.drivers": ROOT / "drivers", "scanctl.simulators": ROOT / "simulators"}
    cases = {
        ("drivers.zmq_proxy", "drivers/zmq_proxy.py"): "scanctl.drivers.zmq_proxy",
        ("simulators", "simulators/__init__.py"): "scanctl.simulators",
        ("simulators.physics.bloch", "simulators/physics/bloch.py"): "scanctl.simulators.physics.bloch",
        ("scanctl.engine.run", "scanctl/engine/run.py"): "scanctl.engine.run",
        ("check", "tools/check.py"): "check",
    }
    for (module, path), name in cases.items():
        assert check.installed_name(module, ROOT / path, mapping) == name


def test_installed_layout_holds_every_module_at_its_installed_place():
    check = _load_check()
    with check.installed_layout() as base:
        for path in PACKAGE_FILES:
            relative = path.relative_to(ROOT)
            if relative.parts[0] != "scanctl":
                relative = Path("scanctl", *relative.parts)
            assert (base / relative).resolve() == path.resolve()
    assert not base.exists()

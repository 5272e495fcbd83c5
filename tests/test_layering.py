"""The storage engine and the Raft core never import Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY_FREE = [ROOT / "store", ROOT / "actors" / "raft"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "__import__", "import_module"
        ):
            names.update(arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
    return names


def test_no_ray_import_in_source() -> None:
    offenders = []
    for folder in RAY_FREE:
        for path in sorted(folder.rglob("*.py")):
            for name in imported_modules(path):
                if name == "ray" or name.startswith("ray.") or name.startswith("rayconf.actors") and \
                        not name.startswith("rayconf.actors.raft"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_import_check_catches_ray(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom ray.util import queue\nimportlib.import_module('ray')\n")
    assert {"ray.util", "ray"} <= imported_modules(sample)


def test_engine_loads_without_ray() -> None:
    modules = sorted(
        "rayconf." + ".".join(path.relative_to(ROOT).with_suffix("").parts).replace("__init__", "").rstrip(".")
        for folder in RAY_FREE for path in folder.rglob("*.py")
    )
    script = "import sys\n" + "".join(f"import {name}\n" for name in modules) + \
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\nprint(loaded)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

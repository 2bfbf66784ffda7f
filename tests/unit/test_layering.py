"""The core never imports Lightning or Hydra (ARCHITECTURE.md: they live only at the edges)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = ("attacks", "losses", "schedules", "certify", "metrics", "models")
SRC = Path(__file__).resolve().parents[2] / "src" / "advtrain"


def test_core_modules_have_no_lightning_or_hydra_imports() -> None:
    offenders = []
    files = [SRC / "threat.py", SRC / "evaluation.py", SRC / "normalization.py"]
    for package in CORE:
        files += sorted((SRC / package).rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                if root in {"pytorch_lightning", "lightning", "hydra", "omegaconf"}:
                    offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert not offenders, offenders


def test_importing_the_core_loads_no_lightning() -> None:
    code = (
        "import sys, advtrain, advtrain.attacks, advtrain.losses, advtrain.schedules, "
        "advtrain.certify, advtrain.metrics, advtrain.models, advtrain.normalization, "
        "advtrain.models.view\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'hydra')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

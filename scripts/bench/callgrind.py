"""Counting a benchmark's phases in instructions under ``valgrind --tool=callgrind``.

Shared by the ``*_instructions`` benchmarks. The benchmark re-runs its own module as a worker
(``python -m scripts.bench.NAME --worker ...``, from the repository root) under callgrind with one
thread (:func:`timing.single_thread_env`: ``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``,
``PYTHONHASHSEED=0``); the worker calls ``os.getppid()`` wherever one phase ends and the next
begins, which with ``--dump-before=getppid`` makes callgrind write one numbered profile per
phase, and it writes what it wants to report (the phases' names, step counts) as JSON to the file
named by ``--phases-file``. Machine load does not change an instruction count, so ratios of these
counts do not move between runs the way wall-clock ratios do on a shared machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .timing import single_thread_env

#: The repository root: the worker runs ``python -m <module>`` from here.
ROOT = Path(__file__).resolve().parents[2]


def totals(folder: Path, stem: str) -> list[int]:
    """Instruction totals of the numbered callgrind dumps ``stem.1, stem.2, ...``, in order."""
    out = []
    for n in range(1, 10_000):
        f = folder / f"{stem}.{n}"
        if not f.exists():
            break
        for line in f.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                out.append(int(line.split()[1]))
                break
    return out


def run_phases(module: str, worker_args: list[str], prefix: str = "cg_") -> tuple[list[int], Any]:
    """Runs ``python -m module --worker <worker_args> --phases-file F`` under callgrind.

    Returns:
        The instruction count of every dump, in order (the i-th ``os.getppid()`` closes dump
        i), and the JSON the worker wrote to ``F``.

    Raises:
        SystemExit: Without valgrind, or when the worker fails.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        phases_file = folder / "phases.json"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={folder / 'cg.out'}",
            sys.executable,
            "-m",
            module,
            "--worker",
            *worker_args,
            "--phases-file",
            str(phases_file),
        ]
        proc = subprocess.run(
            cmd, env=single_thread_env(), cwd=ROOT, capture_output=True, text=True
        )
        if proc.returncode != 0 or not phases_file.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit("callgrind run failed")
        return totals(folder, "cg.out"), json.loads(phases_file.read_text())

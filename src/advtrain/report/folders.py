"""Where a report is written: never over a report a ledger entry may name.

An evaluation resumed into its own output folder (the documented way to finish an interrupted
run), or two evaluations started at once into one folder, must not replace the files an earlier
ledger entry recorded, or ``advtrain-eval verify`` raises a false alarm and the earlier report is
lost. :func:`reserve_report_dir` gives each report its own folder: the output folder itself for the
first, ``reports/v2``, ``reports/v3``... for the next ones, each reserved atomically (an exclusive
file creation or ``mkdir``), so concurrent runs never share one.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The file whose exclusive creation reserves the output folder itself for a report.
RESERVATION = "report.json"


def reserve_report_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Reserves a folder for one report inside ``output_dir`` and returns it.

    The first report of a folder is written at its top (``report.json`` created exclusively as
    the reservation); every later one in ``reports/v<k>`` (``mkdir`` is atomic).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out / RESERVATION, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return out
    versions = out / "reports"
    versions.mkdir(exist_ok=True)
    k = 2
    while True:
        candidate = versions / f"v{k}"
        try:
            candidate.mkdir()
        except FileExistsError:
            k += 1
            continue
        return candidate


def run_id() -> str:
    """A short random id, the same for the whole process (``${run_id:}`` in run folder names):
    two runs started in the same instant still get different folders."""
    global _RUN_ID
    if _RUN_ID is None:
        _RUN_ID = os.urandom(3).hex()
    return _RUN_ID


_RUN_ID: str | None = None

__all__ = ["RESERVATION", "reserve_report_dir", "run_id"]

"""advtrain's Hydra launcher plugin: ``hydra/launcher=slurm`` (see ``advtrain.cli.slurm_request``).

Hydra finds launchers only in the ``hydra_plugins`` namespace. Without hydra-submitit-launcher
(``pip install "advtrain[slurm]"``) this module defines nothing, so Hydra's plugin scan stays quiet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover - the slurm extra is not installed
    SlurmLauncher = None

if SlurmLauncher is not None:

    class CheckedSlurmLauncher(SlurmLauncher):  # type: ignore[misc, valid-type]
        """hydra-submitit-launcher's ``SlurmLauncher``, checking the job's request against
        ``sinfo`` before submitting (a job no node can run fails at once, naming the
        override)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            from advtrain.cli.slurm_request import check_before_submitting

            check_before_submitting(self.params)
            return super().launch(job_overrides, initial_job_idx)

"""``CertifiedEvaluation``: verified accuracy on a fixed validation subset during training.

Certified training (IBP, Gowal et al. 2018; CROWN-IBP, Zhang et al. ICLR 2020) is judged by the
fraction of examples whose bounds prove robustness, not by an attack. This callback logs that
fraction (``val/verified_acc``) so ``ModelCheckpoint(monitor="val/verified_acc", mode="max")``
keeps the most verifiably robust checkpoint.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor

from advtrain.callbacks.batch import Key
from advtrain.callbacks.subset_evaluation import SubsetEvaluation, training_threat
from advtrain.certify.certificates import BOUND_METHODS, BoundCertificate


class CertifiedEvaluation(SubsetEvaluation):
    """Logs bound-verified accuracy on the first ``n_examples`` validation examples.

    Args:
        method: ``"ibp"``, ``"crown_ibp"`` or ``"crown"``.
        eps: Radius; ``None`` takes the threat model an
            :class:`~advtrain.callbacks.AdversarialTraining` callback ends training at.
        norm: ``"linf"`` or ``"l2"``; ``None`` follows the training threat model (else linf).
        bounds: Input box; ``None`` follows the training threat model (else ``(0, 1)``).
        every_n_epochs: Evaluate every k epochs (and at the first and last epoch).
        n_examples: Validation examples to verify (in total across ranks).
        monitor: Name of the logged metric.
        input_key: Where the inputs are in a batch.
        target_key: Where the labels are.
    """

    def __init__(
        self,
        method: str = "ibp",
        eps: float | None = None,
        norm: str | None = None,
        bounds: tuple[float, float] | None = None,
        every_n_epochs: int = 1,
        n_examples: int = 512,
        monitor: str = "val/verified_acc",
        input_key: Key = 0,
        target_key: Key = 1,
    ) -> None:
        super().__init__(every_n_epochs, n_examples, monitor, input_key, target_key)
        if method not in BOUND_METHODS:
            raise MisconfigurationException(
                f"method must be one of {list(BOUND_METHODS)}, got {method!r}"
            )
        self.method = method
        self.eps = eps
        self.norm = norm
        self.bounds = bounds
        self.certificate: BoundCertificate | None = None

    def _build(self, trainer: pl.Trainer) -> BoundCertificate:
        if self.certificate is None:
            threat = training_threat(trainer)
            eps = self.eps if self.eps is not None else (threat.eps if threat else None)
            if eps is None:
                raise MisconfigurationException(
                    "CertifiedEvaluation needs eps= when the Trainer has no adversarial-training "
                    "callback to take the threat model from"
                )
            norm = self.norm or (threat.norm if threat else "linf")
            bounds = self.bounds or (threat.bounds if threat else (0.0, 1.0))
            self.certificate = BoundCertificate(
                method=self.method, eps=float(eps), norm=norm, bounds=tuple(bounds)
            )
        return self.certificate

    def start(self, trainer: pl.Trainer) -> None:
        self._build(trainer)

    def passes(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: Tensor, y: Tensor
    ) -> Tensor:
        """Every margin lower bound positive at ``eps`` (the model bounded in eval mode)."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            return self._build(trainer).verified(pl_module, x, y).to(x.device)
        finally:
            pl_module.train(was_training)

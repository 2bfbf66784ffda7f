"""``CertifiedEvaluation``: verified accuracy on a fixed validation subset during training.

Certified training (IBP, Gowal et al. 2018; CROWN-IBP, Zhang et al. ICLR 2020) is judged by the
fraction of examples whose bounds prove robustness, not by an attack. This callback logs that
fraction (``val/verified_acc``) so ``ModelCheckpoint(monitor="val/verified_acc", mode="max")``
keeps the most verifiably robust checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from advtrain.attacks.base import check_positive_int
from advtrain.callbacks.batch import Key, split_batch
from advtrain.certify.certificates import BOUND_METHODS, BoundCertificate


class CertifiedEvaluation(pl.Callback):
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
        super().__init__()
        if method not in BOUND_METHODS:
            raise MisconfigurationException(
                f"method must be one of {list(BOUND_METHODS)}, got {method!r}"
            )
        self.method = method
        self.eps = eps
        self.norm = norm
        self.bounds = bounds
        self.every_n_epochs = check_positive_int(every_n_epochs, "every_n_epochs")
        self.n_examples = check_positive_int(n_examples, "n_examples")
        self.monitor = monitor
        self.input_key = input_key
        self.target_key = target_key
        self.certificate: BoundCertificate | None = None
        self.last_value: float | None = None
        self._active = False
        self._counts = torch.zeros(2)

    def _build(self, trainer: pl.Trainer) -> BoundCertificate:
        if self.certificate is None:
            from advtrain.callbacks.robust_evaluation import _final_threat

            threat = _final_threat(trainer)
            eps = self.eps if self.eps is not None else (threat.eps if threat else None)
            if eps is None:
                raise MisconfigurationException(
                    "CertifiedEvaluation needs eps= when the Trainer has no AdversarialTraining "
                    "callback to take the threat model from"
                )
            norm = self.norm or (threat.norm if threat else "linf")
            bounds = self.bounds or (threat.bounds if threat else (0.0, 1.0))
            self.certificate = BoundCertificate(
                method=self.method, eps=float(eps), norm=norm, bounds=tuple(bounds)
            )
        return self.certificate

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        self._active = not trainer.sanity_checking and (
            (epoch + 1) % self.every_n_epochs == 0 or last or self.last_value is None
        )
        self._counts = torch.zeros(2, device=pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != 0:
            return
        budget = self.n_examples // max(trainer.world_size, 1) - int(self._counts[1].item())
        if budget <= 0:
            return
        x, y = split_batch(batch, self.input_key, self.target_key)
        x, y = x[:budget], y[:budget]
        was_training = pl_module.training
        pl_module.eval()
        try:
            ok = self._build(trainer).verified(pl_module, x, y)
        finally:
            pl_module.train(was_training)
        self._counts = self._counts + torch.stack(
            [ok.sum().to(self._counts), torch.tensor(float(y.numel()), device=self._counts.device)]
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._active:
            counts = trainer.strategy.reduce(self._counts.float(), reduce_op="sum")
            if float(counts[1]) > 0:
                self.last_value = float(counts[0]) / float(counts[1])
        if self.last_value is not None:
            pl_module.log(self.monitor, self.last_value, prog_bar=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        return {"last_value": self.last_value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_value = state_dict.get("last_value")

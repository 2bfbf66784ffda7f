"""``CertifiedEvaluation``: verified accuracy on a fixed validation subset during training.

Certified training (IBP, Gowal et al. 2018; CROWN-IBP, Zhang et al. ICLR 2020) is judged by the
fraction of examples whose bounds prove robustness, not by an attack. This callback logs that
fraction (``val/verified_acc``) so ``ModelCheckpoint(monitor="val/verified_acc", mode="max")``
keeps the most verifiably robust checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from advtrain.callbacks.batch import Key
from advtrain.callbacks.inputs import NormalizationArg
from advtrain.callbacks.subset_evaluation import SubsetEvaluation, training_threat
from advtrain.evaluation.plan import BOUND_METHODS
from advtrain.evaluation.units import bounds_unit
from advtrain.lit.adapter import MisconfigurationException
from advtrain.modes import model_state_guard
from advtrain.normalization import AUTO
from advtrain.threat import ThreatModel

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

#: Examples bounded per pass.
BOUND_CHUNK = 256


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
        normalization: ``"auto"`` (found in the validation data pipeline, else the training
            callback's), ``None`` (inputs are pixels) or ``(mean, std)``; eps in pixel units
            (the normalisation is bounded exactly, as an affine layer).
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
        normalization: NormalizationArg = AUTO,
    ) -> None:
        super().__init__(
            every_n_epochs,
            n_examples,
            monitor,
            input_key,
            target_key,
            normalization=normalization,
        )
        if method not in BOUND_METHODS:
            raise MisconfigurationException(
                f"method must be one of {list(BOUND_METHODS)}, got {method!r}"
            )
        self.method = method
        self.eps = eps
        self.norm = norm
        self.bounds = bounds
        self.threat: ThreatModel | None = None

    def _build(self, trainer: Trainer) -> ThreatModel:
        """The threat model certified at: the arguments, else the training callback's."""
        if self.threat is None:
            threat = training_threat(trainer)
            eps = self.eps if self.eps is not None else (threat.eps if threat else None)
            if eps is None:
                raise MisconfigurationException(
                    "CertifiedEvaluation needs eps= when the Trainer has no adversarial-training "
                    "callback to take the threat model from"
                )
            norm = self.norm or (threat.norm if threat else "linf")
            bounds = self.bounds or (threat.bounds if threat else (0.0, 1.0))
            self.threat = ThreatModel(norm=norm, eps=float(eps), bounds=tuple(bounds))
        return self.threat

    def start(self, trainer: Trainer) -> None:
        self._build(trainer)

    def passes(self, trainer: Trainer, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Every margin lower bound positive at ``eps`` (the model bounded in eval mode)."""
        threat = self._build(trainer)
        with model_state_guard(model, "eval"):  # the evaluation pipeline's unit of bound work
            unit = bounds_unit(model, self.method, threat.eps, x, y, threat, BOUND_CHUNK)
        return unit["verified"].to(x.device)

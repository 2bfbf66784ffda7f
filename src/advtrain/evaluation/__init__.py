"""One evaluation pipeline for every model and every caller (pure PyTorch: no Lightning, no Hydra).

* :mod:`~advtrain.evaluation.plan`: what to run (:class:`EvaluationPlan`: threat model, attacks,
  eps grid, certificates, sanity checks);
* :mod:`~advtrain.evaluation.units` and :mod:`~advtrain.evaluation.state`: resumable units of
  work and the store that keeps them;
* :mod:`~advtrain.evaluation.pipeline`: :func:`run_evaluation`, the clean pass, the attacks
  along the eps grid, bound propagation and randomized smoothing;
* :mod:`~advtrain.evaluation.sanity`, :mod:`~advtrain.evaluation.sanity_results` and
  :mod:`~advtrain.evaluation.flags`: the warning signs of untrustworthy numbers;
* :mod:`~advtrain.evaluation.report`: the report's result sections, one schema for every report;
* :mod:`~advtrain.evaluation.attacks`: :func:`evaluate_attacks`, clean / per-attack / worst-case
  accuracy over a data loader (the building block of an attack unit).
"""

from advtrain.evaluation.attacks import EvaluationResult, evaluate_attacks
from advtrain.evaluation.pipeline import Outcome, run_evaluation
from advtrain.evaluation.plan import EvaluationPlan, SanityPlan, SmoothingPlan
from advtrain.evaluation.report import report_sections
from advtrain.evaluation.units import MemoryStore, UnitRunner

__all__ = [
    "EvaluationPlan",
    "EvaluationResult",
    "MemoryStore",
    "Outcome",
    "SanityPlan",
    "SmoothingPlan",
    "UnitRunner",
    "evaluate_attacks",
    "report_sections",
    "run_evaluation",
]

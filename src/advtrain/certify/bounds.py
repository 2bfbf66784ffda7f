"""Deterministic certificates by bound propagation: IBP, CROWN and CROWN-IBP.

This module gathers the public functions of :mod:`advtrain.certify.ibp` and
:mod:`advtrain.certify.crown`:

* :func:`interval_bounds` — interval bound propagation (Gowal et al., 2018);
* :func:`crown_bounds` — CROWN (Zhang et al., NeurIPS 2018) and, with ``intermediate="ibp"``,
  CROWN-IBP (Zhang et al., ICLR 2020);
* :func:`margin_spec` — the spec matrix of the margins ``z_y - z_j``;
* :func:`verified` — which examples the margin lower bounds verify.

Both bound functions take ``(model, x, eps, norm="linf", bounds=(0, 1), labels=None)`` and return
``(lower, upper)`` on the logits, or on the margins ``z_y - z_j`` when ``labels`` are given.
"""

from advtrain.certify.crown import crown_bounds
from advtrain.certify.ibp import interval_bounds, verified
from advtrain.certify.lowering import SUPPORTED_LAYERS
from advtrain.certify.spec import margin_spec

__all__ = ["SUPPORTED_LAYERS", "crown_bounds", "interval_bounds", "margin_spec", "verified"]

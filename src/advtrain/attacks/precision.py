"""Input gradients that survive float16: per-example loss scaling for attacks under autocast.

Under ``torch.autocast(dtype=torch.float16)`` (Lightning's ``precision="16-mixed"``) or with a
``model.half()``, an attack's loss is computed in float32 but its gradient flows back into the
network in float16, whose smallest positive value is about 6e-8. The cross-entropy gradient at
the logits of a confidently classified example is ``softmax - onehot``, often far below that: it
rounds to zero, the input gradient of the example is exactly zero and a sign-gradient attack
never moves it. Measured on a standard-trained digits SmallCNN (the test
``tests/unit/test_attack_precision.py``): 43% of 360 digits get a zero input gradient under
float16 autocast, and PGD-10 at eps 0.2 leaves 44% robust accuracy where float32 leaves 1%: a
silently flattering number.

The remedy is the loss scaling of mixed-precision training (Micikevicius et al., "Mixed
Precision Training", ICLR 2018), done per example: the float32 gradient at the logits of each
example is rescaled to a largest magnitude of 1 before it enters the float16 network, and the
input gradient is divided by the same factor afterwards (in float32). Gradients are linear in the
upstream gradient, so the result is the float32-headed gradient up to float16 rounding inside the
network; an upper bound of 1 leaves float16's range (65504) for growth through the layers.

Per-example factors are exact only when examples do not interact, i.e. when BatchNorm uses its
running statistics (``bn_mode="eval"``, the default). With batch statistics the factor is shared
by the whole batch (the largest gradient in the batch sets it).

bfloat16 and float32 have float32's exponent range and need none of this: for them the logits are
returned unchanged and the unscaling is the identity, so those paths are bit-for-bit unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Floor on the largest logit-gradient magnitude before it is inverted (keeps the factor finite).
_MIN_PEAK = 1e-30


def _identity(grad: Tensor) -> Tensor:
    return grad


def loss_scaled_logits(
    logits: Tensor, per_example: bool = True
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Prepares ``logits`` so the input gradient of a loss computed from them does not underflow.

    Use as::

        logits, unscale = loss_scaled_logits(model(x_adv))
        loss = objective(logits, y)                     # per-example float32 losses
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        grad = unscale(grad)

    Args:
        logits: The model's output, shape ``(batch, ...)``.
        per_example: One scaling factor per example (exact when examples do not interact in the
            forward pass); ``False`` uses one factor for the batch.

    Returns:
        ``(logits_for_loss, unscale)``. For float16 ``logits`` that require grad, the first is a
        float32 copy whose gradient is rescaled on its way back into the network and ``unscale``
        undoes the factor on the input gradient (call it once per backward pass, in order;
        a float16 input gradient keeps the factor, as dividing it out in float16 would underflow
        again: its direction per example is exact, which is all the attacks use); otherwise
        ``logits`` itself and the identity.
    """
    if logits.dtype != torch.float16 or not logits.requires_grad:
        return logits, _identity
    logits32 = logits.float()
    factors: list[Tensor] = []

    def rescale(grad: Tensor) -> Tensor:
        peak = grad.detach().flatten(1).abs().amax(dim=1)
        if not per_example:
            peak = peak.amax().expand_as(peak)
        factor = peak.clamp_min(_MIN_PEAK).reciprocal()
        factors.append(factor)
        return grad * factor.view(-1, *([1] * (grad.dim() - 1)))

    logits32.register_hook(rescale)

    def unscale(grad: Tensor) -> Tensor:
        if not factors:  # the loss did not depend on the logits (nothing was scaled)
            return grad
        factor = factors.pop(0)
        if grad.dtype == torch.float16:
            # Dividing in float16 would underflow again; the attacks use the gradient's direction
            # per example only, which the factor does not change.
            return grad
        return grad / factor.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))

    return logits32, unscale


__all__ = ["loss_scaled_logits"]

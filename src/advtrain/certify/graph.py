"""The bound graph: a model lowered to bound operators (see :mod:`advtrain.certify.lowering`).

Operators read parameters, buffers and training flags from the live modules at every call, so a
graph built once sees every training update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from advtrain.certify.ops import BatchNormOp, BoundOp, RunContext


@dataclass
class Node:
    """One perturbed value of the graph: ``op`` applied to the nodes ``inputs``.

    Attributes:
        op: The operator.
        inputs: Indices of the nodes it reads.
        shape: Shape of its value, without the batch dimension.
    """

    op: BoundOp
    inputs: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class BoundGraph:
    """A model lowered to bound operators, in topological order (node 0 is the input).

    Attributes:
        nodes: The nodes; ``nodes[i].inputs`` only refer to earlier nodes.
        output: Index of the output node.
        dropouts: Dropout layers folded away as the identity, checked at every call.
        last_use: For each node, the index of the last node that reads it.
        consumers: For each node, how many nodes read it.
    """

    nodes: list[Node]
    output: int
    dropouts: list[tuple[str, nn.Module]] = field(default_factory=list)
    last_use: list[int] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Computes :attr:`last_use` and :attr:`consumers` from the nodes."""
        last = list(range(len(self.nodes)))
        count = [0] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                last[j] = max(last[j], i)
                count[j] += 1
        last[self.output] = len(self.nodes)
        self.last_use = last
        self.consumers = count

    def check_modes(self, ctx: RunContext) -> None:
        """Raises if a layer's training-mode behaviour would make bounds meaningless.

        Raises:
            ValueError: For dropout in training mode (unless ``ctx.batch_stats``, where it is
                bounded as the identity) and BatchNorm in training mode without batch statistics.
        """
        if not ctx.batch_stats:
            for name, m in self.dropouts:
                if m.training and float(getattr(m, "p", 0.0)) > 0:
                    raise ValueError(
                        f"{name} (Dropout) is in training mode, so the model is random; call "
                        "model.eval() before computing bounds"
                    )
        for node in self.nodes:
            op = node.op
            if isinstance(op, BatchNormOp) and op.uses_batch_stats() and not ctx.batch_stats:
                op.coeffs(ctx)  # raises the explanatory error

    def forward(self, x: Tensor, ctx: RunContext) -> Tensor:
        """The model's output on ``x`` computed by the operators (records BN batch statistics)."""
        values: list[Tensor | None] = [None] * len(self.nodes)
        values[0] = x
        for i in range(1, len(self.nodes)):
            node = self.nodes[i]
            values[i] = node.op.forward(ctx, *[values[j] for j in node.inputs])  # type: ignore[arg-type]
            for j in node.inputs:
                if self.last_use[j] == i:
                    values[j] = None
        out = values[self.output]
        assert out is not None
        return out


__all__ = ["BoundGraph", "Node"]

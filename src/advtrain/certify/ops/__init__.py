"""Bound operators: what each supported layer does to a point, a box and a linear bound.

Every node of a :class:`~advtrain.certify.graph.BoundGraph` holds one operator. An operator knows
three things about its layer:

* ``forward``: the layer on a concrete batch (used to learn shapes and BatchNorm batch statistics);
* ``interval``: the image of a box ``[l, u]`` (interval bound propagation, Gowal et al. 2018);
* ``backward``: how a linear bound ``A·z + c`` on its output becomes one on its input (CROWN,
  Zhang et al. 2018): exactly for affine layers, through a linear relaxation for ReLU and max-pool.

The operators are grouped by family: :mod:`~advtrain.certify.ops.base` (the protocol, boxes and
coefficient shapes), :mod:`~advtrain.certify.ops.affine` (dense, convolution, reshape, addition),
:mod:`~advtrain.certify.ops.scale` (elementwise affine maps: Normalize, BatchNorm),
:mod:`~advtrain.certify.ops.pooling` (average and max pooling) and
:mod:`~advtrain.certify.ops.activation` (monotone activations and the ReLU relaxation).
"""

from advtrain.certify.ops.activation import RELU_LOWER, MonotoneOp, ReLUOp, relu_relaxation
from advtrain.certify.ops.affine import AddOp, AffineOp, ConvOp, DenseOp, ReshapeOp, conv_padding
from advtrain.certify.ops.base import (
    APair,
    Backward,
    BoundOp,
    Box,
    InputOp,
    Interval,
    RunContext,
    Size2,
    as_pair,
    box_to_interval,
    interval_to_box,
    pos_neg,
    sum_spec,
)
from advtrain.certify.ops.pooling import AvgPoolOp, MaxPoolOp
from advtrain.certify.ops.scale import BatchNormOp, Coeffs, NormalizeOp, ScaleOp

__all__ = [
    "RELU_LOWER",
    "APair",
    "AddOp",
    "AffineOp",
    "AvgPoolOp",
    "Backward",
    "BatchNormOp",
    "BoundOp",
    "Box",
    "Coeffs",
    "ConvOp",
    "DenseOp",
    "InputOp",
    "Interval",
    "MaxPoolOp",
    "MonotoneOp",
    "NormalizeOp",
    "ReLUOp",
    "ReshapeOp",
    "RunContext",
    "ScaleOp",
    "Size2",
    "as_pair",
    "box_to_interval",
    "conv_padding",
    "interval_to_box",
    "pos_neg",
    "relu_relaxation",
    "sum_spec",
]

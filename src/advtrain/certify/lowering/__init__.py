"""Turn a PyTorch model into a graph of bound operators (via ``torch.fx``).

The model is traced symbolically once (``torch.fx``, with advtrain's :class:`Normalize` and every
``torch.nn`` layer kept as a leaf), then *lowered* on a concrete batch: each traced operation whose
value depends on the input becomes a node holding a :mod:`~advtrain.certify.ops` operator, and
everything else (shapes, constants) is evaluated once. ``nn.Sequential`` nesting, residual blocks
written as ordinary ``forward`` methods (``out + shortcut``), ``torch.flatten``/``view`` and the
functional forms of the supported layers are all handled; anything else raises an error that names
the layer.

Lowered graphs are cached per model (weakly) and per input shape, dtype and device, and are
rebuilt when the model's set of submodules changes. Operators read parameters, buffers and
training flags from the live modules at every call, so training updates are always seen.

Modules: :mod:`~advtrain.certify.lowering.lowerer` (tracing, the interpreter, the cache),
:mod:`~advtrain.certify.lowering.layers` (``torch.nn`` layers),
:mod:`~advtrain.certify.lowering.functions` (functions and tensor methods) and
:mod:`~advtrain.certify.lowering.common` (shared values and errors).
"""

from advtrain.certify.lowering.common import SUPPORTED_LAYERS
from advtrain.certify.lowering.lowerer import Lowerer, build_graph, trace

__all__ = ["SUPPORTED_LAYERS", "Lowerer", "build_graph", "trace"]

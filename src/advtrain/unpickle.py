"""The tensors of a checkpoint whose other contents would need code to unpickle, read safely.

A Lightning checkpoint written by someone else's project often stores more than tensors: a
LightningModule that calls ``save_hyperparameters()`` with an ``nn.Module`` argument (as
lightning-hydra-template's modules do) pickles that module, and classes of the project's own
package, into ``hyper_parameters``. ``torch.load(weights_only=True)`` refuses the whole file for
them, and full unpickling would import the project and run whatever the file says.

:func:`load_skipping` reads such a file with a restricted unpickler (the pattern of the Python
documentation's "Restricting Globals"): the globals ``torch.load(weights_only=True)`` allows
(tensor rebuilds, dtypes, plain containers) are used as they are; every other global becomes an
inert placeholder (:class:`Skipped`) that records its name and never imports or calls anything.
The ``state_dict`` tensors come out whole; what was skipped is listed for the report.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from types import ModuleType
from typing import Any, ClassVar

import torch


class Skipped:
    """An object of the checkpoint that was not unpickled (its class named in :attr:`name`)."""

    name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Skipped:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Skipped:
        return self

    def __repr__(self) -> str:
        return f"<skipped {self.name}>"


def _allowed() -> set[str]:
    """``module.name`` of every global ``torch.load(weights_only=True)`` accepts."""
    names: set[str] = set()
    try:  # torch's own list (private, but it is the exact weights_only policy)
        from torch._weights_only_unpickler import _get_allowed_globals

        names |= set(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - another torch layout
        names |= {
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_parameter",
            "torch.Size",
            "_codecs.encode",
        }
    for obj in torch.serialization.get_safe_globals():
        target = obj[0] if isinstance(obj, tuple) else obj
        names.add(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return names


def _stub_module(skipped: list[str]) -> ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler stubs disallowed globals."""
    allowed = _allowed()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "__builtin__":  # protocol-2 pickles name Python 2's module
                module = "builtins"
            full = f"{module}.{name}"
            if full in allowed:
                return super().find_class(module, name)
            if full not in skipped:
                skipped.append(full)
            return type(name, (Skipped,), {"name": full, "__module__": "advtrain.unpickle"})

    def load(file: Any, **kwargs: Any) -> Any:  # every load goes through the restriction
        return Unpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return Unpickler(io.BytesIO(data), **kwargs).load()

    stub = ModuleType("advtrain_restricted_pickle")
    stub.__dict__.update(
        Unpickler=Unpickler, load=load, loads=loads, UnpicklingError=pickle.UnpicklingError
    )
    return stub


def load_skipping(data: bytes) -> tuple[Any, list[str]]:
    """``torch.load`` of ``data`` (a ``torch.save`` zip file) on the CPU with every global
    outside the weights-only policy replaced by a :class:`Skipped` placeholder.

    Returns:
        ``(object, names of the skipped globals)``.

    Raises:
        pickle.UnpicklingError, RuntimeError: For a file torch cannot read at all.
    """
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise pickle.UnpicklingError("not a torch.save zip file")
    skipped: list[str] = []
    obj = torch.load(
        io.BytesIO(data),
        map_location="cpu",
        weights_only=False,
        pickle_module=_stub_module(skipped),
    )
    return obj, skipped


__all__ = ["Skipped", "load_skipping"]

"""How a callback sees a user's batch: pixels (the normalisation undone) and logits.

Every advtrain callback that attacks or bounds a user's module goes through an
:class:`InputSpace`: it resolves the normalisation once per ``fit`` (declared, found in the data
pipeline, or none; see :mod:`advtrain.normalization`), maps the batch's inputs to pixels for the
attack, builds the pixel-space :class:`~advtrain.models.view.ClassifierView` of the module, maps
adversarial pixels back to the inputs the module's own code expects, and turns an input that
leaves the pixel box into an error that says what to declare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from advtrain.lit.adapter import MisconfigurationException
from advtrain.models.view import ClassifierView, ForwardFn, OutputKey
from advtrain.modes import model_state_guard
from advtrain.normalization import (
    AUTO,
    Normalization,
    find_normalization,
    looks_normalised,
    parse_normalization,
)
from advtrain.threat import OutOfBoundsError

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

#: What a callback's ``normalization`` argument takes (see :func:`parse_normalization`).
NormalizationArg = str | tuple[float | list[float], float | list[float]] | dict[str, Any] | None


class InputError(MisconfigurationException, ValueError):  # type: ignore[misc, valid-type]
    """A batch a callback cannot attack as configured (both a Lightning
    ``MisconfigurationException`` and a ``ValueError``)."""


def _loaders(collection: Any) -> list[Any]:
    """The data loaders in what ``trainer.train_dataloader``/``val_dataloaders`` hold."""
    if collection is None:
        return []
    if hasattr(collection, "dataset"):
        return [collection]
    if isinstance(collection, Mapping):
        return [dl for v in collection.values() for dl in _loaders(v)]
    if isinstance(collection, Iterable) and not isinstance(collection, (str, bytes)):
        try:
            return [dl for v in collection for dl in _loaders(v)]
        except TypeError:
            return []
    return []


def data_sources(trainer: Trainer, stage: str) -> tuple[list[tuple[Any, str]], list[Any]]:
    """The datasets of the Trainer's ``stage`` loaders (``"train"`` or ``"val"``) and the objects
    whose transform attributes may hold the normalisation (the data module)."""
    attr = "train_dataloader" if stage == "train" else "val_dataloaders"
    try:
        loaders = _loaders(getattr(trainer, attr, None))
    except Exception:  # a Trainer without loaders yet
        loaders = []
    name = "train" if stage == "train" else "val"
    datasets = [(dl.dataset, f"{name}_dataloader.dataset") for dl in loaders]
    holders = [trainer.datamodule] if getattr(trainer, "datamodule", None) is not None else []
    return datasets, holders


class InputSpace:
    """A callback's view of its inputs; see the module docstring.

    Args:
        owner: The callback's name, for messages.
        normalization: ``"auto"`` (default: find a torchvision ``Normalize`` in the data
            pipeline, else take the inputs as pixels), ``None``/``"none"`` (the inputs are
            pixels), or the normalisation the data applies: ``(mean, std)``, ``{"mean": ...,
            "std": ...}`` or a :class:`~advtrain.normalization.Normalization`.
        output_key: Where the logits are in the module's output (dict key, tuple index).
        forward_fn: ``forward_fn(module, x) -> logits`` instead of ``module(x)``.
    """

    def __init__(
        self,
        owner: str,
        normalization: Any = AUTO,
        output_key: OutputKey | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        try:
            self.requested = parse_normalization(normalization)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"{owner}: {err}") from None
        if forward_fn is not None and not callable(forward_fn):
            raise MisconfigurationException(
                f"{owner}: forward_fn must be callable as forward_fn(module, x) -> logits, got "
                f"{forward_fn!r}"
            )
        if output_key is not None and not isinstance(output_key, (int, str)):
            raise MisconfigurationException(
                f"{owner}: output_key must be a dict key (str) or a tuple index (int), got "
                f"{output_key!r}"
            )
        self.owner = owner
        self.output_key = output_key
        self.forward_fn = forward_fn
        self.normalization: Normalization | None = (
            self.requested if isinstance(self.requested, Normalization) else None
        )
        self._views: dict[int, nn.Module] = {}
        self._checked_channels = False

    # -- resolution -----------------------------------------------------------------------------
    def resolve(
        self, trainer: Trainer, stage: str = "train", fallback: Normalization | None = None
    ) -> Normalization | None:
        """Fixes the normalisation for this ``fit`` (``"auto"``: searched in the ``stage``
        loaders' datasets, the data module's transforms, then ``fallback``) and logs it."""
        self._views.clear()
        self._checked_channels = False
        if self.requested != AUTO:
            self.normalization = self.requested  # type: ignore[assignment]
        else:
            datasets, holders = data_sources(trainer, stage)
            try:
                found = find_normalization(datasets, [(h, "datamodule") for h in holders])
            except ValueError as err:
                raise MisconfigurationException(f"{self.owner}: {err}") from None
            self.normalization = found if found is not None else fallback
        if self.normalization is not None:
            rank_zero_info(
                f"{self.owner}: inputs are normalised (mean {list(self.normalization.mean)}, std "
                f"{list(self.normalization.std)}, {self.normalization.source}); attacks work on "
                "the pixels (x * std + mean), eps in pixel units"
            )
        return self.normalization

    def describe(self) -> dict[str, Any] | None:
        """The normalisation in use, as logged and checkpointed (``None``: inputs are pixels)."""
        return None if self.normalization is None else self.normalization.as_dict()

    # -- mapping --------------------------------------------------------------------------------
    def view(self, module: nn.Module) -> nn.Module:
        """The pixel-space classifier view of ``module`` (``module`` itself where none is
        needed); one per module, made on first use."""
        view = self._views.get(id(module))
        if view is None:
            # Made outside inference mode: ``Trainer.validate`` runs callbacks under it, and a
            # normalisation buffer made there could not take part in an attack's autograd.
            with torch.inference_mode(False):
                view = ClassifierView.of(
                    module, self.normalization, self.output_key, self.forward_fn
                )
            self._views = {id(module): view}
        return view

    def to_pixels(self, x: Tensor) -> Tensor:
        """The batch's inputs in pixel units (``x`` itself when they already are)."""
        norm = self.normalization
        if norm is None:
            return x
        if not self._checked_channels:
            try:
                norm.check(x)
            except ValueError as err:
                raise InputError(f"{self.owner}: {err}") from None
            self._checked_channels = True
        return norm.to_pixels(x.detach())

    def to_inputs(self, x_pixels: Tensor) -> Tensor:
        """Pixels back in the units the module's own code expects."""
        norm = self.normalization
        return x_pixels if norm is None else norm.normalize(x_pixels)

    def check_classifier(self, module: nn.Module, x_pixels: Tensor, y: Tensor) -> None:
        """Raises unless the module (through its view) returns class logits for the batch.

        Runs the view on two examples in eval mode without gradients (the module's state is
        restored), and checks the output is a floating ``(batch, classes)`` tensor with at least
        two classes and a column for every label.

        Raises:
            InputError: Naming what came back and how to point the callback at the logits.
        """
        view = self.view(module)
        k = min(2, x_pixels.shape[0])
        needs = (
            f"{self.owner} needs the module's forward to return logits of shape (batch, classes)"
        )
        how = (
            "Point the callback at the logits with output_key= (their key or index in a dict or "
            "tuple output) or forward_fn= (forward_fn(module, x) -> logits); a module that is not "
            "a classifier (an autoencoder, a generative model) cannot be attacked this way"
        )
        try:
            with torch.no_grad(), model_state_guard(view, "eval"):
                out = view(x_pixels[:k])
        except Exception as err:
            raise InputError(
                f"{needs}; called on the batch's inputs (shape {tuple(x_pixels[:k].shape)}) it "
                f"raised {type(err).__name__}: {err}. {how}"
            ) from None
        if isinstance(out, Mapping):
            raise InputError(
                f"{needs}; it returned a dict with keys {sorted(map(str, out))}: pass "
                f"output_key=<the key of the logits>. {how}"
            )
        if isinstance(out, (tuple, list)):
            raise InputError(
                f"{needs}; it returned a {type(out).__name__} of {len(out)} items: pass "
                f"output_key=<the index of the logits>. {how}"
            )
        if (
            not isinstance(out, Tensor)
            or not out.is_floating_point()
            or out.dim() != 2
            or out.shape[0] != k
            or out.shape[1] < 2
        ):
            got = (
                f"a tensor of shape {tuple(out.shape)} ({out.dtype})"
                if isinstance(out, Tensor)
                else type(out).__name__
            )
            raise InputError(f"{needs}; it returned {got} for {k} inputs. {how}")
        if y.is_floating_point() or y.dim() != 1:
            raise InputError(
                f"{self.owner}: the batch's targets must be integer class indices of shape "
                f"(batch,), got {y.dtype} of shape {tuple(y.shape)}; set target_key to where "
                "the class labels are"
            )
        top = int(y.max()) if y.numel() else 0
        if top >= out.shape[1] or (y.numel() and int(y.min()) < 0):
            raise InputError(
                f"{needs}; it returned {out.shape[1]} logits but the batch's labels reach {top}, "
                f"so they cannot be class logits. {how}"
            )

    # -- errors ---------------------------------------------------------------------------------
    def explain(self, err: OutOfBoundsError, x: Tensor) -> InputError:
        """The error to raise for inputs that left the pixel box (``err``, from an attack or a
        certificate), about the batch ``x`` as the data loader gave it."""
        low, high = err.bounds
        lo, hi = float(x.detach().min()), float(x.detach().max())
        norm = self.normalization
        if norm is not None:
            px = norm.to_pixels(x.detach())
            return InputError(
                f"{self.owner}: the inputs un-normalised with mean {list(norm.mean)} and std "
                f"{list(norm.std)} ({norm.source}) lie in [{float(px.min()):.4g}, "
                f"{float(px.max()):.4g}], outside the pixel box bounds=({low}, {high}): this "
                "normalisation does not match the data. Pass the mean and std your transform "
                "uses as normalization=(mean, std), or normalization=None if the inputs are "
                "pixels already"
            )
        hint = looks_normalised(x)
        if hint is not None:
            return InputError(
                f"{self.owner}: the batch's inputs lie in [{lo:.4g}, {hi:.4g}], outside the "
                f"pixel box bounds=({low}, {high}), and look normalised ({hint}), but no "
                "torchvision Normalize was found in the data module's or the dataset's "
                "transforms. Declare it: normalization=(mean, std) with the values your "
                "transform uses, so eps, alpha and bounds stay in pixel units. Do not widen "
                "bounds to the normalised range: eps would then be measured in normalised units"
            )
        return InputError(
            f"{self.owner}: the batch's inputs lie in [{lo:.4g}, {hi:.4g}], outside "
            f"bounds=({low}, {high}). Scale them into the box (e.g. pixels / 255), declare the "
            "normalisation your data applies with normalization=(mean, std), or set bounds to "
            "the pixel range your data really has"
        )


def warn_if_bounds_look_normalised(owner: str, bounds: tuple[float, float]) -> None:
    """Warns when ``bounds`` reach below 0 (the usual sign of a box widened to normalised data,
    which measures eps in normalised units)."""
    low, high = bounds
    if low < 0:
        rank_zero_warn(
            f"{owner}: bounds=({low}, {high}) reach below 0; if these are the range of "
            "normalised data, eps is measured in normalised units (a smaller radius in pixels "
            "than it reads). Keep bounds the pixel box and pass normalization=(mean, std)"
        )


__all__ = [
    "InputError",
    "InputSpace",
    "NormalizationArg",
    "data_sources",
    "warn_if_bounds_look_normalised",
]

"""Everything advtrain takes from Lightning, whichever of its two packages the user has.

Lightning ships the same code under two names: ``lightning.pytorch`` (the ``lightning``
distribution, what ``import lightning.pytorch as pl`` and ``import lightning as L`` load) and
``pytorch_lightning``. A Trainer recognises callbacks, modules and data modules with
``isinstance`` against *its own* package's classes, and LightningCLI checks ``class_path``
entries the same way. advtrain's callbacks, :class:`~advtrain.lit.AdversarialClassifier` and data
modules therefore derive from the base classes below, which derive from the classes of *every*
installed package: the user's Trainer decides, nothing is configured.

Two details keep such a class honest under both Trainers:

* Lightning asks ``is_overridden(hook, obj)`` (the hook's code object differs from its base
  class's) to decide which optional hooks exist (``val_dataloader``, ``configure_model``...).
  Where the two packages' base methods are not the same code (their docstrings name different
  packages), the dual class looks the method up in the package of the Trainer the object is
  attached to, so the comparison agrees with that Trainer's own base class.
* Both packages must be the same release for one class to serve both; with different releases
  installed, the bases derive from the preferred package only (see :func:`preferred`).

Lightning's private API (used by Free-AT's replays) is reached only through the functions at the
end of this module, so a Lightning release that moves it breaks this one file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

#: The two import names of Lightning's trainer package, in order of preference.
PACKAGES: tuple[str, ...] = ("lightning.pytorch", "pytorch_lightning")
#: The fabric package each trainer package builds on (home of MisconfigurationException).
_FABRIC: dict[str, str] = {
    "lightning.pytorch": "lightning.fabric",
    "pytorch_lightning": "lightning_fabric",
}
#: Environment variable naming the package the command line and the preferred bases use.
PACKAGE_ENV = "ADVTRAIN_LIGHTNING"

INSTALL_HINT = (
    "advtrain's callbacks and command line need Lightning: pip install 'advtrain[lightning]' "
    "(the `lightning` package), or 'advtrain[pytorch-lightning]' for `pytorch_lightning`"
)


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.cache
def installed() -> tuple[str, ...]:
    """The Lightning trainer packages that import here, in order of preference."""
    return tuple(name for name in PACKAGES if _import(name) is not None)


def normalise_package_name(name: str) -> str:
    """``"lightning"``, ``"lightning.pytorch"``, ``"L"`` -> ``"lightning.pytorch"``;
    ``"pytorch_lightning"``, ``"pytorch-lightning"``, ``"pl"`` -> ``"pytorch_lightning"``.

    Raises:
        ValueError: For any other name.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key in ("lightning", "lightning.pytorch", "l"):
        return "lightning.pytorch"
    if key in ("pytorch_lightning", "pl"):
        return "pytorch_lightning"
    raise ValueError(
        f"unknown Lightning package {name!r}: use 'lightning' (lightning.pytorch) or "
        "'pytorch_lightning'"
    )


def preferred(name: str | None = None) -> str:
    """The package to build Trainers with where advtrain builds them (the command line).

    Args:
        name: ``"auto"``/``None`` (the ``ADVTRAIN_LIGHTNING`` environment variable if set, else
            ``lightning.pytorch`` where installed, else ``pytorch_lightning``), or a package name.

    Raises:
        ImportError: If no Lightning package is installed, or the one asked for is not.
    """
    available = installed()
    if not available:
        raise ImportError(INSTALL_HINT)
    if name is None or str(name).lower() == "auto":
        name = os.environ.get(PACKAGE_ENV) or None
        if name is None:
            return available[0]
    package = normalise_package_name(name)
    if package not in available:
        raise ImportError(
            f"Lightning package {package} was asked for (lightning={name!r}) but is not "
            f"installed; installed: {list(available) or 'none'}. {INSTALL_HINT}"
        )
    return package


def package(name: str) -> ModuleType:
    """The imported trainer package ``name`` (``lightning.pytorch`` or ``pytorch_lightning``)."""
    return importlib.import_module(normalise_package_name(name))


@functools.cache
def locate(name: str, path: str) -> Any:
    """``locate("pytorch_lightning", "plugins.environments.SLURMEnvironment")``: an object of a
    package, importing the submodules on its path (looked up once, then cached: Free-AT's replays
    reach Lightning's loop functions through it on every step)."""
    module_path, _, attr = f"{normalise_package_name(name)}.{path}".rpartition(".")
    return getattr(importlib.import_module(module_path), attr)


def _version(name: str) -> str:
    return str(getattr(package(name), "__version__", "?"))


@functools.cache
def dual_packages() -> tuple[str, ...]:
    """The packages advtrain's base classes derive from: every installed one when all are the
    same release, else the preferred one only."""
    available = installed()
    if not available:
        raise ImportError(INSTALL_HINT)
    if len({_version(name) for name in available}) > 1:
        return (preferred(),)
    return available


@functools.cache
def _trainer_classes() -> tuple[tuple[type, str], ...]:
    return tuple((package(name).Trainer, name) for name in installed())


@functools.lru_cache(maxsize=32)
def _package_of_type(trainer_type: type) -> str | None:
    for cls, name in _trainer_classes():
        if issubclass(trainer_type, cls):
            return name
    return None


def package_of(trainer: Any) -> str:
    """The package a Trainer (or a subclass of one) comes from.

    Raises:
        TypeError: If ``trainer`` is no Lightning Trainer.
    """
    name = _package_of_type(type(trainer))
    if name is None:
        raise TypeError(f"expected a Lightning Trainer, got {type(trainer).__name__}")
    return name


class _ByTrainerPackage:
    """A method looked up in the package of the Trainer its object is attached to.

    Used on the dual base classes for the methods whose code differs between the packages, so
    ``is_overridden`` under either Trainer compares a base method with its own base method.
    """

    def __init__(self, name: str, functions: dict[str, Callable[..., Any]]) -> None:
        self.name = name
        self.functions = functions
        self.default = next(iter(functions.values()))

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self.default
        trainer = instance.__dict__.get("_trainer")
        function = self.default
        if trainer is not None:
            name = _package_of_type(type(trainer))
            if name is not None:
                function = self.functions.get(name, self.default)
        return function.__get__(instance, owner)


def _dual(class_name: str, doc: str) -> type:
    """The class deriving from ``class_name`` of every package of :func:`dual_packages`."""
    names = dual_packages()
    bases = tuple(getattr(package(name), class_name) for name in names)
    if len(bases) == 1:
        return bases[0]
    namespace: dict[str, Any] = {"__module__": __name__, "__doc__": doc, "__qualname__": class_name}
    first = bases[0]
    for attr, value in _lightning_functions(first).items():
        functions = {names[0]: value}
        for name, base in zip(names[1:], bases[1:], strict=True):
            other = getattr(base, attr, None)
            if other is not None and getattr(other, "__code__", None) != value.__code__:
                functions[name] = other
        if len(functions) > 1:
            namespace[attr] = _ByTrainerPackage(attr, functions)
    return type(class_name, bases, namespace)


def _lightning_functions(cls: type) -> dict[str, Any]:
    """The plain functions a class defines or inherits from Lightning (not from torch)."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        module = klass.__module__ or ""
        if not module.startswith(("lightning", "pytorch_lightning")):
            continue
        for attr, value in vars(klass).items():
            if callable(value) and hasattr(value, "__code__"):
                found[attr] = value
    return found


def _dual_exception() -> type[Exception]:
    bases = tuple(
        importlib.import_module(_FABRIC[name] + ".utilities.exceptions").MisconfigurationException
        for name in dual_packages()
    )
    unique = tuple(dict.fromkeys(bases))
    if len(unique) == 1:
        return unique[0]  # type: ignore[no-any-return]
    return type(
        "MisconfigurationException",
        unique,
        {"__module__": __name__, "__doc__": "MisconfigurationException of both packages."},
    )


if not installed():  # pragma: no cover - a core-only install
    raise ImportError(INSTALL_HINT)

#: Base of advtrain's callbacks: a Callback of every installed Lightning package.
Callback: type = _dual("Callback", "A Lightning Callback under both Lightning packages.")
#: Base of advtrain's LightningModules.
LightningModule: type = _dual("LightningModule", "A LightningModule under both Lightning packages.")
#: Base of advtrain's data modules.
LightningDataModule: type = _dual(
    "LightningDataModule", "A LightningDataModule under both Lightning packages."
)
#: The error advtrain's Lightning parts raise: caught as either package's
#: ``MisconfigurationException``.
MisconfigurationException: type[Exception] = _dual_exception()


def is_overridden(method_name: str, instance: Any, kind: str) -> bool:
    """Whether ``instance`` overrides the ``kind`` base class's ``method_name`` (Lightning's rule:
    the method's code differs from the base's), for ``kind`` ``"Callback"``,
    ``"LightningModule"`` or ``"LightningDataModule"``: overridden only where it is the base
    method of neither installed package."""
    method = getattr(instance, method_name, None)
    if method is None:
        return False
    method = getattr(method, "__wrapped__", method)
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    base_codes = []
    for name in installed():
        for klass in getattr(package(name), kind).__mro__:
            value = vars(klass).get(method_name)
            if value is not None and hasattr(value, "__code__"):
                base_codes.append(value.__code__)
    return code not in base_codes


# -- Lightning's private API, used by FreeAdversarialTraining --------------------------------------
def closure_result(trainer: Any, output: Any) -> Any:
    """Lightning's ``ClosureResult`` of a training step's output (loss and the loss to backward)."""
    closure = locate(package_of(trainer), "loops.optimization.automatic.ClosureResult")
    return closure.from_training_step_output(output)


def profiler_active(trainer: Any) -> bool:
    """Whether the Trainer profiles (anything but Lightning's pass-through profiler)."""
    pass_through = locate(package_of(trainer), "profilers.PassThroughProfiler")
    return not isinstance(trainer.profiler, pass_through)


def call_callback_hooks(trainer: Any, hook: str, *args: Any) -> None:
    """Dispatches ``hook`` to the Trainer's callbacks as Lightning's loop does."""
    locate(package_of(trainer), "trainer.call._call_callback_hooks")(trainer, hook, *args)


def call_module_hook(trainer: Any, hook: str, *args: Any) -> Any:
    """Calls the module's ``hook`` as Lightning's loop does (profiled, ``_current_fx_name`` set)."""
    return locate(package_of(trainer), "trainer.call._call_lightning_module_hook")(
        trainer, hook, *args
    )


@contextlib.contextmanager
def hook_context(module: Any, hook: str) -> Iterator[None]:
    """Runs a block as if Lightning were inside ``module``'s ``hook`` (so ``self.log`` calls in it
    are recorded as that hook's), restoring the previous hook name after."""
    previous = module._current_fx_name
    module._current_fx_name = hook
    try:
        yield
    finally:
        module._current_fx_name = previous


def weights_only_kwargs(trainer: Any) -> dict[str, Any]:
    """``{"weights_only": True}`` for ``Trainer.fit`` where this Lightning release takes it
    (checkpoints are then read without unpickling code, whatever torch's default is)."""
    import inspect

    return (
        {"weights_only": True}
        if "weights_only" in inspect.signature(trainer.fit).parameters
        else {}
    )


def training_data_source(trainer: Any) -> Any:
    """The fit loop's training data source (its ``dataloader()`` builds the training loader), or
    ``None`` where this Lightning release keeps it elsewhere."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    if source is None or not callable(getattr(source, "dataloader", None)):
        return None
    return source


def combined_loader_class(trainer: Any) -> type:
    """The ``CombinedLoader`` class of the Trainer's package."""
    return locate(package_of(trainer), "utilities.CombinedLoader")  # type: ignore[no-any-return]


def combined_loader_mode(loader: Any) -> str:
    """The mode of a ``CombinedLoader`` (``"max_size_cycle"`` where it does not say)."""
    return str(getattr(loader, "_mode", "max_size_cycle"))


def is_param_in_hook_signature(hook: Callable[..., Any], param: str, min_args: int) -> bool:
    """Lightning's rule for whether a hook takes ``param`` (by name, or as the ``min_args``-th
    positional argument)."""
    signature_utils = importlib.import_module(installed()[0] + ".utilities.signature_utils")
    return bool(signature_utils.is_param_in_hook_signature(hook, param, min_args=min_args))


__all__ = [
    "INSTALL_HINT",
    "PACKAGES",
    "PACKAGE_ENV",
    "Callback",
    "LightningDataModule",
    "LightningModule",
    "MisconfigurationException",
    "call_callback_hooks",
    "call_module_hook",
    "closure_result",
    "combined_loader_class",
    "combined_loader_mode",
    "dual_packages",
    "hook_context",
    "installed",
    "is_overridden",
    "is_param_in_hook_signature",
    "locate",
    "normalise_package_name",
    "package",
    "package_of",
    "preferred",
    "profiler_active",
    "training_data_source",
    "weights_only_kwargs",
]

"""Step hooks without a line of code, for ``profiler run --hooks`` (off by default).

``profiler run --hooks`` puts this folder first on the child's ``PYTHONPATH``, and only there:
nothing is installed into any environment. Python imports the first ``sitecustomize`` module on
``sys.path`` at startup (the :mod:`site` module does), so every Python process of the job's
process tree that inherits the variable runs this file, which:

1. adds a finder to ``sys.meta_path`` that acts once per framework, right after the program's
   own first ``import torch``, ``import keras`` or ``import tf_keras`` has completed:

   - torch: :func:`hooks.pytorch.auto_track` registers the global optimizer-step hooks, which
     start streaming at the first ``optimizer.step()`` (a process that never steps sends
     nothing);
   - keras / tf_keras: :func:`hooks.keras.auto_callback` wraps ``Model.fit`` so each ``fit()``
     gets an ``EnergyCallback`` unless its ``callbacks`` already hold one;

   An explicit hook in the script always wins: ``track()``, ``StepTimer`` or a framework
   callback made by the script turns the automatic torch hook off (its steps so far are kept),
   and a ``fit()`` given an ``EnergyCallback`` gets no second one, so no step is counted twice.
2. runs the next ``sitecustomize`` on ``sys.path`` (a distribution's or the environment's), so
   one that was there keeps working; its errors are its own, as without this file.

The framework's module is executed by its own loader; only its spec is wrapped, for the duration
of that import, to learn when it has finished (``__loader__`` is restored afterwards). Standard
library only until a framework is imported. A failure to install a hook is reported once on
stderr and never stops the program. A Python started with ``-E``, ``-I`` or ``-S`` does not
read this file: such processes are still in the run (energy, CPU), without step timing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_HOOKS_DIR = os.path.dirname(_HERE)  # the ``hooks`` package this file belongs to


def _ensure_hooks() -> None:
    """Make ``hooks`` importable when this interpreter does not have it installed (the child
    may be another environment's Python): load this file's own package by its path, without
    adding its site-packages to ``sys.path``."""
    if "hooks" in sys.modules or importlib.util.find_spec("hooks") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "hooks", os.path.join(_HOOKS_DIR, "__init__.py"), submodule_search_locations=[_HOOKS_DIR]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the profiler's hooks from {_HOOKS_DIR}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hooks"] = module
    spec.loader.exec_module(module)


def _torch_imported(module: ModuleType) -> None:
    _ensure_hooks()
    from hooks.pytorch import auto_track

    auto_track()


def _keras_imported(module: ModuleType) -> None:
    _ensure_hooks()
    from hooks.keras import auto_callback

    auto_callback(module)


_warned = False


def _warn(what: str, error: BaseException) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(
            f"profiler: automatic step hooks for {what} are off ({type(error).__name__}: "
            f"{error}); the run is still recorded, without step timing",
            file=sys.stderr,
        )


class _AfterImport(importlib.abc.Loader):
    """Runs the real loader, then ``callback`` once the module has executed without error."""

    def __init__(self, loader: Any, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.name = name
        self.callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        try:
            self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self.loader
        try:
            self.callback(module)
        except Exception as e:  # noqa: BLE001 - never stop the program for a profiler hook
            _warn(self.name, e)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like
        return getattr(self.loader, name)


class _Watch(importlib.abc.MetaPathFinder):
    """Wraps the spec of each watched top-level module the first time it is imported."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.callbacks = dict(callbacks)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        callback = self.callbacks.pop(fullname, None)
        if callback is None:
            return None
        spec = importlib.util.find_spec(fullname)  # the other finders (popped: no recursion)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _AfterImport(spec.loader, fullname, callback)
        return spec


def _chain() -> None:
    """Run the next ``sitecustomize`` on ``sys.path``, which this one hides; it replaces this
    module in ``sys.modules`` (the import system returns what is there after the import)."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _install() -> None:
    watched = {"torch": _torch_imported, "keras": _keras_imported, "tf_keras": _keras_imported}
    pending = {k: v for k, v in watched.items() if k not in sys.modules}
    if pending and not any(isinstance(f, _Watch) for f in sys.meta_path):
        sys.meta_path.insert(0, _Watch(pending))


try:
    _install()
except Exception as e:  # noqa: BLE001 - never stop the program for a profiler hook
    _warn("torch and Keras", e)
_chain()

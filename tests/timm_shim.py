"""Import timm beside a torch that has no working torchvision (tests only).

timm (every release) imports torchvision at import time: `torchvision.ops.misc.FrozenBatchNorm2d`
in timm.layers and `torchvision.transforms` in timm.data. This project's torch is the +cpu
build; the torchvision wheels the package index serves are CUDA-linked and fail to import beside
it ("operator torchvision::nms does not exist"), and an installed-but-broken torchvision also
breaks transformers' ViT import. So timm is installed with `pip install --no-deps` and, when
torchvision cannot be imported, `import_timm` puts inert stand-ins for the torchvision modules
timm names in sys.modules for the duration of `import timm` only, then removes them again (so
nothing else in the process sees a fake torchvision). The stand-ins are placeholder classes
that raise if instantiated: timm's model code (ViT blocks, layers) never touches them; its data
pipeline and FrozenBatchNorm conversion would fail loudly, not silently.
"""

from __future__ import annotations

import importlib
import sys
import types

_TV_MODULES = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
               "torchvision.transforms.functional", "torchvision.transforms.v2",
               "torchvision.datasets", "torchvision.models", "torchvision.models.feature_extraction",
               "torchvision.utils")


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__name__}.{name}")


def _placeholder(name: str) -> type:
    def _refuse(self, *a, **k):
        raise RuntimeError(f"torchvision stand-in {name!r} used: torchvision is not importable "
                           "here (see tests/timm_shim.py)")
    return _PlaceholderMeta(name, (), {"__init__": _refuse, "__call__": _refuse})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def _purge(prefixes) -> None:
    for k in [k for k in sys.modules if k.split(".")[0] in prefixes]:
        del sys.modules[k]


def import_timm():
    """timm, or pytest.skip when it is not installed."""
    import pytest

    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31; see setup.cfg)")
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        importlib.import_module("torchvision")   # timm needs it importable
        import timm
        return timm
    except (ImportError, RuntimeError):
        pass   # torchvision missing or broken: stand in for it while timm imports
    _purge(("timm", "torchvision"))
    for name in _TV_MODULES:
        mod = _StubModule(name)
        mod.__path__ = []
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = mod
    try:
        import timm
        import timm.models.vision_transformer  # noqa: F401
        import timm.layers  # noqa: F401
    finally:
        _purge(("torchvision",))
    return timm

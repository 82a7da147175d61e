"""Import open_clip safely on a CPU build of torch.

There is no CPU build of torchvision 0.28.0: the wheel we pin is a CUDA build whose C++ ops cannot load
against torch+cpu. torchvision then fails at import with ``operator torchvision::nms does not exist``,
because its fake-tensor registrations assume those ops exist. open_clip only needs torchvision's
transforms, so when (and only when) the import fails that way we declare the two op schemas ourselves
and import again. With a CUDA torch the real ops load and nothing here runs.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

_MISSING_OP = "torchvision::nms does not exist"


def _declare_torchvision_op_schemas() -> None:
    import torch  # heavy: torch, only for a CLIP backend

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the Library object alive: dropping it would unregister the schemas.
    sys.modules[__name__].__dict__["_torchvision_lib"] = lib


def import_open_clip() -> ModuleType:
    """Return the open_clip module, repairing torchvision's import on CPU-only torch if needed."""
    try:
        import torchvision  # noqa: F401 - heavy: torchvision, only for a CLIP backend
    except RuntimeError as exc:
        if _MISSING_OP not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_torchvision_op_schemas()
        importlib.import_module("torchvision")
    return importlib.import_module("open_clip")

"""Importing torchvision beside a CPU-only torch.

The torchvision wheels on PyPI for Linux x86_64 are CUDA builds: their compiled operators (``torchvision/_C.so``)
link against ``libtorch_cuda.so``, which a CPU build of torch does not have, so they cannot load; torchvision's
pure-Python parts (the PIL transforms open_clip preprocesses with) work, but ``import torchvision`` still fails
(``operator torchvision::nms does not exist``) because its meta registrations need the ``nms``/``qnms`` schemas.

:func:`prepare_torchvision` loads the compiled operators when they can be loaded and otherwise defines those two
schemas (without kernels: calling ``torchvision.ops.nms`` then raises "no kernel"), so the transforms import.
Nothing changes when torchvision is absent or its operators load. Call it before the first ``import torchvision``.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

#: operator schemas ``torchvision/_meta_registrations.py`` registers fake kernels for at import
SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

_library: Optional[Any] = None  # kept alive: a torch.library.Library unregisters its definitions when collected


def prepare_torchvision() -> str:
    """``"absent"``, ``"imported"`` (already imported), ``"native"`` (its operators load) or ``"schemas"`` (the
    CPU-torch workaround above)."""
    global _library
    if "torchvision" in sys.modules:
        return "imported"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        return "absent"
    import torch

    if _library is not None:
        return "schemas"
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined already (operators loaded by someone else)
        return "native"
    except (AttributeError, RuntimeError):
        pass
    libs = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(Path(spec.origin).parent.glob("_C*.pyd"))
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
            return "native"
        except (OSError, RuntimeError) as exc:
            logger.info("torchvision operators unavailable (%s: %s); defining their schemas so its Python parts "
                        "import", lib.name, exc)
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in SCHEMAS:
        lib.define(schema)
    _library = lib
    return "schemas"

"""tinygrad_gpu: a small define-by-run autograd framework on CuPy (GPU) and NumPy (CPU)."""

from . import autograd, distributed, nn, optim, utils, viz
from .anomaly import AnomalyError, detect_anomaly, is_anomaly_enabled
from .autograd import grad
from .backend import DeviceError, cuda_available, default_device
from .combine import (
    cat,
    eq,
    ge,
    gt,
    le,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    lt,
    ne,
    stack,
    where,
)
from .device_checks import get_sync_debug_mode, set_sync_debug_mode, synchronize
from .diagnostics import DebugWarning, debug_mode, graph_memory
from .dtypes import bool_ as bool  # noqa: A001  (tg.bool, as torch.bool)
from .dtypes import float32, float64, int32, int64
from .factories import (
    arange,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    zeros,
    zeros_like,
)
from .function import Function, is_grad_enabled, no_grad
from .fusion import fuse
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .gradient_diagnosis import diagnose_gradients
from .interop import from_dlpack
from .jit import CaptureError, CaptureWarning, jit
from .memory import OutOfMemoryError
from .serialization import CheckpointError, load, save
from .tensor import Tensor, manual_seed
from .twins import check_twins

long, int, float, double = int64, int32, float32, float64  # noqa: A001  (PyTorch's aliases)

__version__ = "0.1.0"

__all__ = [
    "CaptureError", "DebugWarning", "DeviceError", "Function", "GradcheckError", "Tensor", "__version__",
    "cat", "check_twins", "cuda_available", "debug_mode", "default_device", "diagnose_gradients",
    "from_dlpack", "fuse", "gradcheck", "graph_memory", "is_grad_enabled", "jit", "manual_seed", "nn",
    "no_grad", "optim", "stack", "viz", "where",
]
__all__ += ["distributed", "utils"]
__all__ += ["AnomalyError", "CheckpointError", "OutOfMemoryError", "detect_anomaly", "is_anomaly_enabled",
            "load", "save"]
__all__ += ["CaptureWarning", "get_sync_debug_mode", "set_sync_debug_mode", "synchronize"]
__all__ += ["autograd", "grad", "gradgradcheck"]
__all__ += ["arange", "bool", "double", "eq", "float", "float32", "float64", "full", "full_like", "ge",
            "gt", "int", "int32", "int64", "le", "linspace", "logical_and", "logical_not", "logical_or",
            "logical_xor", "long", "lt", "ne", "ones", "ones_like", "rand", "randn", "tensor", "zeros",
            "zeros_like"]

"""tinygrad_gpu: a small define-by-run autograd framework on CuPy (GPU) and NumPy (CPU)."""

from . import nn, optim
from .anomaly import AnomalyError, detect_anomaly, is_anomaly_enabled
from .backend import DeviceError, cuda_available, default_device
from .function import Function, is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck
from .memory import OutOfMemoryError
from .serialization import CheckpointError, load, save
from .tensor import Tensor, manual_seed

__version__ = "0.1.0"

__all__ = [
    "DeviceError", "Function", "GradcheckError", "Tensor", "__version__", "cuda_available",
    "default_device", "gradcheck", "is_grad_enabled", "manual_seed", "nn", "no_grad", "optim",
]
__all__ += ["AnomalyError", "CheckpointError", "OutOfMemoryError", "detect_anomaly", "is_anomaly_enabled",
            "load", "save"]

"""IRE (Implicit Regularization Enhancement) for PyTorch, on ire-core's fused native kernels.

* ``ire_torch.IRE``: a ``torch.optim.Optimizer`` wrapping SGD, AdamW (the whole step in fused
  kernels) or any torch optimizer instance (torch's base step, native snapshot, mask and boost).
* ``ire_torch.compat``: the official classes ``SGDIRE``, ``SAMIRE``, ``AdamWIRE_PARAMS`` and
  ``IRE_PARAMS`` with their signatures and numerics.

Every update is in place on the parameters' own memory (CPU tensors, float32 or float64).
"""

from . import _native, compat
from .optim import IRE

__version__ = _native.__version__
__all__ = ["IRE", "compat", "__version__"]

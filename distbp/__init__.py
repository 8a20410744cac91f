"""distbp: data-parallel training of numpy neural networks on a small reverse-mode autodiff."""

from .autodiff import (GradcheckError, ShapeError, Tensor, gradcheck, is_grad_enabled,
                       manual_seed, no_grad, tensor)
from . import functional, nn  # noqa: E402

from ._version import __version__  # noqa: E402

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError",
           "ShapeError", "manual_seed", "functional", "nn", "__version__"]

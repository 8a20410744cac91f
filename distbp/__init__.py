"""distbp: data-parallel training of numpy neural networks on a small reverse-mode autodiff."""

from .autodiff import (GradcheckError, ShapeError, Tensor, gradcheck, is_grad_enabled,
                       manual_seed, no_grad, tensor)
from . import functional, nn, optim  # noqa: E402

from ._version import __version__  # noqa: E402


def load(path, model=None):
    """A trained model from a run directory, a checkpoint or an exported .safetensors file:
    a ``distbp.train.predictor.Predictor`` with ``.model``, ``.predict``, ``.predict_proba``,
    ``.tag``, ``.classes``, ``.vocab`` and ``.config`` (see that module)."""
    from .train.predictor import load as _load  # the training layer is imported only when used

    return _load(path, model)

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError",
           "ShapeError", "manual_seed", "functional", "nn", "optim", "load", "__version__"]

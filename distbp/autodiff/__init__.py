"""Reverse-mode automatic differentiation on numpy arrays."""

from .tensor import Primitive, ShapeError, Tensor, is_grad_enabled, no_grad, tensor, unbroadcast  # first: ops imports it
from . import ops  # noqa: E402
from .gradcheck import GradcheckError, ParameterCheck, check_parameters, gradcheck, numeric_grad
from .random import default_rng, manual_seed

__all__ = ["Tensor", "tensor", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError",
           "ShapeError", "Primitive", "unbroadcast", "numeric_grad", "check_parameters", "ParameterCheck", "manual_seed", "default_rng", "ops"]

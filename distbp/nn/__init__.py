"""Modules, layers, initializers and models on top of the autodiff core."""

from . import init, utils
from .containers import ModuleDict, ModuleList, ParameterList
from .flat import FlatParameters, flatten_parameters
from .layers import (ACTIVATIONS, Dropout, Embedding, Flatten, Hardtanh, LeakyReLU, Linear, ReLU, Sigmoid,
                     Softsign, Tanh, activation)
from .layers import ELU, GELU, Identity, LayerNorm, LogSoftmax, SiLU, Softmax, Softplus
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss,
                   MultiMarginLoss, NLLLoss, SmoothL1Loss)
from .models import MLP, WindowClassifier
from .module import Module, Sequential
from .parameter import Parameter

__all__ = ["Module", "Sequential", "Parameter", "Linear", "ReLU", "Tanh", "Sigmoid", "LeakyReLU",
           "Hardtanh", "Softsign", "Dropout", "Embedding", "Flatten", "MLP", "WindowClassifier", "init",
           "activation", "ACTIVATIONS", "FlatParameters", "flatten_parameters"]
__all__ += ["ModuleList", "ModuleDict", "ParameterList", "utils"]
__all__ += ["Identity", "Softmax", "LogSoftmax", "GELU", "SiLU", "ELU", "Softplus", "LayerNorm",
            "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "BCEWithLogitsLoss",
            "BCELoss", "MultiMarginLoss", "KLDivLoss"]

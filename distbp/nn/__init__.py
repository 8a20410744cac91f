"""Modules, layers, initializers and models on top of the autodiff core."""

from . import init
from .flat import FlatParameters, flatten_parameters
from .layers import (ACTIVATIONS, Dropout, Embedding, Flatten, Hardtanh, LeakyReLU, Linear, ReLU, Sigmoid,
                     Softsign, Tanh, activation)
from .models import MLP, WindowClassifier
from .module import Module, Sequential
from .parameter import Parameter

__all__ = ["Module", "Sequential", "Parameter", "Linear", "ReLU", "Tanh", "Sigmoid", "LeakyReLU",
           "Hardtanh", "Softsign", "Dropout", "Embedding", "Flatten", "MLP", "WindowClassifier", "init",
           "activation", "ACTIVATIONS", "FlatParameters", "flatten_parameters"]

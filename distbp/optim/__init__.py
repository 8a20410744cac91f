"""Optimizers with torch.optim's names and formulas, updating the flat parameter buffer block
by block (cache-sized blocks), with a number of numpy calls per step that depends on the
buffer's size, not on the number of layers; learning-rate schedules in ``lr_scheduler``."""

from . import lr_scheduler
from .adagrad import AdaGrad, Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer, split_decay
from .rmsprop import RMSProp, RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "AdaGrad", "Adagrad", "RMSProp", "RMSprop", "Adam", "AdamW",
           "split_decay", "lr_scheduler"]

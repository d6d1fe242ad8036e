"""PyTorch port of the official TensorFlow U-GAT-IT, numerically equal to the TF original.

State-dict keys are the official TF variable paths with `/` -> `.` and the framework component
dropped (`<scope>/conv2d/kernel` -> `<scope>.weight`, ...).
"""
from .model import UGATIT, build_ugatit
from .networks import Discriminator, Generator
from .optim import TF1Adam

__all__ = ["build_ugatit", "UGATIT", "Generator", "Discriminator", "TF1Adam"]

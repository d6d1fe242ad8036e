"""PyTorch port of the official TensorFlow U-GAT-IT (numerically equal to the TF original)."""
from .networks import Discriminator, Generator

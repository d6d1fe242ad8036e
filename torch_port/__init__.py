"""PyTorch port of the official TensorFlow U-GAT-IT, numerically equal to the TF original.

State-dict keys are the official TF variable paths with `/` -> `.` and the framework component
dropped (`<scope>/conv2d/kernel` -> `<scope>.weight`, ...).
"""
import importlib

__all__ = ["build_ugatit", "UGATIT", "Generator", "Discriminator", "TF1Adam", "optimize"]
_HOME = {"build_ugatit": "model", "UGATIT": "model", "Generator": "networks", "Discriminator": "networks",
         "TF1Adam": "optim", "optimize": "fast"}


def __getattr__(name):
    # lazy (PEP 562): `torch_port.tf_bundle` (numpy only) is importable without loading torch,
    # which keeps the converter's baseline memory ~200 MB lower
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    # the lazy names too (dir(), tab completion), as an eager import would list them
    return sorted(set(globals()) | set(__all__))

"""Morph-UGATIT on the verified PyTorch port: subclasses of `torch_port` classes only.

- `morph.networks`: `MorphGenerator(Generator)`, `LatentMLP`, `make_z`.
- `morph.model`: `MorphUGATIT(UGATIT)` with configs A / B / C.
- `morph.interpolate`: w codes, lerp, strip / GIF writer, smoothness figure.
- `python -m morph {train,interpolate,translate,demo}`.
"""
from .model import MORPH_CONFIGS, MorphUGATIT
from .networks import LatentMLP, MorphGenerator, make_z

__all__ = ["MorphUGATIT", "MORPH_CONFIGS", "MorphGenerator", "LatentMLP", "make_z"]

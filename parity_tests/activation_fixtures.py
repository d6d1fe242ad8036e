"""Per-layer reference activations of `tf_reference`, stored as HDF5 fixtures so the torch-side
parity suites also run where TensorFlow is absent.

    python -m parity_tests.activation_fixtures [OUT_DIR]     # default parity_tests/fixtures/activations/

One file per configuration in CONFIGS, written atomically (temp file, then os.replace):

- attrs `config` (JSON of the model options given to `config_from`), `seed`, `tf_version`;
- `input`: the NHWC float32 image in [-1, 1] (the one `harness.compare_networks` draws for the seed);
- `weights/<key>`: `harness.random_tf_weights(cfg, seed)`, TF names and TF layout (float32);
- `float32/<key>`, `float64/<key>`: every tensor of `harness.tf_forward` (every recorded layer
  plus each network's outputs) in float32 and in float64 (the float64 truth).

A TF name contains `/`, which HDF5 reads as a group separator (and a layer's output name is
the prefix of its sublayers' names), so each dataset's key is the name with `/` → `|` and the
exact TF name is also kept in the dataset's `name` attribute. Reading needs h5py and numpy only.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from ugatit_common.atomic import atomic_output

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "fixtures", "activations")
SEED = 0

# name -> model options (the rest are the official defaults, via ugatit_common.options.config_from).
# Light and full generators, AdaLIN with and without smoothing, discriminators with and without
# spectral norm; 32 px (the least n_dis=4 builds) and ch 2-4 keep the three files near 5 MB in all.
CONFIGS = {
    "light32_ch4_dis4_sn_smooth": dict(light=True, ch=4, n_dis=4, img_size=32, sn=True, smoothing=True),
    "full32_ch2_dis4_sn": dict(light=False, ch=2, n_dis=4, img_size=32, sn=True, smoothing=False),
    "light32_ch2_dis4": dict(light=True, ch=2, n_dis=4, img_size=32, sn=False, smoothing=False),
}
GROUPS = ("weights", "float32", "float64")


def _key(name: str) -> str:
    if "|" in name:
        raise ValueError(f"tensor name {name!r} contains '|', the fixture's stand-in for '/'")
    return name.replace("/", "|")


def generate(overrides: dict, seed: int = SEED) -> dict:
    """{"config", "seed", "input", "weights", "float32", "float64"} computed by tf_reference now."""
    from parity_tests.harness import input_image, random_tf_weights, tf_forward
    from ugatit_common.options import config_from
    cfg = config_from(**overrides)
    weights = random_tf_weights(cfg, seed)
    x = input_image(cfg, seed)
    return {"config": dict(overrides), "seed": seed, "input": x, "weights": weights,
            "float32": tf_forward(weights, cfg, x), "float64": tf_forward(weights, cfg, x, dtype=np.float64)}


def write(path: str, data: dict, tf_version: str = "") -> str:
    """Write one fixture file atomically."""
    import h5py
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["config"] = json.dumps(data["config"], sort_keys=True)
            f.attrs["seed"] = int(data["seed"])
            f.attrs["tf_version"] = tf_version
            f.create_dataset("input", data=np.asarray(data["input"], np.float32))
            for group in GROUPS:
                g = f.create_group(group)
                for name in sorted(data[group]):
                    # uncompressed: gzip saves ~10% on these float tensors and adds per-dataset overhead
                    d = g.create_dataset(_key(name), data=np.asarray(data[group][name]))
                    d.attrs["name"] = name
    return path


def read(path: str) -> dict:
    """The dict `generate` returned, from a fixture file (h5py + numpy only)."""
    import h5py
    with h5py.File(path, "r") as f:
        out = {"config": json.loads(f.attrs["config"]), "seed": int(f.attrs["seed"]),
               "tf_version": str(f.attrs.get("tf_version", "")), "input": f["input"][()]}
        for group in GROUPS:
            out[group] = {str(d.attrs["name"]): d[()] for d in f[group].values()}
    return out


def port_rows(data: dict) -> dict:
    """The port run on a fixture's weights and input, judged by `harness.compare` against its
    stored TF activations: {"rows", "config", "state" (torch names), "x" (NCHW)}."""
    import torch

    from parity_tests.harness import compare, torch_forward
    from ugatit_common.options import config_from
    from ugatit_common.tf_checkpoint.names import tf_to_torch_name, to_torch_layout
    cfg = config_from(**data["config"])
    state = {tf_to_torch_name(n): torch.from_numpy(to_torch_layout(n, v)) for n, v in data["weights"].items()}
    x = torch.from_numpy(data["input"].transpose(0, 3, 1, 2).copy())
    reductions = {}
    torch32 = torch_forward(state, cfg, x, reductions=reductions)
    torch64 = torch_forward(state, cfg, x, dtype=torch.float64)
    return {"rows": compare(data["float32"], torch32, data["float64"], torch64, reductions), "config": cfg,
            "state": state, "x": x}


def fixture_path(name: str, folder: str = DEFAULT_DIR) -> str:
    return os.path.join(folder, f"{name}.h5")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m parity_tests.activation_fixtures [OUT_DIR]", file=sys.stderr)
        return 2
    out_dir = argv[0] if argv else DEFAULT_DIR
    from tf_reference.compat import tf
    for name, overrides in CONFIGS.items():
        path = write(fixture_path(name, out_dir), generate(overrides), tf.__version__)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

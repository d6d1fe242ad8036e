"""The library as a PyTorch user calls it: a checkpoint or an output given as a pathlib.Path is
the same as its str (torch_port.export.load_checkpoint / export, torch_port.checkpoint.load_any).
They raised TypeError / AttributeError from deep inside (a regex or .lower() on a Path)."""
from __future__ import annotations

import os
import pathlib

import onnx
import torch

from torch_port import checkpoint as ckpt
from torch_port import export as tx
from torch_port.networks import Generator

from .conftest import GOLDEN

FINAL = pathlib.Path(GOLDEN) / "final"


def _same_loaded(a: dict, b: dict) -> None:
    assert a["config"] == b["config"] and a["step"] == b["step"] and a["kind"] == b["kind"]
    assert sorted(a["state"]) == sorted(b["state"])
    for k, v in a["state"].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][k])), k


def test_checkpoints_given_as_paths_load_as_their_strings(tmp_path):
    import weights_convert
    safetensors = tmp_path / "golden.safetensors"
    weights_convert.convert_tf_to_file(str(FINAL), str(safetensors), generators_only=True,
                                       overrides={"img_size": 64}, progress=False, quiet=True)
    cases = [FINAL, FINAL / "UGATIT.model-3", FINAL / "UGATIT.model-3.index",
             FINAL / "UGATIT.model-3.data-00000-of-00001", safetensors]
    for path in cases:
        want = tx.load_checkpoint(str(path), {"img_size": 64})
        got = tx.load_checkpoint(path, {"img_size": 64})
        _same_loaded(got, want)
        assert isinstance(got["source"], str), path  # it goes into messages and the ONNX metadata
        _same_loaded(ckpt.load_any(path, {"img_size": 64}), want)


def test_export_writes_to_an_output_given_as_a_path(tmp_path):
    torch.manual_seed(0)
    cfg = dict(light=True, ch=2, n_res=4, img_size=8, smoothing=True, img_ch=3)
    core = Generator(ch=2, n_res=4, img_size=8, light=True).eval()
    out = tmp_path / "g.onnx"
    result = tx.export(core, out, cfg, direction="a2b", source="random", source_kind="random", step=0,
                       batches=(1,))
    assert result["path"] == str(out) and result["report"]["ok"]
    assert [o.name for o in onnx.load(str(out)).graph.output] == list(tx.OUTPUTS)
    assert sorted(os.listdir(tmp_path)) == ["g.onnx"]  # no temp file left beside it


def test_the_package_lists_its_lazy_names():
    """`dir(torch_port)` (tab completion) lists build_ugatit, optimize, ... though they are
    imported on first use (PEP 562), and each resolves."""
    import torch_port
    listed = dir(torch_port)
    for name in torch_port.__all__:
        assert name in listed, name
        assert getattr(torch_port, name) is not None

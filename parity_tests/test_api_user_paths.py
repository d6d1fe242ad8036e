"""The library as a PyTorch user calls it: a checkpoint or an output given as a pathlib.Path is
the same as its str (torch_port.export.load_checkpoint / export, torch_port.checkpoint.load_any,
torch_port.translate.test's input and checkpoint).
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


def test_the_test_phase_takes_an_input_and_a_checkpoint_given_as_paths(tmp_path, monkeypatch):
    """torch_port.translate.test(input_path=Path(one file)) stopped on `"Processing ..." + f`
    (TypeError: str + PosixPath); a folder, a file and the checkpoint as Paths now translate as
    their strings do, one image at a time and batched."""
    import cv2
    import numpy as np
    from torch_port import translate
    from ugatit_common import options as opt
    from .conftest import FIXTURES
    ckpt_dir = pathlib.Path(FIXTURES) / "demo_light64" / "UGATIT_light_demo_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "p.png"), np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    pictures = {}
    for i, (source, batch) in enumerate([(pathlib.Path("photos") / "p.png", None), (pathlib.Path("photos"), 2),
                                         ("photos/p.png", None)]):
        cfg = opt.config_from(light=True, ch=4, n_dis=5, img_size=64, result_dir=f"r{i}")
        page = translate.test(cfg, torch.device("cpu"), input_path=source, checkpoint=ckpt_dir,
                              explicit={"img_size": 64}, batch=batch)
        out = pathlib.Path(page).parent / "a2b" / "p.png"
        pictures[i] = cv2.imread(str(out)).astype(int)
    assert np.array_equal(pictures[0], pictures[2])  # the same path (serial) as the str
    assert np.abs(pictures[1] - pictures[2]).max() <= 1  # batched: within one 8-bit level (README)


def test_checkpoints_given_as_bytes_load_as_their_strings(tmp_path):
    """A path as bytes (os.listdir(b"..."), os.fsencode: names that are not UTF-8) is a path to
    os.fspath too: weights_convert.tf_to_torch / read_tf_config_info / read_tf_training_state and
    load_any raised "TypeError: cannot use a string pattern on a bytes-like object" from a regex."""
    import weights_convert
    for path in (FINAL, FINAL / "UGATIT.model-3.index"):
        raw = os.fsencode(path)
        _same_loaded(ckpt.load_any(raw, {"img_size": 64}), ckpt.load_any(str(path), {"img_size": 64}))
        config, state = weights_convert.tf_to_torch(raw, overrides={"img_size": 64})
        assert config == weights_convert.tf_to_torch(str(path), overrides={"img_size": 64})[0] and state
        assert weights_convert.read_tf_config_info(raw, overrides={"img_size": 64})
        assert weights_convert.read_tf_training_state(raw, overrides={"img_size": 64})

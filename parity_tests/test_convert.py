"""weights_convert: the naming rule, config inference, round trips, the command line, bad input."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import weights_convert as wc
from parity_tests.conftest import FIXTURES, GOLDEN, ROOT
from torch_port import build_ugatit
from torch_port.tf_bundle import BundleReader


def golden_tensors(which="final"):
    with BundleReader(os.path.join(GOLDEN, which)) as r:
        return dict(r.items())


def test_names_map_onto_the_torch_state_dict_and_back():
    cfg, state = wc.tf_to_torch(os.path.join(GOLDEN, "final"), overrides={"img_size": 64})
    assert cfg["light"] and cfg["ch"] == 4 and cfg["n_res"] == 4 and cfg["n_dis"] == 5 and cfg["sn"]
    model = build_ugatit(cfg)
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state)
    sn = {k[:-2] for k in state if k.endswith(".u")}
    tf_names = {n for n in golden_tensors() if not n.endswith(wc.SLOT_SUFFIXES) and "_power" not in n}
    assert {wc.torch_to_tf_name(k, sn) for k in state} == tf_names


def test_full_model_config_from_manifest_shapes():
    shapes = {}
    with open(os.path.join(FIXTURES, "official_variables_full256_test.txt")) as f:
        for line in f:
            name, shape = line.split(" ", 1)
            shapes[name] = tuple(int(s) for s in shape.strip()[1:-1].split(",") if s.strip())
    cfg = wc.infer_config(shapes)
    assert (cfg["light"], cfg["ch"], cfg["img_size"], cfg["n_res"]) == (False, 64, 256, 4)


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])  # .pt: its 0-d powers were written as [1]
def test_round_trips_are_identical(tmp_path, name):
    ref = golden_tensors()
    out = tmp_path / name
    assert wc.main(["tf2torch", os.path.join(GOLDEN, "final"), str(out), "--with_optimizer", "--img_size", "64"]) == 0
    assert wc.main(["torch2tf", str(out), str(tmp_path / "tf" / "UGATIT_light.model")]) == 0
    with BundleReader(str(tmp_path / "tf")) as r:
        back = dict(r.items())
    assert set(back) == set(ref)
    for n in ref:
        assert back[n].shape == ref[n].shape and np.array_equal(back[n], ref[n]), n
    # torch → tf → torch
    state, _ = wc.load_torch_weights(str(out))
    _, again = wc.tf_to_torch(str(tmp_path / "tf"), overrides={"img_size": 64})
    for k, v in again.items():
        assert torch.equal(v, state[k]), k


def test_streamed_safetensors_equal_library_loader(tmp_path):
    from safetensors.torch import load_file
    out = tmp_path / "g.safetensors"
    wc.convert_tf_to_file(os.path.join(GOLDEN, "final"), str(out), generators_only=True, progress=False)
    loaded = load_file(str(out))
    assert all(k.startswith("generator") for k in loaded)
    _, state = wc.tf_to_torch(os.path.join(GOLDEN, "final"), generators_only=True)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.tf
def test_torch2tf_checkpoint_loads_in_tf_reference(tmp_path):
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    from ugatit_common.options import config_from
    cfg, state = wc.tf_to_torch(os.path.join(GOLDEN, "final"), overrides={"img_size": 64})
    wc.torch_to_tf(state, str(tmp_path / "UGATIT_light.model-3"))
    g = tf.Graph()
    with g.as_default():
        UGATITGraph(config_from(cfg, phase="test")).build_test()
        with tf.Session() as sess:
            tf.train.Saver().restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
            v = [x for x in tf.global_variables() if x.op.name == "generator_B/conv/conv2d/kernel"][0]
            np.testing.assert_array_equal(sess.run(v), golden_tensors()["generator_B/conv/conv2d/kernel"])


def test_bad_input_clear_errors_no_partial_output(tmp_path):
    # not a checkpoint
    code = subprocess.run([sys.executable, os.path.join(ROOT, "weights_convert.py"), "tf2torch", str(tmp_path),
                           str(tmp_path / "o.safetensors")], capture_output=True, text=True)
    assert code.returncode == 2 and "error:" in code.stderr and "Traceback" not in code.stderr
    # corrupted data: the error names the tensor; nothing written
    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(GOLDEN, "final"), bad)
    data = bad / "UGATIT.model-3.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    out = tmp_path / "o.safetensors"
    code = subprocess.run([sys.executable, os.path.join(ROOT, "weights_convert.py"), "tf2torch", str(bad), str(out),
                           "--with_optimizer"], capture_output=True, text=True)
    assert code.returncode == 2 and "crc" in code.stderr.lower() and "/" in code.stderr
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    # a non-UGATIT checkpoint
    from torch_port.tf_bundle import BundleWriter
    with BundleWriter(str(tmp_path / "other" / "x.model-1")) as w:
        w.add("dense/kernel", np.zeros((2, 2), np.float32))
        w.finish()
    with pytest.raises(wc.ConversionError, match="not a U-GAT-IT checkpoint"):
        wc.tf_to_torch(str(tmp_path / "other" / "x.model-1"))


def test_tiled_writer_transposes_views_exactly(tmp_path, monkeypatch):
    """Kernels are written from transposed views tile by tile (no whole copy); the bytes equal a
    whole-array transpose, for tiles that split the first axis unevenly too."""
    from safetensors.numpy import load_file
    monkeypatch.setattr(wc, "_TILE_BYTES", 3 * 7 * 4)  # 3 torch rows of a [*, 7] kernel per tile
    rng = np.random.default_rng(0)
    arrays = {"generator_B/MLP/linear_0/dense/kernel": rng.normal(size=(7, 10)).astype(np.float32),
              "generator_B/conv/conv2d/kernel": rng.normal(size=(3, 3, 2, 5)).astype(np.float32),
              "generator_B/conv/conv2d/bias": rng.normal(size=(5,)).astype(np.float32)}
    specs = [(wc.tf_to_torch_name(n), wc.to_torch_layout(n, a).shape, a.dtype) for n, a in arrays.items()]
    out = str(tmp_path / "t.safetensors")
    wc.write_safetensors_streamed(out, specs, lambda: ((wc.tf_to_torch_name(n), wc.torch_layout_view(n, a))
                                                       for n, a in arrays.items()))
    got = load_file(out)
    for n, a in arrays.items():
        want = wc.to_torch_layout(n, a)
        assert want.flags.c_contiguous and np.array_equal(got[wc.tf_to_torch_name(n)], want), n


def test_one_bundle_open_per_conversion(monkeypatch):
    """tf_to_torch / read_tf_training_state / tf2torch read the index once (config and tensors from
    one BundleReader)."""
    from ugatit_common.tf_checkpoint import bundle, read
    opened = []
    real = bundle.BundleReader

    class Counting(real):
        def __init__(self, path):
            opened.append(path)
            super().__init__(path)
    monkeypatch.setattr(read, "BundleReader", Counting)
    monkeypatch.setattr(wc, "BundleReader", Counting)
    wc.tf_to_torch(os.path.join(GOLDEN, "final"), overrides={"img_size": 64}, quiet=True)
    assert len(opened) == 1
    wc.read_tf_training_state(os.path.join(GOLDEN, "final"), {"img_size": 64}, quiet=True)
    assert len(opened) == 2


def test_each_direction_given_the_other_kind_says_which_to_use(tmp_path, capsys):
    """torch2tf given an official TF checkpoint (its folder, `.index` or `.data`) and tf2torch given
    a port checkpoint say which command converts it, in one `error:` line, exit 2, nothing written;
    either given the `--checkpoint_dir` parent names the run folders inside."""
    tf_run = tmp_path / "checkpoint" / "UGATIT_light_g"
    shutil.copytree(os.path.join(GOLDEN, "final"), tf_run)
    port = tmp_path / "port" / "run"
    assert wc.main(["tf2torch", str(tf_run), str(port / "UGATIT_light.model-3.safetensors"), "--img_size", "64"]) == 0
    capsys.readouterr()
    for given in (tf_run, tf_run / "UGATIT.model-3.index", tf_run / "UGATIT.model-3.data-00000-of-00001"):
        assert wc.main(["torch2tf", str(given), str(tmp_path / "out" / "UGATIT_light.model")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "an official TensorFlow checkpoint" in err[0] and "tf2torch" in err[0], err
    assert wc.main(["tf2torch", str(port), str(tmp_path / "out" / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it holds a PyTorch checkpoint (UGATIT_light.model-3.safetensors)" in err[0], err
    assert "torch2tf" in err[0]
    assert wc.main(["torch2tf", str(tmp_path / "checkpoint"), str(tmp_path / "out" / "UGATIT_light.model")]) == 2
    assert f"give one of them: {str(tf_run)!r}" in capsys.readouterr().err
    assert wc.main(["tf2torch", str(tmp_path / "port"), str(tmp_path / "out" / "x.safetensors")]) == 2
    assert f"give one of them: {str(port)!r}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_mismatch_message_does_not_blame_skipped_variables():
    """tf_reference's test phase restores past a train checkpoint's Adam slots (as TF's Saver
    does): a shape mismatch there listed them as '564 unexpected variables, e.g. beta1_power',
    which read as a second problem; they are now said to be skipped. Where they are an error
    (the port's strict load) they stay 'unexpected variables'."""
    from ugatit_common import options as opt
    wanted = {"generator_A/conv/kernel": (7, 7, 3, 8)}
    stored = {"generator_A/conv/kernel": (7, 7, 3, 4), "beta1_power": (), "generator_A/conv/kernel/Adam": (7, 7, 3, 4)}
    lenient = opt.checkpoint_mismatch("ck", wanted, stored, unexpected_is_error=False)
    assert "1 shape mismatches, e.g. generator_A/conv/kernel: checkpoint [7, 7, 3, 4] vs model [7, 7, 3, 8]" in lenient
    assert "unexpected" not in lenient
    assert "2 checkpoint variables the model has not, skipped as TF's Saver skips them (e.g. beta1_power" in lenient
    assert opt.checkpoint_mismatch("ck", {"a": (1,)}, {"a": (1,), "b": (2,)}, unexpected_is_error=False) is None
    strict = opt.checkpoint_mismatch("ck", {"a": (1,)}, {"a": (1,), "b": (2,)})
    assert "1 unexpected variables, e.g. b" in strict
    assert "(e.g. beta1_power, generator_A/conv/kernel/Adam)" in lenient  # each skipped one named (up to 3)
    assert "configured model (check --light, --ch, --n_res, --n_dis, --img_size, --sn): " in strict  # what shapes it
    hinted = opt.checkpoint_mismatch("ck", {"a": (1,)}, {"a": (2,)}, hint="the model its records describe: ch=2")
    assert hinted.startswith("checkpoint ck does not match the configured model (the model its records describe: "
                             "ch=2): 1 shape mismatches"), hinted  # tf2torch's: a file's records, not flags

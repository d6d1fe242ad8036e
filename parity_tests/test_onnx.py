"""ONNX export (torch_port/export.py, morph/export.py): every export below runs its built-in
verification at batch 1 and 2 (ONNX Runtime vs the port in float32 and float64; the budget is
torch_port.export.BUDGET, the parity suite's float32 budget), and the tests add what the
verification does not see: the official TF golden outputs, a real picture through the uint8
graph, the contract (names, shapes, dynamic batch, opset, metadata), a wrong file caught, clean
failures. Tiny models (64 px ch 4 golden, 32 px ch 2 full, 32 px ch 4 Morph); each export takes
~10 s, most of it torch.export's tracing, so each file is made once per module."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from torch_port import build_ugatit
from torch_port import checkpoint as ckpt
from torch_port import export as tx
from ugatit_common import options as opt

from .conftest import GOLDEN, ROOT

GOLDEN_CKPT = os.path.join(GOLDEN, "final")
FULL = dict(light=False, ch=2, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _session(path_or_bytes):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _golden_core(direction):
    loaded = tx.load_checkpoint(GOLDEN_CKPT, {"img_size": 64})
    return loaded["config"], tx.generator_from_state(loaded["config"], loaded["state"], direction)


def _within_float32_budget(got, ref):
    """The parity suite's per-tensor float32 budget: |got - ref| <= 1e-5 * max(1, max|ref|)."""
    return float(np.abs(got.astype(np.float64) - ref).max()) <= tx.FLOAT32_TOL * max(1.0, float(np.abs(ref).max()))


# -- exports, once per module ------------------------------------------------------------------------

_NO_TF = ("import sys\n"
          "sys.modules['tensorflow'] = sys.modules['tf_reference'] = None  # import fails as if not installed\n"
          "import weights_convert\n"
          "sys.exit(weights_convert.main(sys.argv[1:]))\n")


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory):
    """tf2onnx of the official golden checkpoint, both directions, as one command each in a fresh
    process where TensorFlow and tf_reference cannot be imported."""
    out = tmp_path_factory.mktemp("onnx_golden")
    files = {}
    for d in ("a2b", "b2a"):
        files[d] = str(out / f"golden_{d}.onnx")
        r = subprocess.run([sys.executable, "-c", _NO_TF, "tf2onnx", GOLDEN_CKPT, files[d], "--direction", d,
                            "--img_size", "64", "--threads", "2"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "tf_reference: not run" in r.stdout and "batch 2 translated" in r.stdout
    return files


def _random_full_checkpoint(folder, seed=0):
    """A port checkpoint of a full (light=False) 32 px ch 2 model whose every variable matters
    (rho inside (0, 1), nonzero biases / beta, gamma away from 1, as parity_tests.harness does)."""
    cfg = opt.config_from(**FULL)
    torch.manual_seed(seed)
    model = build_ugatit(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            leaf = n.rsplit(".", 1)[-1]
            if leaf == "rho":
                p.copy_(torch.rand(p.shape, generator=g))
            elif leaf in ("bias", "beta", "gamma"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ckpt.save(folder, opt.model_name(cfg), 5, model, {"config": ckpt.plain_config(cfg)})
    return model


@pytest.fixture(scope="module")
def full_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_full")
    model = _random_full_checkpoint(str(root / "ckpt"))
    files = {}
    for d in ("a2b", "b2a"):
        files[d] = str(root / f"full_{d}.onnx")
        assert tx.main([str(root / "ckpt"), files[d], "--direction", d, "--tf", "off"]) == 0
    return model, files


# -- official checkpoint: the TF golden outputs ---------------------------------------------------------

@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_golden_onnx_gives_the_official_tf_outputs(golden_files, direction):
    """ONNX Runtime on the golden test input vs the official TF output recorded in the bundle
    (TF 1.x graph, float32), within the parity budget, at batch 1 and at batch 2 (the input
    beside another image: instance norms are per sample, so its row must not change)."""
    x = np.load(os.path.join(GOLDEN, "test_input.npy")).transpose(0, 3, 1, 2).astype(np.float32)
    want = np.load(os.path.join(GOLDEN, f"test_{direction}.npy")).transpose(0, 3, 1, 2).astype(np.float64)
    s = _session(golden_files[direction])
    y1 = s.run(["translated"], {"image": x})[0]
    other = np.random.default_rng(5).uniform(-1, 1, x.shape).astype(np.float32)
    y2 = s.run(["translated"], {"image": np.concatenate([other, x])})[0]
    assert y1.shape == want.shape and y2.shape == (2,) + want.shape[1:]
    assert _within_float32_budget(y1, want), np.abs(y1 - want).max()
    assert _within_float32_budget(y2[1:], want), np.abs(y2[1:] - want).max()
    assert not _within_float32_budget(y2[:1], want)  # the other image really is another picture


def test_golden_contract_and_metadata(golden_files):
    m = onnx.load(golden_files["a2b"])
    onnx.checker.check_model(m)
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}.get("ai.onnx") == tx.OPSET
    inputs = {i.name: i.type.tensor_type for i in m.graph.input}
    outputs = [o.name for o in m.graph.output]
    assert list(inputs) == ["image"] and outputs == ["translated", "cam_logit", "heatmap"]
    dims = inputs["image"].shape.dim
    assert inputs["image"].elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]  # dynamic batch, NCHW
    for o in m.graph.output:
        assert o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and o.type.tensor_type.shape.dim[0].dim_param
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["ugatit.opset"] == str(tx.OPSET) and meta["ugatit.direction"] == "a2b"
    assert meta["ugatit.step"] == "3" and meta["ugatit.source_kind"] == "tensorflow"
    assert meta["ugatit.source"] == GOLDEN_CKPT and meta["ugatit.io"] == "float" and meta["ugatit.precision"] == "fp32"
    cfg = json.loads(meta["ugatit.config"])
    assert (cfg["light"], cfg["ch"], cfg["img_size"], cfg["n_res"]) == (True, 4, 64, 4)
    report = json.loads(meta["ugatit.verification"])
    assert report["ok"] and sorted(report["batches"]) == ["1", "2"] and report["budget"] == tx.BUDGET
    for rows in report["batches"].values():
        for name in ("translated", "cam_logit", "heatmap"):
            assert rows[name]["port32"]["max_abs"] <= rows[name]["port32"]["tol"]  # measured ~1e-6 < 1e-5
    # no training-time state: the graph has exactly the contract's inputs and outputs, no
    # initializer is also an output, and running it twice gives the same result
    s = _session(golden_files["a2b"])
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    first, second = s.run(None, {"image": x}), s.run(None, {"image": x})
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert [a.shape for a in first] == [(3, 3, 64, 64), (3, 2), (3, 16, 16)]


def test_onnx_initializers_follow_the_naming_rule(golden_files):
    """Every conv / dense kernel of the generator is in the file as `core.<state-dict key>` (so
    `core.<TF path under the naming rule>`) with the same values; the exporter's optimizer may
    fold constant expressions (clip(rho - 0.1), the CAM's w + b) into constants, but a named
    weight is the port's value."""
    cfg, core = _golden_core("b2a")
    state = core.state_dict()
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(golden_files["b2a"]).graph.initializer}
    named = {k[len("core."):]: v for k, v in inits.items() if k.startswith("core.") and k[len("core."):] in state}
    # 3 down convs, 8 + 8 block convs, 1x1, 4 MLP, 2 up convs, G_logit (the CAM kernel is folded
    # with its bias into the channel weights w + b)
    kernels = {k for k in state if k.endswith(".weight")} - {"CAM_logit.weight"}
    assert kernels <= set(named) and len(kernels) == 27
    for k, v in named.items():
        np.testing.assert_array_equal(v, state[k].numpy(), err_msg=k)


# -- a wrong file is caught ----------------------------------------------------------------------------

def _perturbed(path, name, change):
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name == name:
            arr = onnx.numpy_helper.to_array(init).copy()
            change(arr)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, name))
            return m
    raise KeyError(name)


@pytest.mark.parametrize("name,change", [
    ("core.G_logit.bias", lambda a: a.__setitem__(0, a[0] + 1e-4)),                     # 10x the budget at the output
    ("core.resblock_1.res1.conv_0.weight", lambda a: a.__setitem__((0, 0, 1, 1), a[0, 0, 1, 1] * 1.01)),
])
def test_verification_catches_a_perturbed_weight(golden_files, tmp_path, name, change):
    cfg, core = _golden_core("a2b")
    assert tx.verify_file(golden_files["a2b"], core, cfg)["ok"]  # the true file passes ...
    bad = str(tmp_path / "bad.onnx")
    onnx.save(_perturbed(golden_files["a2b"], name, change), bad)
    with pytest.raises(tx.VerificationFailed, match="batch 1 translated vs port32"):  # ... the wrong one fails
        tx.verify_file(bad, core, cfg)


def test_cli_fails_and_writes_nothing_when_verification_fails(golden_files, tmp_path, monkeypatch, capsys):
    """A wrong graph from the exporter (simulated: the exported file with one perturbed bias) makes
    tf2onnx exit 1 with the failing figure, and leaves no file (no temp file either)."""
    bad = _perturbed(golden_files["a2b"], "core.G_logit.bias", lambda a: a.__setitem__(1, a[1] + 1e-3))
    monkeypatch.setattr(tx, "to_onnx", lambda *a, **k: bad)
    out = tmp_path / "sub" / "g.onnx"
    rc = tx.tf2onnx_main([GOLDEN_CKPT, str(out), "--direction", "a2b", "--img_size", "64", "--tf", "off"])
    err = capsys.readouterr().err
    assert rc == tx.EXIT_VERIFY and "verification failed" in err and "translated" in err
    assert not out.exists() and (not out.parent.exists() or os.listdir(out.parent) == [])


# -- full model, from the port's own checkpoint ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("direction", ["a2b", "b2a"])
def test_full_model_port_checkpoint_export(full_files, direction):
    model, files = full_files
    gen = model.generator_B if direction == "a2b" else model.generator_A
    s = _session(files[direction])
    meta = {p.key: p.value for p in onnx.load(files[direction]).metadata_props}
    assert meta["ugatit.step"] == "5" and meta["ugatit.source_kind"] == "torch_port"
    assert json.loads(meta["ugatit.config"])["light"] is False
    assert json.loads(meta["ugatit.verification"])["ok"]
    for b in (1, 2):
        x = np.random.default_rng(b + 10).uniform(-1, 1, (b, 3, 32, 32)).astype(np.float32)
        got = s.run(None, {"image": x})
        with torch.no_grad():
            ref = gen.eval()(torch.from_numpy(x))
            truth = copy.deepcopy(gen).double()(torch.from_numpy(x).double())
        for g, r, t in zip(got, ref, truth):
            assert g.shape == tuple(r.shape)
            assert tx.judge_float32(g, r.numpy(), t.numpy())["ok"]


# -- uint8 pictures and fp16 ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uint8_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("onnx_u8") / "pictures.onnx")
    assert tx.tf2onnx_main([GOLDEN_CKPT, out, "--direction", "a2b", "--img_size", "64", "--io", "uint8",
                            "--tf", "off"]) == 0
    return out


def test_uint8_pictures_in_and_out(uint8_file):
    """A real picture through the uint8 graph equals the port's official test path
    (torch_port.data.test_image -> generator -> ugatit_common.results.to_uint8) within 1 count."""
    import cv2

    from torch_port.data import test_image
    from ugatit_common.results import to_uint8
    path = os.path.join(GOLDEN, "trainA.png")
    picture = cv2.cvtColor(cv2.resize(cv2.imread(path), (64, 64)), cv2.COLOR_BGR2RGB)
    cfg, core = _golden_core("a2b")
    with torch.no_grad():
        want = to_uint8(core(test_image(path, 64))[0].numpy().transpose(0, 2, 3, 1))
    s = _session(uint8_file)
    assert [i.type for i in s.get_inputs()] == ["tensor(uint8)"]
    got = s.run(["translated"], {"image": picture[None]})[0]
    assert got.dtype == np.uint8 and got.shape == (1, 64, 64, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= tx.UINT8_COUNTS and np.mean(diff > 0) <= tx.UINT8_SHARE
    got2 = s.run(["translated"], {"image": np.stack([picture[::-1], picture])})[0]  # batch 2
    np.testing.assert_array_equal(got2[1], got[0])
    assert {p.key: p.value for p in onnx.load(uint8_file).metadata_props}["ugatit.io"] == "uint8"


def test_readme_example_turns_a_photo_into_the_translated_picture(uint8_file, tmp_path, monkeypatch):
    """The README's six-line ONNX Runtime example, run as written (file names substituted; the
    image size it reads from the file: the golden model's 64 px)."""
    import cv2
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## ONNX export"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[: code.index("```")].strip()
    assert len(code.splitlines()) == 6, code
    photo = os.path.join(GOLDEN, "trainA.png")
    monkeypatch.chdir(tmp_path)
    for name, path in (("a2b_pictures.onnx", uint8_file), ("photo.jpg", photo)):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(path))
    exec(code, {})
    out = cv2.cvtColor(cv2.imread(str(tmp_path / "photo_translated.png")), cv2.COLOR_BGR2RGB)
    picture = cv2.cvtColor(cv2.resize(cv2.imread(photo), (64, 64)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out, _session(uint8_file).run(["translated"], {"image": picture[None]})[0][0])


@pytest.mark.slow
def test_fp16_export_error_within_its_stated_budget(tmp_path):
    out = str(tmp_path / "g16.onnx")
    assert tx.tf2onnx_main([GOLDEN_CKPT, out, "--direction", "b2a", "--img_size", "64", "--fp16", "--tf", "off"]) == 0
    m = onnx.load(out)
    big = [i for i in m.graph.initializer if len(i.dims) == 4]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    report = json.loads({p.key: p.value for p in m.metadata_props}["ugatit.verification"])
    assert report["precision"] == "fp16" and report["ok"]
    # against the official TF output: measured 1e-3 relative; budget FP16_TOL = 3e-2
    x = np.load(os.path.join(GOLDEN, "test_input.npy")).transpose(0, 3, 1, 2).astype(np.float32)
    want = np.load(os.path.join(GOLDEN, "test_b2a.npy")).transpose(0, 3, 1, 2)
    got = _session(out).run(["translated"], {"image": x})[0]
    err = float(np.abs(got - want).max())
    assert err <= tx.FP16_TOL and err > tx.FLOAT32_TOL  # float16 really ran (a float32 graph is ~1e-6)


# -- TF live ------------------------------------------------------------------------------------------

@pytest.mark.tf
def test_verification_against_live_tf_reference(golden_files):
    """verify with tf_reference's official generator graph, fed the same weights by the naming rule."""
    cfg, core = _golden_core("b2a")
    tf_run = tx.tf_generator_runner(cfg, core.state_dict(), "generator_A")
    assert tf_run is not None
    try:
        report = tx.verify_file(golden_files["b2a"], core, cfg, tf_run=tf_run)
    finally:
        tf_run.close()
    assert report["tf_reference"] == "compared"
    for rows in report["batches"].values():
        for name in ("translated", "cam_logit", "heatmap"):
            assert rows[name]["tf32"]["ok"] and rows[name]["tf32"]["max_abs"] < 1e-5


# -- Morph-UGATIT ------------------------------------------------------------------------------------

def _morph_checkpoint(folder, config="C"):
    from morph import MorphUGATIT
    cfg = opt.config_from(light=True, ch=4, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True,
                          morph_config=config)
    torch.manual_seed(3)
    model = MorphUGATIT(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("rho"):
                p.copy_(torch.rand(p.shape, generator=g))
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ckpt.save(folder, f"MorphUGATIT_{config}", 7, model,
              {"kind": "morph", "morph_config": config, "config": ckpt.plain_config(model.config)})
    return model


def test_morph_export_morphs(tmp_path, capsys):
    from morph.__main__ import main as morph_main
    from morph.interpolate import lerp, w_codes
    folder = str(tmp_path / "morphC")
    model = _morph_checkpoint(folder).eval()
    out = str(tmp_path / "morph.onnx")
    assert morph_main(["export", folder, out, "--samples", "4", "--z_seed", "2"]) == 0
    assert "batch 2 translated" in capsys.readouterr().out
    codes = np.load(str(tmp_path / "morph_w.npz"))
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["ugatit.verification"])["ok"] and meta["morph.config"] == "C"
    np.testing.assert_array_equal(codes["w_a2b"][0], np.float32(json.loads(meta["morph.w_a2b"])))
    model.z_generator = torch.Generator().manual_seed(2)
    w_ab, w_ba = w_codes(model, 4)  # the codes are exactly morph.interpolate's
    np.testing.assert_array_equal(codes["w_a2b"], w_ab.numpy())
    np.testing.assert_array_equal(codes["w_b2a"], w_ba.numpy())
    s = _session(out)
    assert [i.name for i in s.get_inputs()] == ["image", "w"]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    frames = []
    for t in (0.0, 0.5, 1.0):  # a 3-frame morph, batch 2, vs the port's frames
        w = lerp(w_ba, w_ab, t)
        got = s.run(["translated"], {"image": x, "w": np.repeat(w.numpy(), 2, axis=0)})[0]
        with torch.no_grad():
            ref = model.translate_w(torch.from_numpy(x), w)
            truth = copy.deepcopy(model.generator).double()(torch.from_numpy(x).double(), w=w.double().expand(2, -1))[0]
        assert tx.judge_float32(got, ref.numpy(), truth.numpy())["ok"]
        frames.append(got)
    assert np.abs(frames[0] - frames[2]).mean() > 1e-3  # the two codes give different pictures


def test_morph_export_errors(tmp_path, capsys):
    from morph.__main__ import main as morph_main
    folder = str(tmp_path / "morphA")
    _morph_checkpoint(folder, "A")
    assert morph_main(["export", folder, str(tmp_path / "a.onnx")]) == 2  # config A needs --direction
    assert "--direction" in capsys.readouterr().err
    assert morph_main(["export", str(tmp_path / "missing"), str(tmp_path / "a.onnx")]) == 2
    assert "missing" in capsys.readouterr().err
    # a Morph checkpoint given to the port's export: named, exit 2
    assert tx.main([folder, str(tmp_path / "a.onnx"), "--direction", "a2b"]) == 2
    assert "python -m morph export" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def test_morph_export_samples_take_interpolates_range(tmp_path, capsys):
    """`morph export --samples` averages the same z draws as interpolate's `--samples`, 1 .. 4096:
    outside it, one error line and exit 2 before any work (a huge value was an internal error,
    exit 1, from the allocator; 4097 wrote codes interpolate cannot make)."""
    from morph.__main__ import main as morph_main
    from morph.interpolate import MAX_W_SAMPLES
    folder = str(tmp_path / "morphC")
    _morph_checkpoint(folder)
    for n in (0, MAX_W_SAMPLES + 1, 10 ** 11):
        out = tmp_path / f"m{n}.onnx"
        assert morph_main(["export", folder, str(out), "--samples", str(n), "--no_verify"]) == 2, n
        err = capsys.readouterr().err
        assert f"--samples={n}" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / f"m{n}_w.npz").exists()


def test_export_threads_flag_is_checked(tmp_path, capsys):
    """--threads of the exports takes what training's takes: 0 or less was silently one thread, a
    huge value a bare "Overflow when unpacking long" without the flag; now one error line naming
    --threads, exit 2, nothing written."""
    from morph.__main__ import main as morph_main
    folder = str(tmp_path / "morphC")
    _morph_checkpoint(folder)
    out = tmp_path / "t.onnx"
    for n in (0, -3, 10 ** 11):
        for argv, main in (([GOLDEN_CKPT, str(out), "--direction", "a2b"], tx.tf2onnx_main),
                           ([GOLDEN_CKPT, str(out), "--direction", "a2b"], tx.main),
                           (["export", folder, str(out)], morph_main)):
            capsys.readouterr()
            assert main(argv + ["--threads", str(n), "--no_verify"]) == 2, (argv, n)
            err = capsys.readouterr().err
            assert f"--threads={n}" in err and len(err.strip().splitlines()) == 1, err
            assert not out.exists()


# -- bad input: one line, exit 2, the file named ------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "bad_safetensors", "out_is_folder",
                                  "full_img_size", "port_ckpt_to_tf2onnx", "batches", "img_size_-4", "img_size_4",
                                  "img_size_6", "tf2onnx_img_size_0", "not_an_onnx_name", "tf_on_no_verify"])
def test_bad_input_exit_2_naming_the_file(tmp_path, capsys, case):
    out = str(tmp_path / "o.onnx")
    args = [GOLDEN_CKPT, out, "--direction", "a2b"]
    main, named = tx.main, GOLDEN_CKPT
    if case == "missing":
        args[0] = named = str(tmp_path / "nope")
    elif case == "not_a_checkpoint":
        args[0] = named = os.path.join(GOLDEN, "record.json")
    elif case == "bad_safetensors":
        named = str(tmp_path / "w.safetensors")
        with open(named, "wb") as f:
            f.write(b"\x00garbage")
        args[0] = named
    elif case == "out_is_folder":  # a folder is a folder: its default name (a2b.onnx) here holds another kind
        args[1] = str(tmp_path)
        named = str(tmp_path / "a2b.onnx")
        with open(named, "w") as f:
            f.write("my notes\n")
    elif case == "full_img_size":
        folder = str(tmp_path / "full")
        _random_full_checkpoint(folder)
        args = [folder, out, "--direction", "a2b", "--img_size", "64"]
        named = folder
    elif case == "port_ckpt_to_tf2onnx":
        folder = str(tmp_path / "full")
        _random_full_checkpoint(folder)
        args, main, named = [folder, out, "--direction", "a2b"], tx.tf2onnx_main, folder
    elif case == "batches":
        args += ["--batches", "0,x"]
        named = "--batches"
    elif case.split("_img_size_")[-1] != case or case.startswith("img_size_"):  # sizes the generator cannot run
        size = case.rsplit("_", 1)[-1]
        main = tx.tf2onnx_main if case.startswith("tf2onnx") else tx.main
        args += ["--img_size", size]
        named = f"--img_size={size}"
    elif case == "not_an_onnx_name":  # a later --overwrite knows its own output by the name
        args[1] = named = str(tmp_path / "model.bin")
    elif case == "tf_on_no_verify":  # the TF comparison is part of the verification: never silently dropped
        args += ["--tf", "on", "--no_verify"]
        named = "--tf on"
    assert main(args) == tx.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and named in err[0], err
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "model.bin")


def test_staged_reductions_keep_onnx_runtime_float32_rounding_at_the_ports():
    """Why export_forms exists: ONNX Runtime's CPU ReduceMean loses float32 precision with the
    number of values it reduces, so a LIN's layer-norm moments over C*H*W = 262 k elements (a
    128 px map, ch 16) in one ReduceMean came out 11x less precise than the port (measured RMS vs float64
    1.9e-6 vs 1.8e-7; 4.5e-5 vs 2.2e-7 at 64 x 256 x 256); one axis at a time, 1.4e-7. (If a
    later pinned onnxruntime sums accurately, the first assertion fails and the staging can go.)"""
    import contextlib

    from torch_port import ops
    lin = ops.LIN(16).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lin.rho.copy_(torch.rand(16, generator=g))
    x = torch.randn(1, 16, 128, 128, generator=g) * 0.5 + 2.0  # |mean| > std, as after a conv
    with torch.no_grad():
        ref32, truth = lin(x).numpy(), copy.deepcopy(lin).double()(x.double()).numpy()
    rms = {}
    for staged in (False, True):
        with (tx.export_forms() if staged else contextlib.nullcontext()), tx._quiet():
            model = torch.onnx.export(lin, (x,), dynamo=True, opset_version=tx.OPSET, verbose=False).model_proto
        got = _session(model.SerializeToString()).run(None, {model.graph.input[0].name: x.numpy()})[0]
        rms[staged] = float(np.sqrt(np.mean((got.astype(np.float64) - truth) ** 2)))
    port = float(np.sqrt(np.mean((ref32.astype(np.float64) - truth) ** 2)))
    assert rms[False] > tx.RMS_FACTOR * port, (rms, port)
    assert rms[True] <= tx.RMS_FACTOR * port, (rms, port)


def test_load_checkpoint_reads_converted_safetensors(tmp_path):
    """`python -m torch_port export` also takes weights_convert's tf2torch output: config and step
    from the file's metadata, weights equal to the TF checkpoint's."""
    import weights_convert
    path = str(tmp_path / "golden.safetensors")
    weights_convert.convert_tf_to_file(GOLDEN_CKPT, path, generators_only=True, overrides={"img_size": 64},
                                       progress=False, quiet=True)
    upper = str(tmp_path / "GOLDEN.SAFETENSORS")  # extensions count in any case, as the writers accept them
    os.link(path, upper)
    assert tx.load_checkpoint(upper)["config"] == tx.load_checkpoint(path)["config"]
    loaded = tx.load_checkpoint(path)
    assert (loaded["kind"], loaded["step"], loaded["config"]["img_size"], loaded["config"]["light"]) == \
        ("torch_port", 3, 64, True)
    _, want = _golden_core("a2b")
    got = tx.generator_from_state(loaded["config"], loaded["state"], "a2b")
    for k, v in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_generator_on_a_gpu_exports_the_same_file_from_a_cpu_copy():
    """export() of a generator on CUDA (traced with CPU inputs, verified in ONNX Runtime's CPU
    provider): the same initializers as the CPU module's, and the caller's module stays on its GPU."""
    cfg, core = _golden_core("a2b")
    gpu = copy.deepcopy(core).cuda()
    on_cpu, on_gpu = tx.to_onnx(core, cfg), tx.to_onnx(gpu, cfg)
    want = {i.name: onnx.numpy_helper.to_array(i) for i in on_cpu.graph.initializer}
    got = {i.name: onnx.numpy_helper.to_array(i) for i in on_gpu.graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert next(gpu.parameters()).is_cuda
    report = tx.verify_model(on_gpu.SerializeToString(), gpu, cfg)
    assert report["batches"], report


def test_a_module_to_convert_is_copied_tensor_by_tensor_to_the_cpu(monkeypatch):
    """A generator that is not float32 / eval / on the CPU is exported from a copy whose weights go
    straight to the CPU as float32 (no whole copy on its own device first: on a GPU that doubled a
    1.1 GB generator there): the same initializers as the float32 module's, the caller's untouched."""
    cfg, core = _golden_core("a2b")
    want = {i.name: onnx.numpy_helper.to_array(i) for i in tx.to_onnx(core, cfg).graph.initializer}
    other = copy.deepcopy(core).double().train()
    before = {k: v.clone() for k, v in other.state_dict().items()}

    def no_tensor_deepcopy(self, memo):
        raise AssertionError("a weight was deep-copied on its own device")
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", no_tensor_deepcopy)
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", no_tensor_deepcopy)
    got = {i.name: onnx.numpy_helper.to_array(i) for i in tx.to_onnx(other, cfg).graph.initializer}
    monkeypatch.undo()
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert other.training and all(v.dtype == torch.float64 for v in other.state_dict().values()
                                   if v.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_spectral_norm_modules_are_refused():
    """A forward of a spectral-norm layer assigns `u` (a training-time update): not exportable."""
    model = build_ugatit(opt.config_from(light=True, ch=2, n_res=4, n_dis=4, img_size=32, sn=True))
    with pytest.raises(tx.ExportError, match="spectral norm"):
        tx.to_onnx(model.discriminator_A.local, {"img_size": 32})


def test_torch_port_cli_dispatches_export(tmp_path, capsys):
    from torch_port.__main__ import main as port_main
    assert port_main(["export", str(tmp_path / "nope"), str(tmp_path / "o.onnx"), "--direction", "a2b"]) == 2
    assert "nope" in capsys.readouterr().err


def test_export_full_disk_names_the_output(tmp_path, capsys, monkeypatch):
    """A write that fails (a full disk) while the ONNX file is written: one error line naming the
    output, nothing left of it."""
    import torch_port.export as tx
    from parity_tests.test_translate_checkpoint import _port_checkpoint
    from torch_port.__main__ import main as port_main
    _port_checkpoint(tmp_path / "ck")
    out = tmp_path / "o.onnx"

    def enospc(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tx.os, "fsync", enospc)
    assert port_main(["export", str(tmp_path / "ck"), str(out), "--direction", "a2b", "--no_verify"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and str(out) in lines[0] and "No space left" in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_morph_export_pair_is_written_together_or_not_at_all(tmp_path, capsys, monkeypatch):
    """Config C's model and its direction codes (`_w.npz`) are one output: a write that fails on
    the codes (a full disk) leaves both earlier files as they were (no new model beside old
    codes) and no temp file, in one error line naming the file."""
    from morph.__main__ import main as morph_main
    folder = str(tmp_path / "morphC")
    _morph_checkpoint(folder)
    out, codes = tmp_path / "out" / "m.onnx", tmp_path / "out" / "m_w.npz"
    assert morph_main(["export", folder, str(out), "--no_verify"]) == 0
    before = out.read_bytes(), codes.read_bytes()
    calls = []

    def fsync_fails_second(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(tx.os, "fsync", fsync_fails_second)
    capsys.readouterr()
    assert morph_main(["export", folder, str(out), "--no_verify", "--overwrite", "--z_seed", "5"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and str(codes) in err[0] and "No space left" in err[0], err
    assert (out.read_bytes(), codes.read_bytes()) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["m.onnx", "m_w.npz"]


def test_export_of_a_checkpoint_whose_name_is_not_utf8(tmp_path):
    """A checkpoint folder whose name is not UTF-8 exports (tf2onnx, its own process), as
    tf2torch and the test phase read it: the name is kept in the metadata with \\xNN escapes
    (ONNX strings are UTF-8)."""
    import shutil
    folder = os.path.join(os.fsencode(str(tmp_path)), b"tf\xff")
    shutil.copytree(os.fsencode(GOLDEN_CKPT), folder)
    out = str(tmp_path / "o.onnx")
    r = subprocess.run([sys.executable, "-c", _NO_TF, "tf2onnx", folder, out, "--direction", "a2b",
                        "--img_size", "64", "--no_verify"], cwd=ROOT, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["ugatit.source"].endswith("tf\\xff"), meta["ugatit.source"]


def test_export_refuses_a_folder_a_training_run_took_meanwhile(tmp_path, capsys, monkeypatch):
    """The output folder was free when the export checked it; a training run (another process)
    took it while the model was being built and verified: nothing is written, one error line."""
    from parity_tests.test_translate_checkpoint import _port_checkpoint
    _port_checkpoint(tmp_path / "ck")
    run_folder = tmp_path / "run"
    out = run_folder / "x.onnx"
    holder = []
    original = tx.to_onnx

    def to_onnx_while_a_run_starts(*a, **k):
        model = original(*a, **k)
        p = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ugatit_common import run_lock\n"
                              "run_lock.acquire(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(120)",
                              str(run_folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        holder.append(p)
        assert p.stdout.readline().strip() == "held"
        return model
    monkeypatch.setattr(tx, "to_onnx", to_onnx_while_a_run_starts)
    try:
        assert tx.main([str(tmp_path / "ck"), str(out), "--direction", "a2b", "--no_verify"]) == 2
    finally:
        for p in holder:
            p.kill()
            p.wait()
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and "training run took meanwhile" in err[0] and str(out) in err[0], err
    assert not out.exists()
    assert not [n for n in os.listdir(run_folder) if n.startswith(".tmp-")]


def test_python_export_takes_onnx_names_and_generator_sizes_only(tmp_path):
    """`torch_port.export.export` (the Python API) refuses what the commands refuse: a name not
    ending in .onnx (a photo given by mistake is not replaced by ONNX bytes) and an image size
    the generator cannot run; the file is untouched."""
    _, core = _golden_core("a2b")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n my photo")
    cfg = opt.config_from(light=True, ch=2, n_res=4, n_dis=4, img_size=64)
    with pytest.raises(tx.ExportError, match="ending in .onnx"):
        tx.export(core, str(photo), cfg, direction="a2b", source="test", source_kind="torch_port", step=0,
                  verify=False)
    with pytest.raises(tx.ExportError, match="--img_size=4"):
        tx.export(core, str(tmp_path / "g.onnx"), dict(cfg, img_size=4), direction="a2b", source="test",
                  source_kind="torch_port", step=0, verify=False)
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n my photo" and not (tmp_path / "g.onnx").exists()


def test_tf2onnx_help_offers_only_what_it_takes(capsys):
    """tf2onnx refuses a port checkpoint (folder or .safetensors: `port_ckpt_to_tf2onnx` above), so
    its --help must not offer one (it said "a torch_port checkpoint folder, or a .safetensors
    file"); python -m torch_port export, which takes them, still says so."""
    import re
    helps = {}
    for name, main in (("tf2onnx", tx.tf2onnx_main), ("export", tx.main)):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0
        helps[name] = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"torch_port checkpoint folder|a \.safetensors file", helps["tf2onnx"]), helps["tf2onnx"]
    assert "python -m torch_port export" in helps["tf2onnx"]
    assert "a torch_port checkpoint folder, or a .safetensors file" in helps["export"]


def test_a_size_the_machine_cannot_hold_is_one_out_of_memory_line(tmp_path, capsys):
    """A verification batch no machine holds (--batches 10^11): numpy's MemoryError ended the
    export as an internal error (exit 1) after the trace; now one `error: out of memory (...)`
    line naming the flags to lower, exit 2, nothing written. torch's CPU allocator says the same
    in a RuntimeError, read the same way (ugatit_common.cli_errors.out_of_memory)."""
    from morph.__main__ import main as morph_main
    from ugatit_common import cli_errors
    folder = str(tmp_path / "morphC")
    _morph_checkpoint(folder)
    out = tmp_path / "o.onnx"
    capsys.readouterr()
    assert morph_main(["export", folder, str(out), "--batches", str(10 ** 11), "--tf", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory (") and "--batches" in err[0], err
    assert not out.exists() and not (tmp_path / "o_w.npz").exists()

    def host_allocation(argv):
        torch.empty(10 ** 15, dtype=torch.uint8)
    assert cli_errors.run(host_allocation, [], prog="p") == 2
    assert capsys.readouterr().err.startswith("error: out of memory (")
    assert cli_errors.run(lambda argv: 1 / 0, [], prog="p") == 1  # a plain bug stays an internal error


def test_each_export_commands_help_says_which_checkpoints_it_takes(capsys):
    """tf2onnx refuses the port's checkpoints (need_kind): its --help says it takes an official TF
    checkpoint and names the command for the others; `python -m torch_port export` takes all kinds."""
    for main, says in ((tx.tf2onnx_main, "an official TF checkpoint folder or prefix (the port's checkpoints and "
                                         ".safetensors files: python -m torch_port export)"),
                       (tx.main, "a torch_port checkpoint folder, or a .safetensors file")):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0
        assert says in " ".join(capsys.readouterr().out.split()), main  # (argparse wraps the help)

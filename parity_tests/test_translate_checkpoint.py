"""`python -m torch_port --phase test --checkpoint PATH --input photos/`: translate with any
checkpoint (official TF folder, port folder, .safetensors), the model settings read from it."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from parity_tests.conftest import GOLDEN, ROOT
from ugatit_common import options as opt

OFFICIAL_DIR = "UGATIT_light_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing"  # the golden run's model_dir


def cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "torch_port", "--phase", "test", "--device", "cpu"] + args,
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(2):
        cv2.imwrite(str(root / f"p{i}.png"), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    return root


def _expected(weights_path, photo, direction="a2b", **overrides):
    import weights_convert as wc
    from torch_port import build_ugatit
    from torch_port.data import test_image
    from ugatit_common.results import to_uint8
    cfg, state = wc.tf_to_torch(weights_path, generators_only=True, overrides=overrides, quiet=True)
    model = build_ugatit(opt.config_from(cfg))
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        y = model.eval().translate(test_image(str(photo), cfg["img_size"]), direction)
    return to_uint8(y[0].permute(1, 2, 0).numpy())


def test_official_folder_config_read_from_it(tmp_path, photos):
    ckpt = tmp_path / "downloads" / OFFICIAL_DIR
    shutil.copytree(os.path.join(GOLDEN, "final"), ckpt)
    out = tmp_path / "out"
    proc = cli(["--checkpoint", str(ckpt), "--input", str(photos), "--img_size", "64", "--result_dir", str(out)],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # light, ch, n_dis, sn, smoothing came from the folder name and weights: no flag for them was given
    page_dir = out / OFFICIAL_DIR
    assert (page_dir / "index.html").is_file()
    for i in range(2):
        got = cv2.imread(str(page_dir / "a2b" / f"p{i}.png"))[:, :, ::-1]
        np.testing.assert_array_equal(got, _expected(str(ckpt), photos / f"p{i}.png", img_size=64))
    assert "guessed" not in proc.stderr  # img_size was given, the rest is recorded


@pytest.mark.slow
def test_guess_is_reported_and_contradiction_is_an_error(tmp_path, photos):
    ckpt = tmp_path / OFFICIAL_DIR
    shutil.copytree(os.path.join(GOLDEN, "final"), ckpt)
    proc = cli(["--checkpoint", str(ckpt), "--input", str(photos / "p0.png"), "--result_dir", str(tmp_path / "o")],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "guessed img_size=256" in proc.stderr  # a light model's .meta-less checkpoint does not record it
    bad = cli(["--checkpoint", str(ckpt), "--input", str(photos), "--img_size", "64", "--smoothing", "False"],
              tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "smoothing" in bad.stderr and "True" in bad.stderr and "False" in bad.stderr


def test_port_checkpoint_folder_and_safetensors(tmp_path, photos):
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    cfg = opt.config_from(light=True, img_size=32, ch=2, n_dis=4, dataset="t")
    torch.manual_seed(0)
    model = build_ugatit(cfg)
    folder = tmp_path / "ck"
    folder.mkdir()
    ck.save(str(folder), "UGATIT_light", 7, model, {"config": ck.plain_config(cfg), "run": "r1", "counter": 7,
                                                    "G_optim": {}, "D_optim": {}})
    out = tmp_path / "out"
    proc = cli(["--checkpoint", str(folder), "--input", str(photos / "p1.png"), "--result_dir", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = cv2.imread(str(out / opt.model_dir(cfg) / "a2b" / "p1.png"))
    assert got.shape == (32, 32, 3)  # the stored img_size, not the 256 default
    from torch_port.data import test_image
    from ugatit_common.results import to_uint8
    with torch.no_grad():
        want = to_uint8(model.eval().translate(test_image(str(photos / "p1.png"), 32), "a2b")[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(got[:, :, ::-1], want)
    weights = folder / "UGATIT_light.model-7.safetensors"
    assert weights.is_file()
    proc = cli(["--checkpoint", str(weights), "--input", str(photos / "p1.png"), "--direction", "b2a",
                "--result_dir", str(tmp_path / "out2")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = cli(["--checkpoint", str(folder), "--input", str(photos), "--ch", "4"], tmp_path)
    assert bad.returncode == 2 and "--ch=4" in bad.stderr and "ch=2" in bad.stderr


def test_checkpoint_flag_errors(tmp_path, photos):
    proc = cli(["--checkpoint", str(tmp_path / "nope"), "--input", str(photos)], tmp_path)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "torch_port", "--phase", "train", "--checkpoint", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                          timeout=300)
    assert proc.returncode == 2 and "--checkpoint applies to the test phase" in proc.stderr


def _port_checkpoint(folder):
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    cfg = opt.config_from(light=True, img_size=32, ch=2, n_dis=4, dataset="t")
    torch.manual_seed(0)
    folder.mkdir()
    ck.save(str(folder), "UGATIT_light", 7, build_ugatit(cfg), {"config": ck.plain_config(cfg), "run": "r1",
                                                                "counter": 7, "G_optim": {}, "D_optim": {}})
    return folder / "UGATIT_light.model-7.safetensors", folder / "UGATIT_light.model-7.state.pt"


def test_checkpoint_needs_the_weights_only(tmp_path, capsys):
    """`--checkpoint` (load_any) of a port checkpoint whose .state.pt is damaged or gone: the folder
    and the weights file still load (the config is in the weights' metadata), the same weights as
    the intact checkpoint's, the folder with a note; weights without a recorded config beside a
    damaged state file: one error naming that file."""
    from safetensors.torch import save_file

    from torch_port import checkpoint as ck
    weights, state = _port_checkpoint(tmp_path / "ck")
    intact = ck.load_any(str(tmp_path / "ck"))
    for damage in ("truncate", "remove"):
        if damage == "truncate":
            state.write_bytes(state.read_bytes()[:100])
        else:
            state.unlink()
        for path in (tmp_path / "ck", weights):
            got = ck.load_any(str(path))
            assert got["config"] == intact["config"] and got["step"] == 7, (damage, path)
            assert got["state"].keys() == intact["state"].keys()
            assert all(torch.equal(got["state"][k], v) for k, v in intact["state"].items())
        assert "its newest weights file UGATIT_light.model-7.safetensors is used" in capsys.readouterr().err
    bare = tmp_path / "bare.model-1.safetensors"
    save_file(intact["state"], str(bare))  # no metadata
    (tmp_path / "bare.model-1.state.pt").write_bytes(b"damaged")
    with pytest.raises(opt.OptionError, match=r"bare\.model-1\.state\.pt.*cannot read it"):
        ck.load_any(str(bare))


def test_tf_checkpoint_folder_without_its_state_file(tmp_path):
    """An official TF folder without TF's `checkpoint` state file (one prefix) loads as with it;
    one whose .index is missing is an error saying so (not "no checkpoint there")."""
    from torch_port import checkpoint as ck
    with_file = tmp_path / "with"
    shutil.copytree(os.path.join(GOLDEN, "final"), with_file)
    without = tmp_path / "without"
    shutil.copytree(with_file, without)
    os.remove(without / "checkpoint")
    a, b = ck.load_any(str(with_file)), ck.load_any(str(without))
    assert a["kind"] == b["kind"] == "tensorflow" and a["step"] == b["step"] == 3
    assert a["state"].keys() == b["state"].keys() and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    no_index = tmp_path / "no_index"
    shutil.copytree(with_file, no_index)
    os.remove(no_index / "UGATIT.model-3.index")
    with pytest.raises(opt.OptionError, match=r"UGATIT\.model-3\.index not found"):
        ck.load_any(str(no_index))


def test_settings_tf2torch_guessed_are_not_records(tmp_path):
    """A weights file written by tf2torch from a checkpoint without .meta or model_dir name holds
    guessed smoothing / img_size (official defaults, `ugatit_config_guessed`): a flag fills them
    in as it does from the TF source, in the port's test phase / exports and Morph's --init_from;
    what the file does record (its weights' ch, n_dis, ...) still refuses a contradiction."""
    import weights_convert
    from morph.train import _read_ugatit
    from torch_port import checkpoint as ck
    out = str(tmp_path / "init.safetensors")
    weights_convert.convert_tf_to_file(os.path.join(GOLDEN, "init"), out, progress=False, quiet=True)
    import json
    meta = ck.policy.safetensors_metadata(out)
    assert set(json.loads(meta["ugatit_config_guessed"])) == {"smoothing", "img_size"}, meta
    got = ck.load_any(out, {"smoothing": False, "img_size": 64})
    assert got["config"]["smoothing"] is False and got["config"]["img_size"] == 64
    with pytest.raises(ck.CheckpointMismatch, match="n_dis"):
        ck.load_any(out, {"n_dis": 6})
    cfg = opt.config_from(light=True, img_size=32, ch=4, n_dis=5, smoothing=False, dataset="t")
    weights, _ = _read_ugatit(out, cfg, ("img_size", "smoothing", "ch", "n_dis", "sn"))
    assert weights
    with pytest.raises(ck.CheckpointMismatch, match="ch"):
        _read_ugatit(out, {**cfg, "ch": 8}, ("ch",))


def test_the_checkpoint_dir_parent_names_its_run_folders(tmp_path):
    """`--checkpoint checkpoint/` (the parent) instead of `checkpoint/<model_dir>`: the port's test
    phase and exports, Morph's commands and its `--init_from` name the run folders inside to give instead."""
    from morph.train import CheckpointKindError, load_morph
    from torch_port import checkpoint as ck
    parent = tmp_path / "checkpoint"
    shutil.copytree(os.path.join(GOLDEN, "final"), parent / OFFICIAL_DIR)
    hint = rf"its subfolders hold checkpoints, give one of them: '[^']*checkpoint/{OFFICIAL_DIR}'$"
    with pytest.raises(opt.OptionError, match=r"no checkpoint there \(expected .*\); " + hint):
        ck.load_any(str(parent))
    with pytest.raises(CheckpointKindError, match=r"holds no checkpoint, not a Morph-UGATIT checkpoint .*; " + hint):
        load_morph(str(parent))
    from morph.train import _read_ugatit
    with pytest.raises(CheckpointKindError, match=r"--init_from .*: no UGATIT checkpoint found there .*; " + hint):
        _read_ugatit(str(parent))


def test_a_file_of_a_tf_checkpoint_names_that_checkpoint(tmp_path):
    """`--checkpoint .../UGATIT.model-3.index` (or its .data / .meta, the files a user sees) reads
    that TF checkpoint, as tf2torch does; before, the port refused it as 'not a checkpoint'."""
    from torch_port import checkpoint as ck
    folder = tmp_path / OFFICIAL_DIR
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    (folder / "UGATIT.model-3.meta").write_bytes(b"")  # present, unparsable: read past (the folder name records)
    whole = ck.load_any(str(folder), {"img_size": 64})
    for name in ("UGATIT.model-3.index", "UGATIT.model-3.data-00000-of-00001", "UGATIT.model-3.meta"):
        got = ck.load_any(str(folder / name), {"img_size": 64})
        assert got["kind"] == "tensorflow" and got["step"] == 3 and got["config"] == whole["config"], name
        assert got["state"].keys() == whole["state"].keys()
        assert all(torch.equal(got["state"][k], v) for k, v in whole["state"].items()), name
    with pytest.raises(opt.OptionError, match=r"state\.pt': not a checkpoint \(expected a checkpoint folder, a TF "
                                              r"checkpoint prefix or its \.index / \.data / \.meta file, or a "
                                              r"\.safetensors file\)$"):
        (folder / "UGATIT.model-3.state.pt").write_bytes(b"")  # a file of another kind: the message lists the forms
        ck.load_any(str(folder / "UGATIT.model-3.state.pt"))


def test_the_test_phase_load_reads_the_generators_and_leaves_the_discriminators_as_built():
    """load_weights_into(generators_only=True), the test phase's load (as the official test graph,
    a Saver over its generators): a whole checkpoint's discriminators are never read - not into a
    model whose discriminators have another shape (a checkpoint of n_dis 6 in a folder named for
    5: torch's `size mismatch` for D_logit, an internal error), nor over a model's own."""
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    cfg = opt.config_from(light=True, img_size=64, ch=2, n_dis=5, dataset="t")
    torch.manual_seed(0)
    model = build_ugatit(cfg)
    torch.manual_seed(1)
    other = build_ugatit(dict(cfg, n_dis=6)).state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ck.load_weights_into(model, other, "ck", generators_only=True)
    got = model.state_dict()
    assert all(torch.equal(got[k], other[k]) for k in got if k.startswith("generator"))
    assert all(torch.equal(got[k], before[k]) for k in got if k.startswith("discriminator"))
    assert not all(torch.equal(got[k], before[k]) for k in got if k.startswith("generator"))  # (they were read)


def test_a_tf_checkpoint_file_without_its_index_is_named_as_given(tmp_path):
    """A `.meta` or `.data` file whose checkpoint's `.index` is not there names no checkpoint: the
    error names the file given (not the prefix it would have named)."""
    from torch_port import checkpoint as ck
    for name in ("UGATIT.model-3.meta", "UGATIT.model-3.data-00000-of-00001"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(opt.OptionError) as e:
            ck.load_any(str(tmp_path / name))
        assert str(e.value).startswith(f"{str(tmp_path / name)!r}: not a checkpoint"), e.value

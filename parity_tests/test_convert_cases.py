"""weights_convert.py edge cases a reviewer reproduced: tensors of another dtype, a weights/state
pair from two runs, a stale .meta left by --overwrite, --report / --verify checked before the
work, non-ASCII checkpoint paths, a full disk, and a folder's `checkpoint` file re-pointed; the
.meta torch2tf writes with TensorFlow (tests marked tf). Tiny models (light, 32 or 64 px, ch 2,
n_dis 4), built directly (no training)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

import weights_convert as wc
from parity_tests.test_outputs_guard import snapshot
from ugatit_common import options as opt
from ugatit_common.tf_checkpoint.bundle import BundleReader

CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)


from parity_tests.test_morph import _one_thread  # noqa: E402,F401 - autouse: one CPU thread per test


def _model(seed=0):
    from torch_port import build_ugatit
    torch.manual_seed(seed)
    model = build_ugatit(CFG)
    model.make_optimizers()
    return model


def _save_port(folder, model, step=3, run="r1"):
    """A port checkpoint (weights + .state.pt with both optimizers) as a training run saves it."""
    from torch_port import checkpoint as ck
    ck.save(str(folder), opt.model_name(CFG), step, model,
            {"config": ck.plain_config(CFG), "run": run, "counter": step,
             "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict()})
    return os.path.join(str(folder), f"{opt.model_name(CFG)}.model-{step}.safetensors")


def _convert(argv, capsys):
    capsys.readouterr()
    rc = wc.main([str(a) for a in argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _convert_any_name(argv, monkeypatch):
    """_convert for output naming a file whose name is not UTF-8 (printed as its bytes, which
    capsys cannot decode)."""
    import io
    import sys
    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape") for _ in range(2)]
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", streams[0])
        m.setattr(sys, "stderr", streams[1])
        rc = wc.main([str(a) for a in argv])
    for s in streams:
        s.flush()
    return (rc,) + tuple(s.buffer.getvalue().decode("utf-8", "replace") for s in streams)


def _error_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def _weights_file(path, state, meta=None, kind="safetensors"):
    if kind == "pt":
        torch.save(state, str(path))
    else:
        from safetensors.torch import save_file
        save_file(state, str(path), metadata=meta)
    return path


# -- 1. tensors of another dtype ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype,kind", [(torch.float64, "safetensors"), (torch.float64, "pt"),
                                        (torch.float16, "safetensors")])
def test_torch2tf_casts_other_floats_to_float32(tmp_path, capsys, dtype, kind):
    """A float64 / float16 state dict (a model.double() run) was written as DT_DOUBLE / DT_HALF
    entries that the official graph's float32 variables cannot restore; now cast, with one note."""
    state = {k: v.to(dtype) for k, v in _model().state_dict().items()}
    src = _weights_file(tmp_path / f"w.{'pt' if kind == 'pt' else 'safetensors'}", state,
                        {"config": json.dumps(CFG)}, kind)
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if "float32" in ln]
    name = str(dtype).replace("torch.", "")
    assert len(notes) == 1 and f"{len(state)} tensor(s)" in notes[0] and name in notes[0], err
    with BundleReader(str(tmp_path / "tf")) as r:
        assert {r.tf_dtype(n) for n in r.keys()} == {"DT_FLOAT"}
        _, back = wc.tf_to_torch(str(tmp_path / "tf"), quiet=True)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v.to(torch.float32)), k


def test_torch2tf_refuses_integer_tensors(tmp_path, capsys):
    state = _model().state_dict()
    state["generator_B.conv.weight"] = state["generator_B.conv.weight"].to(torch.int32)
    src = _weights_file(tmp_path / "w.safetensors", state, {"config": json.dumps(CFG)})
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    line = _error_line(err)
    assert rc == 2 and "'generator_B.conv.weight'" in line and "float32 expected" in line and "int32" in line
    assert snapshot(str(tmp_path)) == before


# -- 2. weights and state of two runs -----------------------------------------------------------------

def test_torch2tf_refuses_a_weights_state_pair_of_two_runs(tmp_path, capsys):
    """Run A's weights at step 3 beside run B's .state.pt renamed to match were converted and
    labelled with B's step; python -m torch_port refuses that folder (policy.pairing_problem)."""
    a = _save_port(tmp_path / "A", _model(0), step=3, run="runA")
    b = _save_port(tmp_path / "B", _model(1), step=5, run="runB")
    os.replace(b.replace(".safetensors", ".state.pt"), a.replace(".safetensors", ".state.pt"))
    before = snapshot(str(tmp_path))
    for src in (a, tmp_path / "A"):
        rc, _, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model"], capsys)
        line = _error_line(err)
        assert rc == 2 and "not one checkpoint" in line and "runA" in line and "runB" in line, line
        assert snapshot(str(tmp_path)) == before
    # the weights alone need no pair
    rc, _, err = _convert(["torch2tf", a, tmp_path / "tf" / "UGATIT_light.model", "--weights_only"], capsys)
    assert rc == 0 and os.path.isfile(tmp_path / "tf" / "UGATIT_light.model-3.index"), err


def test_torch2tf_converts_a_runs_own_pair_with_its_optimizer(tmp_path, capsys):
    a = _save_port(tmp_path / "A", _model(0), step=3, run="runA")
    rc, _, err = _convert(["torch2tf", a, tmp_path / "tf" / "UGATIT_light.model"], capsys)
    assert rc == 0, err
    with BundleReader(str(tmp_path / "tf")) as r:
        assert r.prefix.endswith("UGATIT_light.model-3") and "beta1_power_1" in r


# -- 3. --overwrite takes the replaced checkpoint's .meta with it ------------------------------------

def test_torch2tf_overwrite_removes_the_stale_meta(tmp_path, capsys, monkeypatch):
    """The old <prefix>.meta stayed beside the new .index/.data and readers took its config
    (smoothing, img_size, gan_type...) for the new weights'. It goes, once the new files are in.
    Here no new .meta is written (as without TensorFlow); with one, it replaces the old one in the
    same write (test_torch2tf_a_failure_leaves_no_meta_nor_any_partial_output)."""
    from ugatit_common.tf_checkpoint import bundle
    monkeypatch.setattr(wc, "_meta_builder", lambda: (None, "TensorFlow not installed"))
    src = _save_port(tmp_path / "A", _model(0), step=3)
    prefix = tmp_path / "tf" / "UGATIT_light.model-3"
    rc, _, err = _convert(["torch2tf", src, prefix, "--weights_only"], capsys)
    assert rc == 0, err
    meta = tmp_path / "tf" / "UGATIT_light.model-3.meta"
    meta.write_bytes(b"\x0a\x05hello")                      # the old run's graph
    # a failed overwrite leaves the old checkpoint complete, its .meta included
    before = snapshot(str(tmp_path))

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(bundle, "_build_table", full)
        rc, _, err = _convert(["torch2tf", src, prefix, "--overwrite"], capsys)
    assert rc == 2 and snapshot(str(tmp_path)) == before, err
    rc, out, err = _convert(["torch2tf", src, prefix, "--overwrite"], capsys)
    assert rc == 0 and not meta.exists(), err
    notes = [ln for ln in out.splitlines() if "removed" in ln]
    assert len(notes) == 1 and str(meta) in notes[0], out
    with BundleReader(str(prefix)) as r:
        assert "beta1_power" in r


def test_torch2tf_a_meta_alone_at_the_prefix_needs_overwrite(tmp_path, capsys):
    src = _save_port(tmp_path / "A", _model(0), step=3)
    (tmp_path / "tf").mkdir()
    meta = tmp_path / "tf" / "UGATIT_light.model-3.meta"
    meta.write_bytes(b"\x0a\x05hello")
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    line = _error_line(err)
    assert rc == 2 and ".meta" in line and "--overwrite" in line and snapshot(str(tmp_path)) == before


# -- 4. tf2torch --report / --verify: checked before the work ------------------------------------------

def _tf_checkpoint(root, seed=0):
    prefix = os.path.join(str(root), "tf", "UGATIT_light.model-3")
    wc.torch_to_tf(dict(_model(seed).state_dict()), prefix)
    return os.path.dirname(prefix)


TF_FLAGS = ["--img_size", "32", "--smoothing", "True"]  # recorded nowhere in a .meta-less TF checkpoint


def test_tf2torch_report_and_verify_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """A --report path that is a file, or --verify without TensorFlow, failed after the output
    was written (left behind) and the error did not name the flag."""
    import sys
    ckpt = _tf_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    out = tmp_path / "o.safetensors"
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["tf2torch", ckpt, out, "--report", tmp_path / "notes.txt"] + TF_FLAGS, capsys)
    line = _error_line(err)
    assert rc == 2 and "--report" in line and "notes.txt" in line and "not a folder" in line
    assert snapshot(str(tmp_path)) == before
    monkeypatch.setitem(sys.modules, "tf_reference.compat", None)  # TensorFlow not importable
    for flag in (["--verify"], ["--report", tmp_path / "rep"]):
        rc, _, err = _convert(["tf2torch", ckpt, out, *flag] + TF_FLAGS, capsys)
        line = _error_line(err)
        assert rc == 2 and str(flag[0]) in line and "TensorFlow" in line, line
        assert snapshot(str(tmp_path)) == before
    # the report folder named as the output file: said first (it failed after the verification, as
    # "cannot be written (Not a directory)", where TensorFlow was there)
    rc, _, err = _convert(["tf2torch", ckpt, out, "--report", out] + TF_FLAGS, capsys)
    line = _error_line(err)
    assert rc == 2 and "--report" in line and "the output file's path" in line, line
    assert snapshot(str(tmp_path)) == before


def test_tf2torch_report_never_goes_into_the_checkpoint_read_nor_over_a_users_file(tmp_path, capsys):
    """--report is held to the report command's OUT_DIR rules before any work: the checkpoint
    folder being read (the report went in there) and a user's own parity_report.html (it was
    replaced) are refused with one line, nothing written."""
    ckpt = _tf_checkpoint(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "parity_report.html").write_text("my notes\n")
    out = tmp_path / "o.safetensors"
    before = snapshot(str(tmp_path))
    for folder, says in ((ckpt, "checkpoint"), (mine, "parity_report.html")):
        rc, _, err = _convert(["tf2torch", ckpt, out, "--report", folder] + TF_FLAGS, capsys)
        line = _error_line(err)
        assert rc == 2 and "--report" in line and says in line, line
        assert snapshot(str(tmp_path)) == before


def test_tf2torch_a_failed_report_takes_back_only_the_output_it_wrote(tmp_path, capsys, monkeypatch):
    import sys
    import types

    from parity_tests import harness
    ckpt = _tf_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "tf_reference.compat", types.ModuleType("tf_reference.compat"))
    monkeypatch.setattr(harness, "compare_networks", lambda ckpt, cfg: {})

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(harness, "write_report", full)
    out = tmp_path / "o.safetensors"
    rc, _, err = _convert(["tf2torch", ckpt, out, "--report", tmp_path / "rep"] + TF_FLAGS, capsys)
    line = _error_line(err.replace("\r", "\n").splitlines()[-1])
    assert rc == 2 and "--report" in line and not out.exists()
    # an output there before (replaced with --overwrite) is never removed
    monkeypatch.setattr(harness, "write_report", lambda *a, **k: str(tmp_path / "rep" / "parity_report.html"))
    rc, _, err = _convert(["tf2torch", ckpt, out] + TF_FLAGS, capsys)
    assert rc == 0 and out.exists(), err
    monkeypatch.setattr(harness, "write_report", full)
    rc, _, err = _convert(["tf2torch", ckpt, out, "--report", tmp_path / "rep", "--overwrite"] + TF_FLAGS, capsys)
    assert rc == 2 and out.exists()


# -- 5. a `checkpoint` state file that is not Latin-1 ---------------------------------------------------

@pytest.mark.parametrize("written", [b"/home/\xe5\xbc\xa0\xe4\xbc\x9f/run/UGATIT_light.model-3",  # TF 2.21: raw UTF-8
                                     b"/home/m\xfcller/run/UGATIT_light.model-3",                 # Latin-1 bytes
                                     b"/home/\\344\\274\\237/run/UGATIT_light.model-3"])          # octal escapes
def test_checkpoint_state_file_with_any_path_bytes_is_read(tmp_path, capsys, written):
    """'latin-1' codec can't encode ...: a state file naming a path of a non-ASCII user stopped
    tf2torch, naming no file. The paths' bytes are read as TF wrote them (re-rooted here)."""
    ckpt = _tf_checkpoint(tmp_path)
    with open(os.path.join(ckpt, "checkpoint"), "wb") as f:
        f.write(b'model_checkpoint_path: "' + written + b'"\nall_model_checkpoint_paths: "' + written + b'"\n')
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / "o.safetensors"] + TF_FLAGS, capsys)
    assert rc == 0 and (tmp_path / "o.safetensors").exists(), err


def test_checkpoint_state_file_round_trips_a_unicode_prefix(tmp_path, capsys):
    from ugatit_common.tf_checkpoint.bundle import read_checkpoint_state
    src = _save_port(tmp_path / "A", _model(0), step=3)
    prefix = tmp_path / "模型" / "Müller.model-3"
    rc, _, err = _convert(["torch2tf", src, prefix, "--weights_only"], capsys)
    assert rc == 0, err
    assert read_checkpoint_state(str(tmp_path / "模型")) == ("Müller.model-3", ["Müller.model-3"])
    rc, _, err = _convert(["tf2torch", tmp_path / "模型", tmp_path / "o.safetensors"] + TF_FLAGS, capsys)
    assert rc == 0 and (tmp_path / "o.safetensors").exists(), err


def test_an_unparsable_checkpoint_state_file_is_named(tmp_path, capsys):
    ckpt = _tf_checkpoint(tmp_path)
    state = os.path.join(ckpt, "checkpoint")
    with open(state, "wb") as f:
        f.write(b'model_checkpoint_path: "UGATIT_light.model-3\\777"\n')  # more than a byte
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / "o.safetensors"] + TF_FLAGS, capsys)
    line = _error_line(err)
    assert rc == 2 and state in line and not (tmp_path / "o.safetensors").exists()


# -- 6. a prefix whose name is not UTF-8 --------------------------------------------------------------

def test_torch2tf_prefix_name_that_is_not_utf8(tmp_path, monkeypatch):
    """b'bad\\xff.model': .index and .data were renamed into place, then writing the `checkpoint`
    file failed ('surrogates not allowed'). Its bytes are written as they are, and read back."""
    from ugatit_common.tf_checkpoint import bundle
    from ugatit_common.tf_checkpoint.bundle import read_checkpoint_state
    src = _save_port(tmp_path / "A", _model(0), step=3)
    name = os.fsdecode(b"bad\xff.model-3")
    # whatever the state file cannot hold is found before anything is committed
    (tmp_path / "tf").mkdir()
    before = snapshot(str(tmp_path))

    def cannot(_):
        raise UnicodeEncodeError("utf-8", name, 3, 4, "surrogates not allowed")
    with monkeypatch.context() as m:
        m.setattr(bundle, "_escape", cannot)
        rc, _, err = _convert_any_name(["torch2tf", src, tmp_path / "tf" / name, "--weights_only"], monkeypatch)
    line = _error_line(err)
    assert rc == 2 and "checkpoint" in line and snapshot(str(tmp_path)) == before
    rc, _, err = _convert_any_name(["torch2tf", src, tmp_path / "tf" / name, "--weights_only"], monkeypatch)
    assert rc == 0, err
    assert read_checkpoint_state(str(tmp_path / "tf")) == (name, [name])
    assert os.fsencode(name) + b".index" in os.listdir(os.fsencode(str(tmp_path / "tf")))
    rc, _, err = _convert_any_name(["tf2torch", tmp_path / "tf", tmp_path / "o.safetensors"] + TF_FLAGS, monkeypatch)
    assert rc == 0, err


# -- 7. a full disk names the output ------------------------------------------------------------------

def _enospc(*a, **k):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("name", ["o.safetensors", "o.pt"])
def test_tf2torch_full_disk_names_the_output(tmp_path, capsys, monkeypatch, name):
    ckpt = _tf_checkpoint(tmp_path)
    monkeypatch.setattr(wc, "_write_array", _enospc)
    monkeypatch.setattr(torch, "save", _enospc)
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / name] + TF_FLAGS, capsys)
    line = [ln for ln in err.replace("\r", "\n").splitlines() if "error:" in ln]
    assert rc == 2 and len(line) == 1 and str(tmp_path / name) in line[0] and "No space left" in line[0], err
    assert snapshot(str(tmp_path)) == before


def test_torch2tf_full_disk_names_the_output(tmp_path, capsys, monkeypatch):
    from ugatit_common.tf_checkpoint import bundle
    src = _save_port(tmp_path / "A", _model(0), step=3)
    prefix = tmp_path / "tf" / "UGATIT_light.model-3"
    (tmp_path / "tf").mkdir()
    before = snapshot(str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(bundle, "_build_table", _enospc)                  # the .index
        rc, _, err = _convert(["torch2tf", src, prefix], capsys)
    line = _error_line(err)
    assert rc == 2 and str(prefix) in line and "No space left" in line and snapshot(str(tmp_path)) == before
    # the folder's `checkpoint` file: the bundle this command had just made goes with it
    with monkeypatch.context() as m:
        m.setattr(wc, "prepare_checkpoint_state", _enospc)
        rc, _, err = _convert(["torch2tf", src, prefix], capsys)
    line = _error_line(err)
    assert rc == 2 and str(tmp_path / "tf" / "checkpoint") in line and "No space left" in line
    assert not [n for n in os.listdir(tmp_path / "tf") if n.startswith("UGATIT")]


def test_torch2tf_a_rename_failing_half_way_leaves_the_checkpoint_as_it_was(tmp_path, capsys, monkeypatch):
    """The bundle's .data is renamed into place, then its .index: when the second rename failed
    (a full disk, EIO), the new .data stayed - beside the old .index under --overwrite (a corrupt
    checkpoint: offsets and checksums of other bytes), alone without it (a partial output) - and
    the message said "nothing was written"."""
    src_a = _save_port(tmp_path / "A", _model(0), step=3)
    src_b = _save_port(tmp_path / "B", _model(1), step=3)
    prefix = tmp_path / "tf" / "UGATIT_light.model-3"
    real_replace = os.replace

    def index_rename_fails(a, b, *args, **kw):
        if str(b).endswith(".index"):
            raise OSError(28, "No space left on device")
        return real_replace(a, b, *args, **kw)

    # a new checkpoint: nothing of it is left
    (tmp_path / "tf").mkdir()
    before = snapshot(str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(os, "replace", index_rename_fails)
        rc, _, err = _convert(["torch2tf", src_a, prefix, "--weights_only"], capsys)
    line = _error_line(err)
    assert rc == 2 and str(prefix) in line and "No space left" in line, line
    assert snapshot(str(tmp_path)) == before
    # --overwrite of a complete checkpoint: it is still the old one, whole and readable
    rc, _, err = _convert(["torch2tf", src_a, prefix, "--weights_only"], capsys)
    assert rc == 0, err
    with BundleReader(str(prefix)) as r:
        old = {n: r.read(n).copy() for n in r.keys()}
    before = snapshot(str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(os, "replace", index_rename_fails)
        rc, _, err = _convert(["torch2tf", src_b, prefix, "--weights_only", "--overwrite"], capsys)
    line = _error_line(err)
    assert rc == 2 and "No space left" in line and "nothing was written" in line, line
    assert snapshot(str(tmp_path)) == before
    with BundleReader(str(prefix)) as r:
        assert all((r.read(n) == a).all() for n, a in old.items())
    # the folder's `checkpoint` file failing after the bundle: the old bundle is back too
    with monkeypatch.context() as m:
        m.setattr(wc, "prepare_checkpoint_state", _enospc)
        rc, _, err = _convert(["torch2tf", src_b, prefix, "--weights_only", "--overwrite"], capsys)
    assert rc == 2 and "nothing was written" in _error_line(err)
    assert snapshot(str(tmp_path)) == before


# -- 8. a folder's `checkpoint` file naming another checkpoint ----------------------------------------

def test_torch2tf_never_repoints_a_folders_checkpoint_file_silently(tmp_path, capsys):
    """o2/model then o2/other (written as model-3, other-3): names that are not `*.model-N` escaped
    the other-checkpoints rule, and o2/checkpoint was re-pointed to the new one without --overwrite."""
    from ugatit_common.tf_checkpoint.bundle import read_checkpoint_state
    src = _save_port(tmp_path / "A", _model(0), step=3)
    rc, _, err = _convert(["torch2tf", src, tmp_path / "o2" / "model", "--weights_only"], capsys)
    assert rc == 0, err
    before = snapshot(str(tmp_path))
    for name in ("other", "UGATIT_light.model-3"):
        rc, _, err = _convert(["torch2tf", src, tmp_path / "o2" / name, "--weights_only"], capsys)
        line = _error_line(err)
        assert rc == 2 and "checkpoint" in line and "'model-3'" in line and "--overwrite" in line, line
        assert snapshot(str(tmp_path)) == before
    # the folder came from a Windows machine: its `checkpoint` file names `D:\...\model-3`, read as
    # this folder's model-3 (ugatit_common.tf_checkpoint.resolve_prefix): still refused
    from ugatit_common.tf_checkpoint.bundle import write_checkpoint_state
    write_checkpoint_state(str(tmp_path / "o2"), "D:\\runs\\o2\\model-3")
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["torch2tf", src, tmp_path / "o2" / "other", "--weights_only"], capsys)
    assert rc == 2 and "--overwrite" in _error_line(err) and snapshot(str(tmp_path)) == before, err
    # the same checkpoint again, or --overwrite, re-points it
    rc, _, err = _convert(["torch2tf", src, tmp_path / "o2" / "model", "--weights_only", "--overwrite"], capsys)
    assert rc == 0, err
    rc, _, err = _convert(["torch2tf", src, tmp_path / "o2" / "other", "--weights_only", "--overwrite"], capsys)
    assert rc == 0 and read_checkpoint_state(str(tmp_path / "o2"))[0] == "other-3", err


def test_a_failed_conversion_leaves_no_folder_it_made(tmp_path, capsys, monkeypatch):
    """torch2tf into folders that do not exist yet, failing while it writes (a full disk): the
    folders made for the output (claimed before the work) are gone with it."""
    from ugatit_common.tf_checkpoint import bundle
    src = _save_port(tmp_path / "A", _model(0), step=3)
    prefix = tmp_path / "new" / "deeper" / "UGATIT_light.model-3"
    with monkeypatch.context() as m:
        m.setattr(bundle, "_build_table", _enospc)
        rc, _, err = _convert(["torch2tf", src, prefix], capsys)
    assert rc == 2 and "No space left" in _error_line(err)
    assert not (tmp_path / "new").exists()


def test_torch_to_tf_api_refuses_what_tf_cannot_restore(tmp_path):
    """The Python API `weights_convert.torch_to_tf` (the command casts first): a float64 state is
    refused naming the tensor, nothing written."""
    state = {k: v.double() for k, v in _model(0).state_dict().items()}
    with pytest.raises(wc.ConversionError, match=r"float64, float32 expected"):
        wc.torch_to_tf(state, str(tmp_path / "tf" / "UGATIT_light.model-3"))
    assert not (tmp_path / "tf").exists() or not os.listdir(tmp_path / "tf")


# -- 9. the .meta: the graph tf.train.Saver writes beside every official checkpoint ---------------------

# settings that differ from the official defaults, each one recorded by the train graph's .meta
META_CFG = opt.config_from(light=True, dataset="t", img_size=64, ch=2, n_dis=4, augment_flag=False, smoothing=False,
                           gan_type="hinge", adv_weight=2, cam_weight=500)


def _meta_port(folder, step=3, seed=0, cfg=META_CFG):
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    torch.manual_seed(seed)
    model = build_ugatit(cfg)
    model.make_optimizers()
    ck.save(str(folder), opt.model_name(cfg), step, model,
            {"config": ck.plain_config(cfg), "run": "r1", "counter": step,
             "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict()})
    return os.path.join(str(folder), f"{opt.model_name(cfg)}.model-{step}.safetensors")


@pytest.fixture(scope="module")
def meta_conversion(tmp_path_factory):
    """A port checkpoint of META_CFG (with its optimizer state) converted by torch2tf once: (root,
    TF prefix, stdout, stderr, rc). The graph is built once per process and variable set."""
    import contextlib
    import io
    root = tmp_path_factory.mktemp("meta")
    src = _meta_port(root / "port")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = wc.main(["torch2tf", src, str(root / "tf" / "UGATIT_light.model")])
    return root, str(root / "tf" / "UGATIT_light.model-3"), out.getvalue(), err.getvalue(), rc


@pytest.mark.tf
def test_torch2tf_writes_the_meta_and_tf2torch_reads_every_setting_from_it(meta_conversion, capsys):
    """torch2tf wrote no .meta: tf2torch then guessed smoothing and img_size (a light model's
    weights record neither) and knew nothing of gan_type and the loss weights. Now the official
    train graph of the checkpoint's config is beside it, and every setting it records is read
    from it (source `meta`), none guessed."""
    from ugatit_common.checkpoint_policy import safetensors_metadata
    root, prefix, out, err, rc = meta_conversion
    assert rc == 0, err
    assert os.path.isfile(prefix + ".meta") and ".meta" in out.splitlines()[-1], out
    assert "no .meta" not in err, err
    info = wc.read_tf_config_info(prefix)
    for key in wc.META_RECORDS:
        assert info.settings[key].source == "meta" and info.config[key] == META_CFG[key], (key, info.describe())
    assert not info.guessed, info.describe()
    rc, _, err = _convert(["tf2torch", os.path.dirname(prefix), root / "back.safetensors"], capsys)
    assert rc == 0 and "guessed" not in err, err
    meta = safetensors_metadata(str(root / "back.safetensors"))
    sources = json.loads(meta["ugatit_config_sources"])
    assert {k: sources[k] for k in wc.META_RECORDS} == {k: "meta" for k in wc.META_RECORDS}, sources
    assert json.loads(meta["ugatit_config_guessed"]) == {}
    config = json.loads(meta["ugatit_config"])
    assert {k: config[k] for k in wc.META_RECORDS} == {k: META_CFG[k] for k in wc.META_RECORDS}


@pytest.mark.tf
def test_the_meta_records_what_tf_references_own_checkpoints_record(meta_conversion, tmp_path):
    """The same config trained by tf_reference (its train graph saved by its tf.train.Saver, as
    the official code saves): both .meta files hold the same variables and record the same
    settings, read the way tf2torch reads them."""
    from parity_tests import tf_checkpoints as tc
    from ugatit_common.tf_checkpoint import metagraph
    _, prefix, _, err, rc = meta_conversion
    assert rc == 0, err
    tc.make_dataset(str(tmp_path), size=64)
    keys = ("light", "img_size", "ch", "n_dis", "augment_flag", "smoothing", "gan_type", "adv_weight", "cam_weight")
    theirs = tc.write_train_checkpoint(str(tmp_path), tc.full_config(str(tmp_path), **{k: META_CFG[k] for k in keys}))
    graphs = [metagraph.read_meta_graph(p + ".meta") for p in (prefix, theirs)]
    ours, official = [{k: f.value for k, f in metagraph.recognise(g).items()} for g in graphs]
    assert ours == official and set(ours) == set(wc.META_RECORDS), (ours, official)
    assert graphs[0].variables() == graphs[1].variables()


@pytest.mark.tf
@pytest.mark.parametrize("weights_only", [False, pytest.param(True, marks=pytest.mark.slow)])  # slow: its own graph
def test_torch2tf_meta_imports_and_restores_in_tensorflow(meta_conversion, tmp_path, capsys, weights_only):
    """tf.compat.v1.train.import_meta_graph(<prefix>.meta) + saver.restore, as one restores an
    official checkpoint with its graph: the Saver in the .meta restores exactly the checkpoint's
    variables (a --weights_only checkpoint's: no Adam slots), with the values of the .index. The
    tf_reference test phase's restore (its own graph) takes the checkpoint as before, and its
    train phase reads the image size from the .meta."""
    from tf_reference import train as phases
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    root, prefix, _, err, rc = meta_conversion
    assert rc == 0, err
    if weights_only:
        prefix = str(tmp_path / "tf" / "UGATIT_light.model-3")
        rc, _, err = _convert(["torch2tf", root / "port", prefix, "--weights_only"], capsys)
        assert rc == 0 and os.path.isfile(prefix + ".meta"), err
    with BundleReader(prefix) as r:
        stored = {n: r.read(n).copy() for n in r.keys()}
    assert any("/Adam" in n for n in stored) != weights_only
    with tf.Graph().as_default():
        saver = tf.train.import_meta_graph(prefix + ".meta")
        saved = {v.op.name: v for v in tf.global_variables() if v.op.name in stored}
        with tf.Session() as sess:
            saver.restore(sess, prefix)
            values = sess.run(saved)
    assert set(values) == set(stored)
    for n, v in values.items():
        np.testing.assert_array_equal(v, stored[n], err_msg=n)
    from ugatit_common.checkpoint_policy import run_image_size
    assert run_image_size(prefix) == (META_CFG["img_size"], f"its .meta graph records img_size={META_CFG['img_size']}")
    with tf.Graph().as_default():
        UGATITGraph(opt.config_from(META_CFG, phase="test")).build_test()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            loaded, step = phases.restore(sess, tf.train.Saver(), os.path.dirname(prefix), tf.global_variables(),
                                          need="weights")
            kernel = [v for v in tf.global_variables() if v.op.name == "generator_B/conv/conv2d/kernel"][0]
            np.testing.assert_array_equal(sess.run(kernel), stored["generator_B/conv/conv2d/kernel"])
    assert loaded and step == 3


@pytest.mark.tf
def test_torch2tf_a_failure_leaves_no_meta_nor_any_partial_output(meta_conversion, tmp_path, capsys, monkeypatch):
    """The .meta is one of the files of the checkpoint's write: a full disk writing it, the
    .index, or the folder's `checkpoint` file, or a rename failing after the .meta's, leaves no
    .meta and nothing else of the new checkpoint - in a new folder, and under --overwrite (the
    old checkpoint whole, its old .meta included); killed after the .meta's rename, the next
    reader of the folder puts the old checkpoint back."""
    from ugatit_common.tf_checkpoint import bundle
    root, _, _, err, rc = meta_conversion
    assert rc == 0, err
    src = str(root / "port")
    prefix = tmp_path / "tf" / "UGATIT_light.model-3"
    real_replace = os.replace

    def rename_fails(suffix):
        def replace(a, b, *args, **kw):
            if str(b).endswith(suffix):
                raise OSError(28, "No space left on device")
            return real_replace(a, b, *args, **kw)
        return replace
    failures = [(wc, "write_temp_beside", _enospc), (bundle, "_build_table", _enospc),
                (wc, "prepare_checkpoint_state", _enospc), (os, "replace", rename_fails(".meta")),
                (os, "replace", rename_fails("checkpoint"))]
    (tmp_path / "tf").mkdir()
    for overwrite in (False, True):
        if overwrite:  # an older checkpoint there, with its own graph
            rc, _, err = _convert(["torch2tf", _meta_port(tmp_path / "old", seed=1), prefix], capsys)
            assert rc == 0, err
            (tmp_path / "tf" / "UGATIT_light.model-3.meta").write_bytes(b"\x0a\x05hello")  # the old run's graph
        before = snapshot(str(tmp_path / "tf"))
        for home, name, fail in failures:
            with monkeypatch.context() as m:
                m.setattr(home, name, fail)
                rc, _, err = _convert(["torch2tf", src, prefix] + ["--overwrite"] * overwrite, capsys)
            line = _error_line(err)
            assert rc == 2 and "No space left" in line, (name, line)
            assert snapshot(str(tmp_path / "tf")) == before, (name, overwrite)
    # killed (SIGKILL) right after the .meta's rename: the next reader puts the old checkpoint back
    from parity_tests.test_nothing_lost import _killed_at, _visible
    from ugatit_common.tf_checkpoint.bundle import resolve_prefix
    visible = _visible(tmp_path / "tf")
    assert _killed_at(1, lambda: wc.main([str(a) for a in ("torch2tf", src, prefix, "--overwrite")]),
                      only=lambda name, args: name == "replace" and str(args[1]).endswith(".meta"))
    assert _visible(tmp_path / "tf") != visible  # the new .data, .index and .meta beside the old `checkpoint`
    assert resolve_prefix(str(tmp_path / "tf")) == str(prefix) and _visible(tmp_path / "tf") == visible
    rc, _, err = _convert(["torch2tf", src, prefix, "--overwrite"], capsys)
    assert rc == 0 and (tmp_path / "tf" / "UGATIT_light.model-3.meta").read_bytes() != b"\x0a\x05hello", err
    assert wc.read_tf_config_info(str(prefix)).settings["smoothing"].source == "meta"


def test_torch2tf_writes_no_meta_from_settings_its_input_does_not_record(tmp_path, capsys):
    """A .meta is a record: a weights file that records no config (or a tf2torch output that
    guessed smoothing) gets no .meta, since it would pass the guesses off as the checkpoint's
    (a stale one is removed instead); one line says so, whether TensorFlow is there or not."""
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()))
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if "no .meta written" in ln]
    # (the settings it lacks, listed: the note's end names smoothing, img_size and gan_type in any case)
    assert len(notes) == 1 and "does not record smoothing, img_size, gan_type, adv_weight" in notes[0], err
    assert not (tmp_path / "tf" / "UGATIT_light.model-3.meta").exists()
    # a tf2torch output whose smoothing and img_size were guessed (no .meta, no model_dir name)
    rc, _, err = _convert(["tf2torch", tmp_path / "tf", tmp_path / "back.safetensors"], capsys)
    assert rc == 0 and "guessed smoothing" in err, err
    rc, out, err = _convert(["torch2tf", tmp_path / "back.safetensors", tmp_path / "tf2" / "m"], capsys)
    notes = [ln for ln in err.splitlines() if "no .meta written" in ln]
    assert rc == 0 and len(notes) == 1 and "does not record smoothing, img_size, gan_type" in notes[0], err
    assert not [n for n in os.listdir(tmp_path / "tf2") if n.endswith(".meta")]


@pytest.mark.parametrize("config", ["the_runs", "not_a_dict"])
def test_torch2tf_takes_the_state_files_config_as_recorded_when_it_is_one(config, tmp_path, capsys):
    """Weights whose metadata holds no config beside their run's state file: the state's `config`
    (the run's flags) is the config, every setting recorded - only TensorFlow's absence stops the
    .meta here; a state `config` that is not a dict is none, and the config is inferred from the
    shapes (said), never an internal error."""
    from safetensors.torch import load_file, save_file
    src = _save_port(tmp_path / "port", _model())
    from ugatit_common.checkpoint_policy import safetensors_metadata
    meta = {k: v for k, v in safetensors_metadata(src).items() if k != "config"}
    save_file(load_file(src), src, metadata=meta)
    state_path = src.replace(".safetensors", ".state.pt")
    if config == "not_a_dict":
        state = torch.load(state_path, weights_only=True)
        torch.save(dict(state, config="light=True"), state_path)
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    notes = [ln for ln in err.splitlines() if "no .meta written" in ln]
    assert rc == 0 and len(notes) == 1, err
    if config == "the_runs":
        assert "(TensorFlow not installed)" in notes[0] and "records no config" not in out + err, err
    else:
        assert "records no config; inferred from the weights' shapes" in out, out



def test_provenance_holds_guessed_values_of_any_json_type():
    """checkpoint.provenance_in_metadata: the sources must be strings (`meta`, `weights`...), but
    `ugatit_config_guessed` maps each setting to its guessed value - a number or a bool, as
    tf2torch writes it - and is read as it is; absent keys read as their empty defaults, a fresh
    copy each time (a caller's change never leaks into the next file's)."""
    from torch_port.checkpoint import provenance_in_metadata
    guessed = {"img_size": 256, "light": True, "dataset": "x"}
    got = provenance_in_metadata({"ugatit_config_sources": json.dumps({"ch": "meta"}),
                                  "ugatit_config_guessed": json.dumps(guessed)}, "w.safetensors")
    assert got == {"ugatit_config_sources": {"ch": "meta"}, "ugatit_config_guessed": guessed,
                   "ugatit_config_not_recorded": []}
    empty = provenance_in_metadata({}, "w.safetensors")
    empty["ugatit_config_guessed"]["ch"] = 4
    empty["ugatit_config_not_recorded"].append("ch")
    assert provenance_in_metadata({}, "w.safetensors") == {"ugatit_config_sources": {}, "ugatit_config_guessed": {},
                                                          "ugatit_config_not_recorded": []}


def test_damaged_provenance_is_one_error_in_every_reader(tmp_path, monkeypatch, capsys):
    """A weights file whose `ugatit_config` lists every setting with where each came from
    (tf2torch's `ugatit_config_sources`: here all from a .meta) has them recorded: what stops its
    .meta here is only TensorFlow's absence. The same file with a provenance key damaged (not
    JSON, not the JSON type tf2torch writes, a source that is not a string) was read by torch2tf
    as "records nothing" and by the port and Morph as "guesses nothing"; now every reader refuses
    it as it refuses a damaged `ugatit_config` (checkpoint.provenance_in_metadata): torch2tf and
    the test phase say one `error:` line naming the file and the key (exit 2, nothing written),
    load_any (translate, exports) and Morph's --init_from raise that OptionError."""
    import json

    import cv2

    from morph.train import _read_ugatit
    from torch_port import checkpoint as ck
    from torch_port.__main__ import main as port_main
    cfg = ck.plain_config(CFG)
    good = {"ugatit_config_sources": json.dumps({k: "meta" for k in cfg}), "ugatit_config_guessed": "{}",
            "ugatit_config_not_recorded": "[]"}
    src = _weights_file(tmp_path / "good.safetensors", dict(_model().state_dict()),
                        {**good, "ugatit_config": json.dumps(cfg)})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "good" / "UGATIT_light.model-3"], capsys)
    notes = [ln for ln in err.splitlines() if "no .meta written" in ln]
    assert rc == 0 and len(notes) == 1 and "(TensorFlow not installed)" in notes[0], err  # (conftest: no TF here)
    assert ck.load_any(str(src), {})["config"]["img_size"] == 32
    cv2.imwrite(str(tmp_path / "x.png"), np.full((32, 32, 3), 128, np.uint8))
    monkeypatch.chdir(tmp_path)
    damaged = (("ugatit_config_sources", "{not json"), ("ugatit_config_sources", "[]"),
               ("ugatit_config_sources", json.dumps({k: 1 for k in cfg})), ("ugatit_config_guessed", "[]"),
               ("ugatit_config_guessed", ""), ("ugatit_config_not_recorded", "{}"),
               ("ugatit_config_not_recorded", "[1]"))
    for i, (key, text) in enumerate(damaged):
        src = _weights_file(tmp_path / f"w{i}.safetensors", dict(_model().state_dict()),
                            {**good, "ugatit_config": json.dumps(cfg), key: text})
        rc, out, err = _convert(["torch2tf", src, tmp_path / f"tf{i}" / "UGATIT_light.model-3"], capsys)
        line = _error_line(err)
        assert rc == 2 and str(src) in line and key in line, (key, text, line)
        assert not (tmp_path / f"tf{i}").exists(), (key, text)
        rc = port_main(["--phase", "test", "--checkpoint", str(src), "--input", "x.png", "--device", "cpu",
                        "--result_dir", f"results{i}"])
        line = _error_line(capsys.readouterr().err)
        assert rc == 2 and str(src) in line and key in line, (key, text, line)
        assert not (tmp_path / f"results{i}").exists(), (key, text)
        for read in (lambda: ck.load_any(str(src), {}), lambda: _read_ugatit(str(src), dict(CFG), ("ch",))):
            with pytest.raises(opt.OptionError, match=key) as e:
                read()
            assert str(src) in str(e.value), (key, text)
    # a port checkpoint's `config` with damaged provenance beside it: refused as load_any refuses it
    src = _weights_file(tmp_path / "port.safetensors", dict(_model().state_dict()),
                        {"config": json.dumps(cfg), "ugatit_config_guessed": "[]"})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tfport" / "UGATIT_light.model-3"], capsys)
    line = _error_line(err)
    assert rc == 2 and str(src) in line and "ugatit_config_guessed" in line, line
    with pytest.raises(opt.OptionError, match="ugatit_config_guessed"):
        ck.load_any(str(src), {})
    # a tf2torch .pt holds the same provenance as its `config_provenance`: damaged, the same error
    for i, prov in enumerate(("not a dict", {"sources": "not a dict"})):
        src = tmp_path / f"p{i}.pt"
        torch.save({"state": dict(_model().state_dict()), "config": cfg, "config_provenance": prov}, str(src))
        rc, out, err = _convert(["torch2tf", src, tmp_path / f"tfp{i}" / "UGATIT_light.model-3"], capsys)
        line = _error_line(err)
        assert rc == 2 and str(src) in line and ("config_provenance" in line or "ugatit_config_sources" in line), line
        assert not (tmp_path / f"tfp{i}").exists(), prov


def test_torch2tf_refuses_weights_whose_recorded_config_is_damaged(tmp_path, capsys):
    """A weights file whose `ugatit_config` (or a port checkpoint's `config`) metadata is not a JSON
    object (not JSON, a list, a string): torch2tf read it as no config and converted with settings
    guessed from the shapes, while the port's test phase and exports refuse the same file. Now one
    rule (torch_port.checkpoint.config_in_metadata): one `error:` line naming the file and the
    damaged key, exit 2, nothing written."""
    from torch_port.checkpoint import load_any
    from ugatit_common import options as opt
    for i, (key, text) in enumerate((("ugatit_config", "[1, 2]"), ("ugatit_config", '"light"'),
                                     ("ugatit_config", "{not json"), ("config", "{not json"))):
        src = _weights_file(tmp_path / f"w{i}.safetensors", dict(_model().state_dict()), {key: text})
        rc, out, err = _convert(["torch2tf", src, tmp_path / f"tf{i}" / "UGATIT_light.model-3"], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (text, out, err)
        assert str(src) in lines[0] and key in lines[0] and "records no config" not in out, (text, lines)
        assert not (tmp_path / f"tf{i}").exists(), text
        with pytest.raises(opt.OptionError, match=key):  # the port's readers: the same rule
            load_any(str(src), {})


def test_torch2tf_of_generators_alone_needs_the_discriminator_settings_recorded(tmp_path, capsys):
    """The .meta holds the train graph, discriminators included: weights of the generators alone
    (which fix neither n_dis nor sn) need a record of both, or no .meta is written from the
    guesses, and the note names them; the same settings recorded (only TensorFlow's absence stops
    it here)."""
    import json
    from torch_port import checkpoint as ck
    cfg = ck.plain_config(CFG)
    gens = {k: v for k, v in _model().state_dict().items() if k.startswith("generator")}
    for name, guessed in (("guessed", ("n_dis", "sn")), ("recorded", ())):
        sources = {k: "default" if k in guessed else "meta" for k in cfg}
        meta = {"ugatit_config": json.dumps(cfg), "ugatit_config_sources": json.dumps(sources),
                "ugatit_config_guessed": json.dumps({k: cfg[k] for k in guessed}), "ugatit_config_not_recorded": "[]"}
        src = _weights_file(tmp_path / f"{name}.safetensors", gens, meta)
        rc, out, err = _convert(["torch2tf", src, tmp_path / name / "UGATIT_light.model-3"], capsys)
        notes = [ln for ln in err.splitlines() if "no .meta written" in ln]
        assert rc == 0 and len(notes) == 1, err
        said = "does not record n_dis, sn" if guessed else "(TensorFlow not installed)"
        assert said in notes[0], (name, notes)


def test_torch_to_tf_given_a_meta_writes_it_over_a_stale_one_it_is_told_to_drop(tmp_path):
    """weights_convert.torch_to_tf (the library): `drop` naming the replaced checkpoint's stale
    .meta while `meta` brings the new one for the same path writes the new one (the two are one
    path: dropping it after would leave the checkpoint without its graph)."""
    prefix = str(tmp_path / "UGATIT_light.model-3")
    with open(prefix + ".meta", "wb") as fh:
        fh.write(b"stale graph")
    wc.torch_to_tf(dict(_model().state_dict()), prefix, drop=[prefix + ".meta"], meta=b"new graph")
    with open(prefix + ".meta", "rb") as fh:
        assert fh.read() == b"new graph"
    assert os.path.isfile(prefix + ".index")


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_a_safetensors_file_whose_header_length_looks_like_torch_keeps_its_metadata(first_bytes, tmp_path, capsys):
    """A .safetensors file starts with its header's length (8 bytes, little-endian): one whose
    length begins with the byte of a pickle (0x80: a length of 128 + 256 k) or with `PK` (a zip's)
    was read by torch2tf as a torch.save file - its metadata (the run's config, step) lost, the
    config then guessed from the shapes (img_size 256 for this 32 px light model). The file is
    told by its own header first."""
    import json
    import struct
    from safetensors.torch import save_file

    from torch_port.to_tf import load_weights
    from torch_port import checkpoint as ck
    cfg = ck.plain_config(CFG)
    state = dict(_model().state_dict())
    path = str(tmp_path / "UGATIT_light.model-5.safetensors")

    def header_length(pad):
        save_file(state, path, metadata={"config": json.dumps(cfg), "step": "5", "pad": "x" * pad})
        with open(path, "rb") as fh:
            return struct.unpack("<Q", fh.read(8))[0]
    want = struct.unpack("<Q", first_bytes.ljust(8, b"\0"))[0]  # the low byte(s) the length must have
    modulus = 256 ** len(first_bytes)
    base = header_length(0)
    pad = next(p for p in range((want - base) % modulus, (want - base) % modulus + modulus, 1)
               if header_length(p) % modulus == want)
    with open(path, "rb") as fh:
        assert fh.read(len(first_bytes)) == first_bytes and pad >= 0
    weights, meta = load_weights(path)
    assert json.loads(meta["config"]) == cfg and meta["step"] == "5" and weights.keys() == state.keys()
    rc, out, err = _convert(["torch2tf", path, tmp_path / "tf" / "UGATIT_light.model-5"], capsys)
    assert rc == 0 and "records no config" not in err, err

# -- 10. tf2torch checks the variables against the model the checkpoint describes ---------------------

def _rewritten(root, name, change):
    """The weights-only TF checkpoint of _tf_checkpoint, rewritten tensor by tensor with `change`
    ({TF name: ndarray} -> the same, modified) into `root/name/`."""
    from ugatit_common.tf_checkpoint.bundle import BundleWriter, write_checkpoint_state
    with BundleReader(_tf_checkpoint(root / f"src-{name}")) as r:
        tensors = change({n: r.read(n) for n in r.keys()})
    prefix = os.path.join(str(root), name, "UGATIT_light.model-3")
    with BundleWriter(prefix) as w:
        for n, a in tensors.items():
            w.add(n, a)
    write_checkpoint_state(os.path.dirname(prefix), os.path.basename(prefix))
    return os.path.dirname(prefix)


@pytest.mark.parametrize("case", ["shape", "missing", "dtype", "no_slots"])
def test_tf2torch_refuses_variables_that_are_not_the_models(tmp_path, capsys, case):
    """A TF checkpoint whose variables are not those of the model its records describe - a
    kernel of another shape (TF's Saver refuses to restore it), one missing, an integer tensor -
    or --with_optimizer on an inference-only export (no Adam slots): tf2torch wrote the file
    anyway (every port command then refused it; --with_optimizer silently carried nothing). One
    `error:` line naming the TF variable, exit 2, nothing written."""
    kernel = "generator_A/resblock_1/res1/conv_0/conv2d/kernel"
    change, says, flags = {
        "shape": (lambda t: {**t, kernel: t[kernel][..., :-1]}, kernel, []),
        "missing": (lambda t: {n: a for n, a in t.items() if n != kernel}, kernel, []),
        "dtype": (lambda t: {**t, kernel: t[kernel].astype(np.int32)}, kernel, []),
        "no_slots": (lambda t: t, "--with_optimizer", ["--with_optimizer"]),
    }[case]
    ckpt = _rewritten(tmp_path, "tf", change)
    out = tmp_path / "o.safetensors"
    before = snapshot(str(tmp_path))
    rc, _, err = _convert(["tf2torch", ckpt, out, *flags] + TF_FLAGS, capsys)
    line = _error_line(err)
    assert rc == 2 and says in line and "UGATIT_light.model-3" in line, line
    assert snapshot(str(tmp_path)) == before
    # the same checkpoint unchanged converts (the refusal is the change's)
    rc, _, err = _convert(["tf2torch", _rewritten(tmp_path, "ok", lambda t: t), out] + TF_FLAGS, capsys)
    assert rc == 0 and out.exists(), err


def test_tf2torch_leaves_out_a_forks_extra_variables_as_tfs_saver_does(tmp_path, capsys):
    """A TF checkpoint holding variables the official graph of its config has not (a modified
    fork's, with their Adam slots): the official test phase's Saver restores past them, so the
    conversion leaves them out, says so in one note naming them, and writes what a checkpoint
    without them gives, tensor for tensor."""
    from safetensors.numpy import load_file
    extra = "generator_A/fork_extra/conv2d/kernel"
    ckpt = _rewritten(tmp_path, "fork", lambda t: {**t, extra: np.ones((3, 3, 2, 2), np.float32)})
    plain = _rewritten(tmp_path, "plain", lambda t: t)
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / "fork.safetensors"] + TF_FLAGS, capsys)
    notes = [ln for ln in err.splitlines() if ln.startswith("note:") and "left out 1 variable" in ln]
    assert rc == 0 and len(notes) == 1 and extra in notes[0], err
    rc, _, err = _convert(["tf2torch", plain, tmp_path / "plain.safetensors"] + TF_FLAGS, capsys)
    assert rc == 0, err
    a, b = load_file(str(tmp_path / "fork.safetensors")), load_file(str(tmp_path / "plain.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_library_takes_a_meta_path_and_refuses_a_size_the_graph_cannot_build(tmp_path):
    """weights_convert.tf_to_torch (the library) as its command line and the port's --checkpoint:
    the checkpoint's `.meta` file names its prefix (it was "neither a checkpoint folder, a prefix,
    nor a .index/.data file"); an --img_size the official graph cannot build with is refused (the
    library converted at 63 px silently, where `tf2torch --img_size 63` is refused)."""
    import shutil
    from parity_tests.conftest import GOLDEN
    for f in ("UGATIT.model-3.index", "UGATIT.model-3.data-00000-of-00001"):
        shutil.copy(os.path.join(GOLDEN, "final", f), tmp_path / f)
    (tmp_path / "UGATIT.model-3.meta").write_bytes(b"not a graph")  # a damaged .meta: the flags say the rest
    known = {"img_size": 64, "smoothing": True}
    prefix = str(tmp_path / "UGATIT.model-3")
    cfg, state = wc.tf_to_torch(prefix, overrides=known, quiet=True)
    cfg_meta, state_meta = wc.tf_to_torch(prefix + ".meta", overrides=known, quiet=True)
    assert cfg_meta == cfg and state_meta.keys() == state.keys()
    assert all(torch.equal(state_meta[k], state[k]) for k in state)
    with pytest.raises(wc.ConversionError, match=r"--img_size=63: "):
        wc.tf_to_torch(prefix, overrides=dict(known, img_size=63), quiet=True)


# -- 11. a weights file is read by its content, whatever its extension says -------------------------

@pytest.mark.parametrize("written_as,named", [("pt", "w.safetensors"), ("safetensors", "w.pt")])
def test_torch2tf_reads_a_weights_file_by_its_content_not_its_extension(written_as, named, tmp_path, capsys):
    """A tf2torch .pt renamed .safetensors was refused as "not a readable .pt weights file
    (SafetensorError ...)": torch.load (torch >= 2.13) given a path ending in .safetensors reads
    it as safetensors whatever it holds. A safetensors file named .pt was refused with
    "(KeyError: 0)". Both are read as what they hold, their recorded config kept."""
    state = dict(_model().state_dict())
    src = tmp_path / named
    if written_as == "pt":
        torch.save({"state": state, "config": dict(CFG), "step": 3}, str(src))
    else:
        _weights_file(src, state, {"config": json.dumps(dict(CFG)), "step": "3"})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"], capsys)
    assert rc == 0 and "records no config" not in out + err, out + err
    _, back = wc.tf_to_torch(str(tmp_path / "tf"), quiet=True)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


# -- 12. a step recorded as no whole number >= 0 -------------------------------------------------------

@pytest.mark.parametrize("step", ["abc", "-5", "3.5"])
def test_a_recorded_step_that_is_no_whole_number_is_named(step, tmp_path, capsys):
    """A weights file whose metadata `step` is not a whole number >= 0 stopped torch2tf and the
    port's --checkpoint with int()'s bare "invalid literal for int() with base 10: 'abc'" (no file
    named), and a negative one made torch2tf write the prefix `UGATIT_light-5`'s odd twin
    `UGATIT_light--5`. Now one error naming the file and the value, nothing written."""
    from torch_port.checkpoint import load_any
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()),
                        {"config": json.dumps(dict(CFG)), "step": step})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light"], capsys)
    line = _error_line(err)
    assert rc == 2 and "w.safetensors" in line and repr(step) in line, line
    assert not (tmp_path / "tf").exists()
    with pytest.raises(opt.OptionError, match=r"w\.safetensors.*" + re.escape(repr(step))):
        load_any(str(src))


def test_morph_names_a_recorded_step_that_is_no_whole_number(tmp_path):
    """Morph's load of a weights file (--checkpoint FILE) reads its metadata `step` by the same rule:
    one OptionError naming the file and the value, not int()'s bare "invalid literal"."""
    from safetensors.torch import load_file, save_file

    from morph import MorphUGATIT
    from morph.loading import load
    from torch_port import checkpoint as ck
    from ugatit_common import checkpoint_policy as policy
    model = MorphUGATIT(dict(light=True, ch=2, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True,
                             morph_config="C"))
    ck.save(str(tmp_path / "run"), "MorphUGATIT_C", 3, model,
            {"kind": "morph", "config": ck.plain_config(dict(model.config)), "run": "r1", "counter": 3})
    src = str(tmp_path / "run" / "MorphUGATIT_C.model-3.safetensors")
    meta = policy.safetensors_metadata(src)
    assert meta.get("config") and meta.get("kind") == "morph", meta
    save_file(load_file(src), src, metadata={**meta, "step": "abc"})
    with pytest.raises(opt.OptionError, match=r"MorphUGATIT_C\.model-3\.safetensors.*'abc'"):
        load(src)


def test_recorded_step_takes_whole_numbers_only():
    """checkpoint_policy.recorded_step alone: a step as metadata (text) or a state (a number) holds
    it - none or empty is 0; a whole number, as text or a number (3.0 too), is that number; a
    bool, a fraction, a negative or any other text is one OptionError naming the source."""
    from ugatit_common import checkpoint_policy as policy
    for value, step in ((None, 0), ("", 0), ("0", 0), (0, 0), ("7", 7), (7, 7), (3.0, 3)):
        assert policy.recorded_step(value, "w.safetensors") == step, value
    for value in (True, False, 3.5, -1, "-1", "1e3", "x", [3]):
        with pytest.raises(opt.OptionError, match=r"^'w\.safetensors' records step "):
            policy.recorded_step(value, "w.safetensors")


# -- 13. a Morph weights file alone ----------------------------------------------------------------------

@pytest.mark.parametrize("weights_only", [False, True])
def test_torch2tf_names_a_morph_weights_file_given_alone(weights_only, tmp_path, capsys):
    """A Morph checkpoint's weights file without its .state.pt beside it (copied away), or with
    --weights_only (the state is then not read), was refused as a shape mismatch of the UGATIT
    model ("184 variables missing ... check --light, --ch ..."), flags torch2tf does not have; its
    metadata says it is Morph's, which has no TensorFlow counterpart: said so, nothing written."""
    from morph import MorphUGATIT
    from torch_port import checkpoint as ck
    model = MorphUGATIT(dict(light=True, ch=2, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True,
                             morph_config="C"))
    ck.save(str(tmp_path / "run"), "MorphUGATIT_C", 3, model,
            {"kind": "morph", "config": ck.plain_config(dict(model.config)), "run": "r1", "counter": 3})
    src = tmp_path / "run" / "MorphUGATIT_C.model-3.safetensors"
    if not weights_only:
        os.replace(src, tmp_path / "alone.safetensors")
        src = tmp_path / "alone.safetensors"
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3"]
                            + (["--weights_only"] if weights_only else []), capsys)
    line = _error_line(err)
    assert rc == 2 and repr(str(src)) in line and "Morph-UGATIT" in line and "check --light" not in line, line
    assert not (tmp_path / "tf").exists()


# -- 14. torch2tf's output named by one of a checkpoint's files -------------------------------------------

@pytest.mark.parametrize("suffix", [".index", ".data-00000-of-00001", ".meta"])
def test_torch2tf_output_named_by_a_checkpoint_file_writes_that_checkpoint(suffix, tmp_path, capsys):
    """`torch2tf w.safetensors tf/UGATIT_light.model-3.index` wrote `UGATIT_light.model-3.index-3.index`
    (and `.data-00000-of-00001` gave `...data-00000-of-00001.index`): a checkpoint no one asked
    for, under a name that reads as a file of another. The file names its prefix, as an input
    file does (tf2torch, --checkpoint): the checkpoint UGATIT_light.model-3 is written, said."""
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()), {"config": json.dumps(dict(CFG))})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / f"UGATIT_light.model-3{suffix}"], capsys)
    assert rc == 0, err
    names = sorted(os.listdir(tmp_path / "tf"))
    assert names == ["UGATIT_light.model-3.data-00000-of-00001", "UGATIT_light.model-3.index", "checkpoint",
                     "ugatit-run.json"], names  # (the run record: what its config records)
    assert "UGATIT_light.model-3" in out and suffix in out, out
    with BundleReader(str(tmp_path / "tf")) as r:
        assert r.prefix.endswith("UGATIT_light.model-3")
        before = {k: r.read(k).copy() for k in r.keys()}
    # again, over the checkpoint that file is part of: --overwrite replaces that checkpoint (the file
    # named is one of its own, not a prefix of another kind)
    other = _weights_file(tmp_path / "w1.safetensors", dict(_model(1).state_dict()), {"config": json.dumps(dict(CFG))})
    rc, out, err = _convert(["torch2tf", other, tmp_path / "tf" / f"UGATIT_light.model-3{suffix}", "--overwrite"],
                            capsys)
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "tf")) == names
    with BundleReader(str(tmp_path / "tf")) as r:
        assert not all(np.array_equal(r.read(k), before[k]) for k in r.keys()), "the old checkpoint stayed"


# -- 15. a generators-only checkpoint beside the .meta torch2tf writes for it --------------------------

@pytest.mark.tf
def test_tf2torch_reads_n_dis_and_sn_of_generators_alone_from_their_meta(meta_conversion, tmp_path, capsys):
    """torch2tf writes beside generators-only weights that record n_dis and sn the official train
    graph of their config, discriminators included. Reading it back, n_dis and sn were guessed
    (6, True: the checkpoint has no discriminator), and the guessed n_dis=6 then refused the
    .meta's img_size 64 ("--img_size=64: must be ... at least 96 for n_dis=6", a flag no one gave):
    tf2torch, the test phase and the exports could not read the checkpoint torch2tf had just
    written. The .meta's discriminator variables record both: read from it."""
    import shutil

    from ugatit_common.tf_checkpoint.bundle import BundleWriter, write_checkpoint_state
    root, prefix, _, err, rc = meta_conversion
    assert rc == 0, err
    dst = str(tmp_path / "gens" / "UGATIT_light.model-3")
    with BundleReader(prefix) as r, BundleWriter(dst) as w:
        for n in r.keys():
            if n.startswith("generator") and "/Adam" not in n:
                w.add(n, r.read(n))
    write_checkpoint_state(os.path.dirname(dst), os.path.basename(dst))
    shutil.copy(prefix + ".meta", dst + ".meta")
    info = wc.read_tf_config_info(dst)
    for key in ("n_dis", "sn", "img_size"):
        assert info.settings[key].source == "meta" and info.config[key] == META_CFG[key], (key, info.describe())
    rc, out, err = _convert(["tf2torch", os.path.dirname(dst), tmp_path / "back.safetensors"], capsys)
    assert rc == 0 and "guessed" not in err, err


# -- 16. the image size against a guessed n_dis ------------------------------------------------------------

def test_an_image_size_too_small_for_a_guessed_n_dis_says_it_is_guessed(tmp_path, capsys):
    """A generators-only TF checkpoint (an inference export, no .meta) of a 32 px model: its
    discriminator settings are guesses (n_dis 6), and `--img_size 32` was refused with
    "--img_size=32: must be ... at least 96 for n_dis=6" alone - the port's test phase printing
    it before the notes of its guesses - so nothing said that 6 was a guess nor how to give it.
    tf2torch's refusal now says so and names --n_dis; given, the checkpoint reads."""
    prefix = os.path.join(str(tmp_path), "tf", "UGATIT_light.model-3")
    wc.torch_to_tf({k: v for k, v in _model().state_dict().items() if k.startswith("generator")}, prefix)
    flags = ["--img_size", "32", "--smoothing", "True", "--sn", "True"]
    rc, out, err = _convert(["tf2torch", prefix, tmp_path / "o.safetensors"] + flags, capsys)
    line = _error_line("\n".join(ln for ln in err.splitlines() if not ln.startswith("note:")))
    assert rc == 2 and "n_dis=6 is guessed" in line and "--n_dis" in line, line
    assert not (tmp_path / "o.safetensors").exists()
    # the API (README "Python API": weights_convert.tf_to_torch) says the same
    with pytest.raises(wc.ConversionError, match=r"--img_size=32: .* n_dis=6 is guessed .*--n_dis sets it"):
        wc.tf_to_torch(prefix, overrides=dict(img_size=32, smoothing=True, sn=True), quiet=True)
    rc, out, err = _convert(["tf2torch", prefix, tmp_path / "o.safetensors"] + flags + ["--n_dis", "4"], capsys)
    assert rc == 0, err


def test_the_test_phase_takes_an_image_size_that_only_a_guessed_n_dis_refused(tmp_path, monkeypatch, capsys):
    """The same generators-only checkpoint in the port's test phase: it builds the generators
    alone (as the official test graph does), so a guessed n_dis sets no least size there - 32 px
    was refused with "at least 96 for n_dis=6" until --n_dis was typed, which the test phase
    never uses. Now it translates; the generator's own rule (a multiple of 4 from 8) still holds."""
    import cv2

    from torch_port.__main__ import main as port_main
    prefix = os.path.join(str(tmp_path), "tf", "UGATIT_light.model-3")
    wc.torch_to_tf({k: v for k, v in _model().state_dict().items() if k.startswith("generator")}, prefix)
    cv2.imwrite(str(tmp_path / "x.png"), np.full((40, 40, 3), 128, np.uint8))
    monkeypatch.chdir(tmp_path)
    base = ["--phase", "test", "--checkpoint", prefix, "--input", "x.png", "--device", "cpu", "--smoothing", "True"]
    capsys.readouterr()
    assert port_main(base + ["--img_size", "32"]) == 0, capsys.readouterr().err
    assert len([n for n in os.listdir(tmp_path / "results") if n.startswith("UGATIT_light")]) == 1
    capsys.readouterr()
    assert port_main(base + ["--img_size", "30"]) == 2
    assert "--img_size=30: must be a multiple of 4 and at least 8" in capsys.readouterr().err


def test_only_the_test_phase_drops_the_discriminators_least_image_size():
    """opt.validate: the train phase (and Morph, whose loading validates as training) keeps the
    discriminators' least size per n_dis; the test phase has the generator's alone."""
    opt.validate(opt.config_from(phase="test", img_size=8, n_dis=6))
    with pytest.raises(opt.OptionError, match=r"at least 96 for n_dis=6"):
        opt.validate(opt.config_from(phase="train", img_size=32, n_dis=6))
    for size in (4, 30):
        with pytest.raises(opt.OptionError, match=rf"--img_size={size}: must be a multiple of 4 and at least 8 "):
            opt.validate(opt.config_from(phase="test", img_size=size, n_dis=4))


def test_torch2tf_mismatch_names_the_files_own_records_not_flags(tmp_path, capsys):
    """torch2tf has no model flags: a file whose recorded config does not describe its weights
    (ch=4 recorded, ch=2 weights) was told to "check --light, --ch, ...". The line now names the
    recorded config; for a file without one, the shapes the settings were read from."""
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()),
                        {"config": json.dumps(dict(CFG, ch=4)), "step": "3"})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light"], capsys)
    line = _error_line(err)
    assert rc == 2 and "(the model its recorded config describes: light, ch," in line and "check --" not in line, line
    state = {k: v for k, v in _model().state_dict().items() if k != "generator_A.MLP.linear_0.weight"}
    src = _weights_file(tmp_path / "partial.safetensors", state, {})
    rc, out, err = _convert(["torch2tf", src, tmp_path / "tf" / "UGATIT_light"], capsys)
    line = _error_line(err)
    assert rc == 2 and "(the model its weights' shapes describe)" in line and "check --" not in line, line
    assert not (tmp_path / "tf").exists()


def test_tf2torch_draws_its_progress_bar_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """tf2torch's byte-count bar went into redirected stderr too (README command 1's log, a job's
    log): "\rtf2torch:  0%|..." ran into the lines after it. Drawn on a terminal only now, as the
    training, data-check and --batch bars are."""
    import sys
    ckpt = _tf_checkpoint(tmp_path)
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / "o.safetensors"] + TF_FLAGS, capsys)
    assert rc == 0 and "tf2torch:" not in err and "\r" not in err, err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    rc, _, err = _convert(["tf2torch", ckpt, tmp_path / "p.safetensors"] + TF_FLAGS, capsys)
    assert rc == 0 and "tf2torch:" in err, err


def test_morph_reads_a_damaged_recorded_config_by_the_same_rule(tmp_path):
    """Morph's readers of a weights file's `config` (the folder's kind, its weights-only load)
    raised json's own error (no file named) or an AttributeError on a list; now the port's rule:
    one OptionError naming the file and the key."""
    from morph.train import checkpoint_kind
    from ugatit_common import options as opt
    for i, text in enumerate(("{not json", "[1]")):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        src = _weights_file(folder / "UGATIT_light.model-1.safetensors", dict(_model().state_dict()),
                            {"kind": "morph", "config": text, "step": "1"})
        with pytest.raises(opt.OptionError) as e:
            checkpoint_kind(str(folder))
        assert str(src) in str(e.value) and "config" in str(e.value), e.value

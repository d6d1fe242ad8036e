"""A run continues at its own image size, also when its first TF checkpoint lost its `.meta`.

A light model's weights do not fix its image size, so a resume at another --img_size restores and
trains a different model. A TF checkpoint's `.meta` records the size, but TF's Saver writes it
last (a kill or a full disk there loses it); without another checkpoint in the folder nothing
recorded the size and the resume went through. Every trainer now records its options in the
folder's run record (`ugatit-run.json`, checkpoint_policy.write_run_record) when it starts from
scratch, before its first checkpoint, and the resume of a TF checkpoint without a `.meta` checks
it. Morph did not check the size at all (its resume passed no config). The TF tests run
tf_reference; the rest need no TensorFlow."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from parity_tests.conftest import ROOT
from parity_tests.test_train_precision import _config, demo_folder
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import run_lock

FLAGS = ["--dataset", "demo", "--light", "True", "--ch", "2", "--n_dis", "4", "--augment_flag", "False",
         "--print_freq", "100", "--iteration", "1"]


def _cli(module, args, cwd):
    return subprocess.run([sys.executable, "-m", module] + args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)


def _refused(proc, words):
    """Exit 2 with one `error:` line holding every one of `words`, no traceback."""
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


@pytest.mark.tf
@pytest.mark.slow  # three tf_reference runs (about 1 min each on 2 busy cores)
def test_a_first_tf_checkpoint_without_its_meta_refuses_another_image_size(tmp_path, monkeypatch):
    """tf_reference trains one iteration at 32 px (one checkpoint), whose `.meta` is then lost:
    tf_reference and the port both refused nothing and went on at 64 px. Now both stop (exit 2, one
    line naming both sizes, the missing .meta and the run record), changing nothing; at the run's
    own size it resumes. The record beside the official files keeps the folder readable by TF's
    own checkpoint state reader and by the converter (config inference from the .meta)."""
    import tensorflow as tf

    import weights_convert
    from torch_port.checkpoint import CheckpointMismatch
    from torch_port.train import train
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    assert _cli("tf_reference", FLAGS + ["--img_size", "32", "--epoch", "1"], tmp_path).returncode == 0
    folder = tmp_path / "checkpoint" / opt.model_dir(opt.config_from(dataset="demo", light=True, n_dis=4))
    found = policy.inventory(str(folder))
    assert [(f.framework, f.complete) for f in found] == [("tf", True)], policy.describe(found)
    with open(folder / policy.RUN_RECORD) as fh:
        record = json.load(fh)
    assert record["img_size"] == 32 and record["written_by"] == "tf_reference", record

    # the folder, record and all, is an official one to TF's reader and to the converter
    state = tf.train.get_checkpoint_state(str(folder))
    assert os.path.basename(state.model_checkpoint_path) == os.path.basename(found[0].base)
    out = tmp_path / "converted.safetensors"
    assert weights_convert.main(["tf2torch", str(folder), str(out)]) == 0
    meta = policy.safetensors_metadata(str(out))
    assert json.loads(meta["ugatit_config"])["img_size"] == 32 and "img_size" not in meta.get(
        "ugatit_config_guessed", "{}"), meta

    os.remove(found[0].base + ".meta")  # the Saver's last write, lost
    before = sorted(os.listdir(folder))
    words = ("--img_size=64", "img_size=32", os.path.basename(found[0].base), "no .meta", policy.RUN_RECORD)
    _refused(_cli("tf_reference", FLAGS + ["--img_size", "64", "--epoch", "2"], tmp_path), words)
    assert sorted(os.listdir(folder)) == before
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(CheckpointMismatch) as e:  # the port continuing the TF run
            train(_config("", checkpoint_dir="checkpoint", log_dir="logs", iteration=1, epoch=2, img_size=64, ch=2),
                  torch.device("cpu"), seed=1)
    finally:
        torch.set_num_threads(threads)
    assert all(w in str(e.value) for w in words), e.value
    assert sorted(os.listdir(folder)) == before
    proc = _cli("tf_reference", FLAGS + ["--img_size", "32", "--epoch", "2"], tmp_path)
    assert proc.returncode == 0 and "Load SUCCESS" in proc.stdout, proc.stderr[-3000:]


def _port_run_as_tf_checkpoint(root: str) -> str:
    """A port run at 32 px (one iteration) whose checkpoint is then written into its own folder as
    TF's, without a .meta (weights_convert's torch2tf writer, no TensorFlow), the port's files
    removed: the folder tf_reference leaves when its first save lost the .meta."""
    from torch_port.to_tf import prepare
    from torch_port.train import train
    from weights_convert import torch_to_tf
    train(_config("tf", iteration=1), torch.device("cpu"), seed=1)
    folder = glob.glob(os.path.join(root, "ck_tf", "*"))[0]
    (torch_ckpt,) = policy.inventory(folder)
    prepared = prepare(torch_ckpt.weights)
    torch_to_tf(prepared.state, os.path.join(folder, f"UGATIT_light.model-{prepared.step}"))
    for p in torch_ckpt.files + [os.path.join(folder, policy.POINTER)]:
        os.remove(p)
    assert [(f.framework, f.complete) for f in policy.inventory(folder)] == [("tf", True)], os.listdir(folder)
    assert not glob.glob(os.path.join(folder, "*.meta"))
    return folder


def test_the_port_refuses_another_size_from_a_tf_checkpoint_without_its_meta(tmp_path):
    """The port resuming a TF checkpoint without .meta, alone in its folder, at another size: it
    went on at that size; now refused naming the run record (which its own fresh start wrote,
    as tf_reference's does), nothing changed. At 32 px it resumes. A damaged record, when it is
    the only record of the size, is one error naming it (never ignored: ignoring it would let
    the very resume it guards against through), also at the run's own size."""
    from torch_port.checkpoint import CheckpointMismatch
    from torch_port.train import train
    with demo_folder(str(tmp_path)):
        folder = _port_run_as_tf_checkpoint(str(tmp_path))
        with open(os.path.join(folder, policy.RUN_RECORD)) as fh:
            assert json.load(fh)["written_by"] == "torch_port"
        before = sorted(os.listdir(folder))
        with pytest.raises(CheckpointMismatch) as e:
            train(_config("tf", iteration=1, epoch=2, img_size=64), torch.device("cpu"), seed=1)
        assert all(w in str(e.value) for w in ("--img_size=64", "img_size=32", "no .meta", policy.RUN_RECORD)), e.value
        assert sorted(os.listdir(folder)) == before

        record = os.path.join(folder, policy.RUN_RECORD)
        saved = open(record, "rb").read()
        for damage in (saved[: len(saved) // 2], b'{"img_size": "32"}', b"[32]"):
            with open(record, "wb") as fh:
                fh.write(damage)
            for size in (64, 32):
                with pytest.raises(policy.RunRecordDamaged) as e:
                    train(_config("tf", iteration=1, epoch=2, img_size=size), torch.device("cpu"), seed=1)
                assert repr(record) in str(e.value) and "damaged" in str(e.value), e.value
                assert sorted(os.listdir(folder)) == before
        with open(record, "wb") as fh:
            fh.write(saved)
        out = train(_config("tf", iteration=1, epoch=3), torch.device("cpu"), seed=1)
        assert [h["counter"] for h in out["steps"]] == [2]


def test_a_folder_without_a_run_record_resumes_as_before(tmp_path):
    """An official checkpoint folder, or a run of an earlier version: no record, no .meta, no
    other checkpoint - nothing records the size, and the resume at another size goes on as
    before (the light model's weights restore at any size)."""
    from torch_port.train import train
    with demo_folder(str(tmp_path)):
        folder = _port_run_as_tf_checkpoint(str(tmp_path))
        os.remove(os.path.join(folder, policy.RUN_RECORD))
        out = train(_config("tf", iteration=1, epoch=3, img_size=64), torch.device("cpu"), seed=1)
        assert [h["counter"] for h in out["steps"]] == [2]


def test_the_run_record_goes_with_the_older_run_and_is_each_runs_own(tmp_path):
    """--resume False moves the record aside with the older run's checkpoints (the new run,
    at another size, writes its own); a record alone (a run killed before its first save) is no
    older run to move: the next run from scratch replaces it. Only the folder's owner writes it."""
    from torch_port.train import train
    with demo_folder(str(tmp_path)):
        train(_config("rr", iteration=1), torch.device("cpu"), seed=1)
        folder = glob.glob(os.path.join(str(tmp_path), "ck_rr", "*"))[0]
        train(_config("rr", iteration=1, img_size=64), torch.device("cpu"), seed=1, resume=False)
        (aside,) = glob.glob(os.path.join(folder, policy.PREVIOUS + "*"))
        for where, size in ((aside, 32), (folder, 64)):
            with open(os.path.join(where, policy.RUN_RECORD)) as fh:
                assert json.load(fh)["img_size"] == size, where

    alone = tmp_path / "alone"
    alone.mkdir()
    with open(alone / policy.RUN_RECORD, "w") as fh:
        json.dump({"img_size": 32}, fh)
    with run_lock.acquire(str(alone)) as owner:
        assert policy.move_previous_run(str(alone), owner, log=lambda m: None) is None
        policy.write_run_record(str(alone), opt.config_from(img_size=48), "test", owner)
    with open(alone / policy.RUN_RECORD) as fh:
        assert json.load(fh)["img_size"] == 48
    with pytest.raises(run_lock.NotOwner):
        policy.write_run_record(str(alone), opt.config_from(img_size=48), "test", None)


def test_morph_refuses_to_resume_at_another_image_size(tmp_path):
    """Morph's resume passed no config, so a light Morph run at 32 px resumed at 64 px and trained
    another model; now refused (exit 2 naming both sizes), nothing changed. Its run record says
    morph wrote it."""
    from morph.train import train
    from torch_port.checkpoint import CheckpointMismatch
    from ugatit_common.demo_data import make_demo_dataset
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=2, n_test=1)

    def cfg(epoch, size):
        return opt.config_from(dataset="demo", epoch=epoch, iteration=1, print_freq=1000, save_freq=1000,
                               decay_flag=False, augment_flag=False, morph_config="A", light=True, ch=2, n_dis=4,
                               img_size=size, checkpoint_dir=os.path.join(root, "ck"),
                               result_dir=os.path.join(root, "r"), log_dir=os.path.join(root, "l"),
                               sample_dir=os.path.join(root, "s"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg(1, 32), seed=1, base=root, log=lambda m: None)
        (folder,) = glob.glob(os.path.join(root, "ck", "*"))
        with open(os.path.join(folder, policy.RUN_RECORD)) as fh:  # its record names the command that wrote it
            assert json.load(fh)["written_by"] == "morph"  # (MorphTrainer.WRITER; the port's says torch_port)
        before = sorted(os.listdir(folder))
        with pytest.raises(CheckpointMismatch, match=r"--img_size=64 .*img_size=32"):
            train(cfg(2, 64), seed=1, base=root, log=lambda m: None)
        assert sorted(os.listdir(folder)) == before
        out = train(cfg(2, 32), seed=1, base=root, log=lambda m: None)
        assert [h["counter"] for h in out["history"]] == [2]
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(root, ignore_errors=True)


def test_a_tf_checkpoints_own_meta_gives_its_image_size(tmp_path):
    """A TF checkpoint whose own .meta records the size (no other checkpoint, no run record, as an
    official run's folder): that size, said as the .meta's, and a resume at another is refused."""
    from parity_tests.conftest import GOLDEN
    from parity_tests.test_config_inference import _meta, _synthetic
    folder = tmp_path / "run"
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    prefix = str(folder / "UGATIT.model-3")
    _meta(folder / "UGATIT.model-3.meta", _synthetic(False, sizes=(24, 48), input_size=48))
    assert policy.run_image_size(prefix) == (48, "its .meta graph records img_size=48")
    found = policy.inventory(str(folder))[0]
    assert policy.other_image_size(found, str(folder), 48) is None
    said = policy.other_image_size(found, str(folder), 64)
    assert said and said.startswith("--img_size=64 contradicts checkpoint") and "resume with --img_size 48" in said


def test_a_port_checkpoint_beside_a_tf_one_without_its_meta_gives_the_image_size(tmp_path):
    """A TF checkpoint without its .meta, and a port checkpoint of the same run beside it (the port
    continued the run): the size its weights' run config records, said as that file's."""
    import numpy as np
    from safetensors.numpy import save_file

    from parity_tests.conftest import GOLDEN
    folder = tmp_path / "run"
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    save_file({"w": np.zeros(1, np.float32)}, str(folder / "UGATIT.model-5.safetensors"),
              metadata={"config": json.dumps({"img_size": 40})})
    assert policy.run_image_size(str(folder / "UGATIT.model-3")) == (
        40, "it has no .meta, and the run config in UGATIT.model-5.safetensors, of the same run, records img_size=40")

"""A training run refused before it wrote anything leaves no folder it made behind.

Every trainer takes (creates and locks) its checkpoint, sample and log folders before it looks
into them, so a run then refused - a checkpoint of another kind or size in its folder - left
new empty `samples/`, `logs/` (and checkpoint) folders. Now the folders the run made that are
still empty go when it ends by an exception (run_lock.RunLocks.release(failed=True)); a folder
that existed before, or one holding anything, stays. The port and Morph cases need no TensorFlow;
tf_reference shares the same RunLocks exit."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from parity_tests.conftest import GOLDEN
from parity_tests.test_morph_folder_kind import ARGS as MORPH_ARGS
from parity_tests.test_morph_folder_kind import _morph_folder
from parity_tests.test_nonfinite_and_flags import error_line
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import run_lock

# the golden bundle's official checkpoint: light, ch 4, n_dis 5, 64 px
PORT_ARGS = ["--phase", "train", "--dataset", "g", "--light", "True", "--img_size", "64", "--ch", "4", "--n_dis",
             "5", "--augment_flag", "False", "--iteration", "1", "--epoch", "1", "--device", "cpu", "--threads", "1"]


def _folders(root):
    return sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))


def _demo(root):
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(root, "g", size=64, n_train=1, n_test=1)


def test_a_refused_morph_run_removes_the_folders_it_made(tmp_path, monkeypatch, capsys):
    from morph.__main__ import main as morph_main
    root = str(tmp_path)
    _demo(root)
    folder = _morph_folder(root)
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)  # a TF checkpoint: refused for its kind
    monkeypatch.chdir(root)
    before = _folders(root)
    capsys.readouterr()
    assert morph_main(MORPH_ARGS) == 2
    assert "not a Morph-UGATIT checkpoint" in error_line(capsys.readouterr().err)
    assert _folders(root) == before  # no empty samples/ or logs/ left


def test_a_refused_port_run_removes_the_folders_it_made_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    from torch_port.__main__ import main as port_main
    root = str(tmp_path)
    _demo(root)
    cfg = opt.config_from(light=True, dataset="g", ch=4, n_dis=5, img_size=64, augment_flag=False)
    folder = os.path.join(root, "checkpoint", opt.model_dir(cfg))
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    with open(os.path.join(folder, policy.RUN_RECORD), "w") as fh:  # its run was at 32 px: refused at 64
        json.dump({"written_by": "tf_reference", "img_size": 32, "options": dict(cfg, img_size=32)}, fh)
    os.makedirs(os.path.join(root, "logs"))  # a folder that was there before stays, empty or not
    monkeypatch.chdir(root)
    before = _folders(root)
    capsys.readouterr()
    assert port_main(PORT_ARGS) == 2
    line = error_line(capsys.readouterr().err)
    assert "img_size" in line, line
    assert _folders(root) == before
    assert os.path.isdir(os.path.join(root, "logs"))


def test_a_failed_run_keeps_a_made_folder_holding_anything(tmp_path):
    """Only empty folders go: one the run wrote into (or someone else did) stays, with its file."""
    made, kept = tmp_path / "a" / "made", tmp_path / "b" / "kept"
    with pytest.raises(RuntimeError):
        with run_lock.RunLocks([run_lock.acquire(str(made), "--sample_dir"),
                                run_lock.acquire(str(kept), "--log_dir")]):
            (kept / "events.out").write_text("x")
            raise RuntimeError("refused")
    assert not (tmp_path / "a").exists()  # made, with its parent, and empty: gone
    assert os.listdir(kept) == ["events.out"]
    # a run that ends well keeps its folders, empty or not
    with run_lock.RunLocks([run_lock.acquire(str(made), "--sample_dir")]):
        pass
    assert made.is_dir()


def test_a_finished_run_keeps_every_folder_it_made_even_an_empty_one(tmp_path, monkeypatch, capsys):
    """Only a failed run's empty folders go: a run that finished keeps its samples folder though
    it holds no picture (--print_freq beyond the run's one iteration: the official loop wrote none)."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path)
    _demo(root)
    cfg = opt.config_from(light=True, dataset="g", ch=4, n_dis=5, img_size=64, augment_flag=False)
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert port_main(PORT_ARGS + ["--print_freq", "1000", "--save_freq", "1000"]) == 0, capsys.readouterr().err
    samples = os.path.join(root, "samples", opt.model_dir(cfg))
    assert os.path.isdir(samples) and not os.listdir(samples)


def test_a_run_folder_where_a_file_is_says_so_and_keeps_the_file(tmp_path, monkeypatch, capsys):
    """A file where the run's checkpoint folder goes (`checkpoint/<model_dir>` a file): one error
    line saying a file is there, not a folder (was: the OS's bare 'is not writable: File exists'
    from taking the run lock), exit 2, the file untouched and no samples/ or logs/ left."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path)
    _demo(root)
    cfg = opt.config_from(light=True, dataset="g", ch=4, n_dis=5, img_size=64, augment_flag=False)
    os.makedirs(os.path.join(root, "checkpoint"))
    mine = os.path.join(root, "checkpoint", opt.model_dir(cfg))
    with open(mine, "w") as fh:
        fh.write("mine")
    monkeypatch.chdir(root)
    before = _folders(root)
    capsys.readouterr()
    assert port_main(PORT_ARGS) == 2
    line = error_line(capsys.readouterr().err)
    assert line.endswith("is not writable: a file is there, not a folder") and "--checkpoint_dir" in line, line
    assert _folders(root) == before
    with open(mine) as fh:
        assert fh.read() == "mine"

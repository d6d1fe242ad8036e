"""The test phase with `--checkpoint_dir` restores the TF checkpoint the folder's `checkpoint` state
file names, as the official `load` does (TF users pick a test checkpoint by editing that file), not
the newest by step - unless the port continued the run past it (README "Checkpoint policy")."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

import weights_convert as wc
from parity_tests.conftest import GOLDEN
from parity_tests.test_translate_checkpoint import _expected
from ugatit_common import options as opt
from ugatit_common import tf_checkpoint as tfc

OFFICIAL_DIR = "UGATIT_light_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing"  # the golden run's model_dir
OLD, NEW = "UGATIT.model-500", "UGATIT.model-1000"  # the golden init and final weights, at two steps


def _add(folder, source, name):
    """Copy the golden `source` checkpoint (init / final) into `folder` as the prefix `name`."""
    os.makedirs(folder, exist_ok=True)
    src = os.path.join(GOLDEN, source)
    step = "UGATIT.model-0" if source == "init" else "UGATIT.model-3"
    for ext in (".index", ".data-00000-of-00001"):
        shutil.copyfile(os.path.join(src, step + ext), os.path.join(folder, name + ext))


def _run_folder(root, named=OLD):
    """`root/checkpoint/<model_dir>/` holding steps 500 and 1000, its state file naming `named`."""
    folder = os.path.join(str(root), "checkpoint", OFFICIAL_DIR)
    _add(folder, "init", OLD)
    _add(folder, "final", NEW)
    tfc.write_checkpoint_state(folder, named, [OLD, NEW])
    return folder


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "p.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return folder


def _port_test(root, photo, out, capsys):
    """The port's test phase with `--checkpoint_dir root/checkpoint` (in process): (a2b picture, stdout)."""
    from torch_port import translate
    cfg = opt.validate(opt.config_from(phase="test", light=True, dataset="g", ch=4, n_dis=5, img_size=64,
                                       checkpoint_dir=os.path.join(str(root), "checkpoint"), result_dir=str(out)))
    capsys.readouterr()
    translate.test(cfg, torch.device("cpu"), input_path=str(photo))
    said = capsys.readouterr().out
    return cv2.imread(os.path.join(str(out), OFFICIAL_DIR, "a2b", "p.png"))[:, :, ::-1], said


def _notes(said):
    return [ln for ln in said.splitlines() if ln.startswith("note:")]


def test_the_port_restores_the_step_the_state_file_names(tmp_path, photo, capsys):
    """Before: the newest step (1000) was translated with although the state file names 500, the
    one the official code restores - another picture, silently. Now step 500, with one note; a
    PyTorch checkpoint newer than the named step (the port continued the run) keeps the newest; a
    state file naming the newest: no note."""
    folder = _run_folder(tmp_path)
    old = _expected(os.path.join(GOLDEN, "init"), photo / "p.png", img_size=64)
    new = _expected(os.path.join(GOLDEN, "final"), photo / "p.png", img_size=64)
    assert not np.array_equal(old, new)  # the two steps translate differently

    got, said = _port_test(tmp_path, photo, tmp_path / "r1", capsys)
    np.testing.assert_array_equal(got, old)
    notes = _notes(said)
    assert len(notes) == 1, said
    assert f"`checkpoint` file names {OLD} (step 500)" in notes[0], notes[0]
    assert "newest checkpoint in" in notes[0] and f"{NEW} (step 1000, TensorFlow)" in notes[0], notes[0]
    assert "--checkpoint" in notes[0] and f'model_checkpoint_path: "{NEW}"' in notes[0], notes[0]

    # the state file names the newest: as before, no note
    tfc.write_checkpoint_state(folder, NEW, [OLD, NEW])
    got, said = _port_test(tmp_path, photo, tmp_path / "r2", capsys)
    np.testing.assert_array_equal(got, new)
    assert not _notes(said), said

    # the port continued the run after TF's last save (step 500): its step 1500 is newer, and used
    tfc.write_checkpoint_state(folder, OLD, [OLD])
    os.remove(os.path.join(folder, NEW + ".index"))
    os.remove(os.path.join(folder, NEW + ".data-00000-of-00001"))
    capsys.readouterr()
    assert wc.main(["tf2torch", os.path.join(GOLDEN, "final"), str(tmp_path / "conv.safetensors"),
                    "--img_size", "64"]) == 0
    os.replace(tmp_path / "conv.safetensors", os.path.join(folder, "UGATIT_light.model-1500.safetensors"))
    got, said = _port_test(tmp_path, photo, tmp_path / "r3", capsys)
    np.testing.assert_array_equal(got, new)
    assert not _notes(said), said
    assert "UGATIT_light.model-1500 (PyTorch)" in said, said


def test_an_unreadable_named_checkpoint_leaves_the_newest(tmp_path, photo, capsys):
    """The state file names step 500, whose data file is truncated: the newest usable (1000) is
    used as before, and the named one is said to be unusable (before: not a word of it)."""
    folder = _run_folder(tmp_path)
    with open(os.path.join(folder, OLD + ".data-00000-of-00001"), "r+b") as fh:
        fh.truncate(100)
    got, said = _port_test(tmp_path, photo, tmp_path / "r", capsys)
    np.testing.assert_array_equal(got, _expected(os.path.join(GOLDEN, "final"), photo / "p.png", img_size=64))
    assert not _notes(said), said
    assert f"checkpoint {OLD} (TensorFlow) in {folder}, which its `checkpoint` file names, is unusable (" in said, said


def _tf_test(root, capsys, monkeypatch):
    """tf_reference's test phase in `root` (dataset/g/testA/a.png): (a2b picture, stdout)."""
    from tf_reference import train as phases
    monkeypatch.chdir(root)
    cfg = opt.validate(opt.config_from(phase="test", light=True, dataset="g", ch=4, n_dis=5, img_size=64,
                                       checkpoint_dir="checkpoint", result_dir="results"))
    capsys.readouterr()
    phases.test(cfg)
    said = capsys.readouterr().out
    return cv2.imread(os.path.join(str(root), "results", OFFICIAL_DIR, "a2b", "a.png")), said


@pytest.mark.tf
def test_tf_reference_restores_the_step_the_state_file_names(tmp_path, capsys, monkeypatch):
    """tf_reference's test phase restored the newest step (1000) though the state file names 500;
    now the named one, with the note: its pictures equal those of a folder holding step 500 alone."""
    rng = np.random.default_rng(7)
    for root in ("both", "alone"):
        os.makedirs(tmp_path / root / "dataset" / "g" / "testA")
        cv2.imwrite(str(tmp_path / root / "dataset" / "g" / "testA" / "a.png"),
                    rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) if root == "both" else
                    cv2.imread(str(tmp_path / "both" / "dataset" / "g" / "testA" / "a.png")))
    _run_folder(tmp_path / "both")
    alone = os.path.join(str(tmp_path / "alone"), "checkpoint", OFFICIAL_DIR)
    _add(alone, "init", OLD)
    tfc.write_checkpoint_state(alone, OLD)
    got, said = _tf_test(tmp_path / "both", capsys, monkeypatch)
    assert f" [*] Success to read {OLD}" in said, said
    notes = _notes(said)
    assert len(notes) == 1 and f"`checkpoint` file names {OLD} (step 500)" in notes[0], said
    want, said = _tf_test(tmp_path / "alone", capsys, monkeypatch)
    assert not _notes(said), said
    np.testing.assert_array_equal(got, want)


def test_a_training_run_resumes_from_the_newest_whatever_the_state_file_names(tmp_path):
    """The state file's choice is the test phase's only (need="weights"): a training run resumes
    from the newest complete checkpoint by step, as the official trainer continues the newest -
    never from an older step the state file happens to name (that would train over later steps)."""
    from ugatit_common import checkpoint_policy as policy
    folder = _run_folder(tmp_path)  # state file names step 500; step 1000 is newest
    for name in (OLD, NEW):
        open(os.path.join(folder, name + ".meta"), "wb").close()  # complete for training (.meta by name)
    logged = []
    found, step = policy.choose(folder, lambda f: f.step, need="train", log=logged.append)
    assert step == 1000 and not logged, logged
    found, step = policy.choose(folder, lambda f: f.step, need="weights", log=logged.append)
    assert step == 500 and len(logged) == 1 and logged[0].startswith("note:"), logged


def test_a_named_checkpoint_without_its_data_is_never_loaded_and_said_once(tmp_path):
    """The state file names step 500, whose data file is gone, and the newest (1000) cannot be
    read: the loader is never asked for 500 (its files say it is incomplete), the next usable
    (100) is used, and the named one is said unusable once, with what it lacks."""
    from ugatit_common import checkpoint_policy as policy
    folder = _run_folder(tmp_path)
    _add(folder, "init", "UGATIT.model-100")
    os.remove(os.path.join(folder, OLD + ".data-00000-of-00001"))
    asked, logged = [], []

    def load(f):
        asked.append(f.step)
        if f.step == 1000:
            raise ValueError("unreadable")
        return f.step
    found, step = policy.choose(folder, load, need="weights", log=logged.append)
    assert step == 100 and asked == [1000, 100], asked
    about_old = [ln for ln in logged if OLD in ln]
    assert len(about_old) == 1 and f"no {OLD}.data-00000-of-00001" in about_old[0], logged
    assert any(NEW in ln and "unreadable" in ln for ln in logged), logged

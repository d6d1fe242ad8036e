"""A lone `--input` that is not a decodable image: the port's test phase (one image at a time and
`--batch`), Morph interpolate and Morph translate printed `warning: skipping X` and then `error:
... X` (or, in Morph, `no readable input image`, without the reason). Now: one `error:` line naming
X and why, exit 2, nothing written. Several inputs of which some are unreadable still warn once per
skipped file. Tiny models (light, 32 px, ch 2, n_dis 4)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from parity_tests.test_nonfinite_and_flags import CFG, MORPH_CFG, snapshot
from parity_tests.test_outputs_guard import _save_morph, _save_port
from ugatit_common.demo_data import make_demo_dataset

REASON = "not a decodable image"


from parity_tests.test_morph import _one_thread  # noqa: E402,F401 - autouse: one CPU thread per test


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """dataset/t (testA: 2 pictures), a port checkpoint `port`, a Morph config-C one `morph`, and
    `bad.png`, a file that is no image."""
    from morph.model import MorphUGATIT
    from torch_port import build_ugatit
    root = str(tmp_path_factory.mktemp("lone"))
    make_demo_dataset(root, "t", size=32, n_train=1, n_test=2)
    torch.manual_seed(0)
    _save_port(os.path.join(root, "port"), build_ugatit(CFG), CFG)
    _save_morph(os.path.join(root, "morph"), MorphUGATIT(MORPH_CFG))
    with open(os.path.join(root, "bad.png"), "wb") as fh:
        fh.write(b"not an image")
    return root


def _commands(inp):
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    test = ["--phase", "test", "--input", inp, "--device", "cpu", "--result_dir", "res", "--checkpoint", "port"]
    morph = ["--checkpoint", "morph", "--input", inp, "--device", "cpu", "--result_dir", "mres"]
    return [(port_main, test), (port_main, test + ["--batch", "2"]),
            (morph_main, ["interpolate", "--steps", "2", "--samples", "1"] + morph),
            (morph_main, ["translate", "--direction", "a2b"] + morph)]


def _lines(err, word):
    return [ln for ln in err.splitlines() if word in ln]


def test_a_lone_unreadable_input_is_one_error_line(world, tmp_path, monkeypatch, capsys):
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    for main, argv in _commands("bad.png"):
        before = snapshot(root)
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        errors = _lines(err, "error:")
        assert rc == 2, (argv, err)
        assert len(errors) == 1 and "bad.png" in errors[0] and REASON in errors[0], (argv, err)
        assert not _lines(err, "warning:") and "Traceback" not in err, (argv, err)
        assert snapshot(root) == before, argv  # nothing written
        assert not os.path.exists("res") and not os.path.exists("mres"), argv


def test_several_inputs_still_warn_once_per_skipped_file(world, tmp_path, monkeypatch, capsys):
    """A folder holding the bad file and a picture: the bad one is named in one warning and the
    picture translated (exit 0); a folder of two bad files: a warning for each, then the error."""
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    os.makedirs("mixed")
    os.makedirs("allbad")
    shutil.copy(os.path.join("dataset", "t", "testA", sorted(os.listdir(os.path.join("dataset", "t", "testA")))[0]),
                os.path.join("mixed", "good.png"))
    for folder in ("mixed", "allbad"):
        shutil.copy("bad.png", os.path.join(folder, "bad.png"))
    shutil.copy("bad.png", os.path.join("allbad", "worse.png"))
    for main, argv in _commands("mixed"):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, (argv, err)
        warned = _lines(err, "warning: skipping")
        assert len(warned) == 1 and "bad.png" in warned[0] and REASON in warned[0], (argv, err)
        assert not _lines(err, "error:"), (argv, err)
    for main, argv in _commands("allbad"):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert len(_lines(err, "warning: skipping")) == 2 and len(_lines(err, "error:")) == 1, (argv, err)
        # the error says the same in every command: how many, and the first one with its reason
        # (Morph said "cannot read image 'allbad/bad.png, allbad/worse.png': no readable input image")
        [line] = _lines(err, "error:")
        assert "none of the 2" in line and "bad.png" in line and REASON in line, (argv, err)


def test_the_test_phase_makes_no_folder_for_a_direction_without_pictures(world, tmp_path, monkeypatch, capsys):
    """The data set's test phase with testA pictures and an empty testB: the results hold a2b/ and
    the page, no empty b2a/ folder for pictures that never were."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    for f in os.listdir(os.path.join("dataset", "t", "testB")):
        os.remove(os.path.join("dataset", "t", "testB", f))
    capsys.readouterr()
    rc = port_main(["--phase", "test", "--device", "cpu", "--result_dir", "res", "--checkpoint", "port"])
    assert rc == 0, capsys.readouterr().err
    [run] = os.listdir("res")  # the run's model_dir
    assert os.listdir(os.path.join("res", run, "a2b")) and not os.path.exists(os.path.join("res", run, "b2a"))


def test_a_folder_of_files_the_glob_does_not_take_says_so(world, tmp_path, monkeypatch, capsys):
    """`--input` a folder whose files have no extension (a camera's `IMG_0001`) or are hidden
    (`.photo.png`): the port's test phase reads the official `*.*` and found none, but said "the
    folder holds no files" about a folder holding two; now it says how many files it holds and why
    none is read (one `error:` line, exit 2, nothing written). An empty folder still says so."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    picture = os.path.join("dataset", "t", "testA", sorted(os.listdir(os.path.join("dataset", "t", "testA")))[0])
    os.makedirs("camera")
    shutil.copy(picture, os.path.join("camera", "IMG_0001"))
    shutil.copy(picture, os.path.join("camera", ".hidden.png"))
    os.makedirs(os.path.join("empty", "sub"))  # a subfolder is no file: the folder still holds none
    for folder, needle in (("camera", "none of the folder's 2 file(s) is named *.*"), ("empty", "holds no files")):
        capsys.readouterr()
        rc = port_main(["--phase", "test", "--input", folder, "--device", "cpu", "--result_dir", "res",
                        "--checkpoint", "port"])
        err = capsys.readouterr().err
        assert rc == 2 and len(_lines(err, "error:")) == 1 and needle in err, err
        assert not os.path.exists("res")


def test_an_input_that_is_no_regular_file_is_not_called_missing(world, tmp_path, monkeypatch, capsys):
    """`--input /dev/null` (or a FIFO) exists: every command said "no such file or folder" / "no such
    file"; now one `error:` line saying it is not a (regular) file, exit 2, nothing written."""
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    for main, argv in _commands(os.devnull):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        [line] = _lines(err, "error:")
        assert rc == 2 and os.devnull in line and "not a" in line and "no such" not in line, (argv, err)
        assert not os.path.exists("res") and not os.path.exists("mres"), argv


def test_a_pattern_as_input_is_said_to_be_one(world, tmp_path, monkeypatch, capsys):
    """`--input 'dataset/t/testA/*.png'` (quoted, or typed in Windows' cmd, which expands no
    pattern): every command said only "no such file or folder" about a folder of pictures; now
    the line says the pattern is not expanded and to give the folder (exit 2, nothing written)."""
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    for main, argv in _commands(os.path.join("dataset", "t", "testA", "*.png")):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        [line] = _lines(err, "error:")
        assert rc == 2 and "*.png" in line and "pattern is not expanded" in line, (argv, err)
        assert not os.path.exists("res") and not os.path.exists("mres"), argv


def test_batch_warnings_start_their_line_in_a_log_file(world, tmp_path, monkeypatch, capsys):
    """`--batch` with stderr going to a file (a job's log, CI): the progress bar was drawn there
    too, so each `warning: skipping X` line came after the bar's "\\ra2b:  50%|..." on the same
    line (`grep '^warning:'` found none). The bar is drawn on a terminal only, as training's and
    the data check's bars: every line of such a log is a whole message."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    os.makedirs("mixed")
    shutil.copy(os.path.join("dataset", "t", "testA", sorted(os.listdir(os.path.join("dataset", "t", "testA")))[0]),
                os.path.join("mixed", "good.png"))
    for name in ("bad.png", "worse.png"):
        shutil.copy("bad.png", os.path.join("mixed", name))
    capsys.readouterr()
    argv = ["--phase", "test", "--input", "mixed", "--device", "cpu", "--result_dir", "res", "--checkpoint", "port",
            "--batch", "2"]
    assert port_main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "img/s" not in err, err
    warned = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warned) == 2 and all(ln.startswith("warning: skipping mixed/") for ln in warned), err


def test_a_folder_or_dead_link_among_the_inputs_is_said_not_skipped_silently(world, tmp_path, monkeypatch, capsys):
    """An `--input` folder holding a sub-folder or a link to a missing file named like a picture
    (`x.png/`, `gone.png`): every command skipped them without a word (the official test phase
    would stop on them; the training data's reader says them). Now one `warning: skipping` line
    each, naming what it is; the pictures are translated."""
    root = str(tmp_path / "w")
    shutil.copytree(world, root)
    monkeypatch.chdir(root)
    os.makedirs(os.path.join("mixed", "x.png"))
    os.symlink(os.path.join(root, "missing.png"), os.path.join("mixed", "gone.png"))
    shutil.copy(os.path.join("dataset", "t", "testA", sorted(os.listdir(os.path.join("dataset", "t", "testA")))[0]),
                os.path.join("mixed", "good.png"))
    for main, argv in _commands("mixed"):
        capsys.readouterr()
        assert main(argv) == 0, argv
        warned = _lines(capsys.readouterr().err, "warning: skipping")
        assert len(warned) == 2, (argv, warned)
        assert any("x.png" in ln and "a folder" in ln for ln in warned), warned
        assert any("gone.png" in ln and "a link that leads to no file" in ln for ln in warned), warned

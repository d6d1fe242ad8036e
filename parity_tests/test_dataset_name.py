"""`--dataset` is the name of a folder under ./dataset/ (README "Command lines": the layout
`dataset/<name>/{trainA,trainB,testA,testB}` relative to the working directory). Given a path
(`/abs/x`, `a/b`, `../x`) the trainers trained on it - data the official code, which globs
`./dataset/<name>/trainA/*.*`, would not find - and nested the run folders
(`checkpoint/UGATIT_light_/abs/x_lsgan.../`). Now each command (torch_port, tf_reference, Morph;
train and test phases) stops before any work: one `error:` line naming --dataset and saying how to
use data elsewhere (a link dataset/<name> -> the folder), exit 2, nothing made."""
from __future__ import annotations

import os

import pytest

from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

SMALL = ["--light", "True", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--iteration", "1", "--epoch", "1",
         "--augment_flag", "False"]


def _data_elsewhere(tmp_path):
    """A data set outside ./dataset/ (tmp/data/x/trainA...) and the working directory tmp/work."""
    make_demo_dataset(str(tmp_path / "data"), "x", size=32, n_train=1, n_test=1)
    os.makedirs(tmp_path / "work")
    return str(tmp_path / "data" / "dataset" / "x")


def _one_error(err: str, value: str):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error: --dataset=" in lines[0] and repr(value) in lines[0], err
    assert "ln -s" in lines[0] and "dataset/" in lines[0], lines[0]
    return lines[0]


def _torch(argv):
    from torch_port.__main__ import main
    return main(argv)


def _tf(argv):
    from tf_reference.__main__ import _main  # the flags are checked before TensorFlow is imported
    return _main(argv)


def _morph(argv):
    from morph.__main__ import main
    return main(argv)


@pytest.mark.parametrize("command", ["torch_port", "tf_reference", "morph"])
@pytest.mark.parametrize("phase", ["train", "test"])
def test_a_path_as_dataset_is_one_error_line(command, phase, tmp_path, monkeypatch, capsys):
    where = _data_elsewhere(tmp_path)
    monkeypatch.chdir(tmp_path / "work")
    for value in (where, os.path.relpath(where), "sub/x", "..", "."):
        if command == "morph":
            argv = (["train", "--config", "A"] if phase == "train" else
                    ["translate", "--config", "A", "--input", where, "--direction", "a2b"]) + ["--dataset", value] + SMALL
            run = _morph
        else:
            argv = ["--phase", phase, "--dataset", value] + SMALL
            run = _torch if command == "torch_port" else _tf
        capsys.readouterr()
        rc = run(argv)
        err = capsys.readouterr().err
        assert rc == 2, (value, err[-2000:])
        _one_error(err, value)
        assert os.listdir(tmp_path / "work") == [], (value, os.listdir(tmp_path / "work"))


def test_a_name_passes_and_the_hint_names_the_link(tmp_path):
    assert opt.check_dataset_name("selfie2anime") == "selfie2anime"
    assert opt.check_dataset_name("my.data-set_2") == "my.data-set_2"
    with pytest.raises(opt.OptionError) as e:
        opt.check_dataset_name("/data/horse2zebra")
    assert "ln -s /data/horse2zebra dataset/horse2zebra, then --dataset horse2zebra" in str(e.value), e.value


def test_morph_hint_names_its_data_root(tmp_path):
    """Morph reads <--data_root>/dataset/<name>/: its refusal names that folder, not ./dataset/."""
    with pytest.raises(opt.OptionError) as e:
        opt.check_dataset_name("/data/horse2zebra", "/srv/data")
    assert "under /srv/data/dataset/" in str(e.value), e.value
    assert "ln -s /data/horse2zebra /srv/data/dataset/horse2zebra, then --dataset horse2zebra" in str(e.value), e.value


def test_morphs_command_line_names_its_data_root(tmp_path, monkeypatch, capsys):
    """The same through `python -m morph train --data_root R`: the line names R/dataset/, the
    folder Morph reads (the working directory's ./dataset/ is not where its data go)."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    rc = _morph(["train", "--config", "A", "--data_root", str(root), "--dataset", "/data/horse2zebra"] + SMALL)
    line = _one_error(capsys.readouterr().err, "/data/horse2zebra")
    assert rc == 2 and f"under {root}/dataset/" in line and f"under --data_root {root}" in line, line
    assert f"ln -s /data/horse2zebra {root}/dataset/horse2zebra" in line, line


def test_an_empty_or_nul_name_is_refused_and_a_hint_never_links_to_dot(tmp_path):
    """`--dataset ""` (an unset variable) and a name holding NUL are no folder names; `x/..` as a
    path has no name of its own to link: the hint says `<name>`, never `dataset/.`."""
    for bad in ("", "a\0b"):
        with pytest.raises(opt.OptionError, match="not a path"):
            opt.check_dataset_name(bad)
    with pytest.raises(opt.OptionError) as e:
        opt.check_dataset_name("x/..")
    assert "then --dataset <name>" in str(e.value) and "dataset/." not in str(e.value), e.value

"""Morph's `--init_from` given an official TF checkpoint as the port's `--checkpoint` takes one: its
folder, its prefix or one of its files (.index, .data-*); and a TF checkpoint where a Morph one is
needed (interpolate / translate / export `--checkpoint`) named for what it is. Tiny model: the
official golden light 64 px checkpoint (ch 4), no TensorFlow needed (the numpy bundle reader)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from morph import MorphUGATIT
from morph.__main__ import main as morph_main
from morph.train import init_from_ugatit
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

GOLDEN_NET = dict(light=True, ch=4, n_res=4, n_dis=5, img_size=64, sn=True, smoothing=True)  # its record.json


from parity_tests.test_morph import _one_thread  # noqa: E402,F401 - autouse: one CPU thread per test


def _started_from(source: str) -> dict:
    torch.manual_seed(0)  # the latent variables a UGATIT checkpoint lacks start alike
    m = MorphUGATIT(dict(GOLDEN_NET, morph_config="C"))
    init_from_ugatit(m, source)
    return m.state_dict()


def test_init_from_takes_a_tf_prefix_or_one_of_its_files(tmp_path, capsys):
    """A TF folder whose `checkpoint` file names a step that is not there is refused by the TF
    reader with "give the prefix of the one you want (<folder>/UGATIT.model-3)"; --init_from took
    only a folder, so that advice ended in "no UGATIT checkpoint found there". Now the prefix, its
    .index and its .data file start the run from that checkpoint: every tensor equal to what the
    intact folder gives (same seed for the fresh latent variables), and the run says TensorFlow."""
    from parity_tests.conftest import GOLDEN
    folder = tmp_path / "tf"
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    want = _started_from(str(folder))
    state = folder / "checkpoint"
    state.write_text(state.read_text().replace("model-3", "model-5"))  # names a step the folder lacks
    prefix = folder / "UGATIT.model-3"
    with pytest.raises(opt.OptionError, match="give the prefix of the one you want") as e:
        _started_from(str(folder))
    assert str(prefix) in str(e.value)
    for source in (prefix, f"{prefix}.index", f"{prefix}.data-00000-of-00001"):
        got = _started_from(str(source))
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), (source, k)

    root = str(tmp_path / "run")
    make_demo_dataset(root, "demo", 64, n_train=1, n_test=1)
    flags = ["--dataset", "demo", "--img_size", "64", "--ch", "4", "--n_dis", "5", "--light", "True",
             "--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
             "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples"),
             "--device", "cpu"]
    capsys.readouterr()
    assert morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--data_root", root,
                       "--init_from", f"{prefix}.index"] + flags) == 0
    assert f"initialised from UGATIT {prefix}.index (TensorFlow;" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["prefix", "index"])
def test_a_tf_checkpoint_given_where_a_morph_one_is_needed_is_named(tmp_path, capsys, given):
    """interpolate --checkpoint <TF prefix> said "checkpoint ... does not exist (train first)", though
    it does: now one error line says it is an official TensorFlow checkpoint, not a Morph one, before
    anything is written."""
    from parity_tests.conftest import GOLDEN
    prefix = os.path.join(GOLDEN, "final", "UGATIT.model-3")
    source = prefix if given == "prefix" else prefix + ".index"
    image_dir = tmp_path / "in"
    make_demo_dataset(str(image_dir), "demo", 64, n_train=1, n_test=1)
    out = tmp_path / "out"
    capsys.readouterr()
    assert morph_main(["interpolate", "--checkpoint", source, "--input",
                       str(image_dir / "dataset" / "demo" / "testA"), "--result_dir", str(out),
                       "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an official TensorFlow UGATIT checkpoint, not a Morph-UGATIT checkpoint" in err[0], err
    assert not out.exists()


def test_a_folder_is_never_taken_for_a_tf_prefix(tmp_path):
    """`morph.train.tf_prefix` names a TF prefix or one of its files; a folder is never one, even
    beside a file of its name + `.index` (`run/` and `run.index`): the folder is judged as a folder
    (here: it holds no checkpoint), not as the TF checkpoint `run`."""
    from morph.train import checkpoint_kind, tf_prefix
    (tmp_path / "run").mkdir()
    (tmp_path / "run.index").write_bytes(b"")
    assert tf_prefix(str(tmp_path / "run")) is None
    assert checkpoint_kind(str(tmp_path / "run")) == ("none", None)

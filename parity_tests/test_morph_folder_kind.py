"""`python -m morph train` resuming from a checkpoint folder that holds a TF checkpoint (a
tf_reference / official run's, e.g. copied into Morph's `<model_dir>_morph<config>/`): it read the
checkpoint first, and so was refused for the image size its run record holds, or for the Adam
state a weights-only checkpoint lacks ("none can be used"), or (with a readable training
checkpoint) after the notes of the config it inferred. Now: the wrong-kind message - what the folder
holds, which command continues it, `--init_from` to start a Morph run from it - exit 2, before
anything in the folder is read for the resume, swept or set aside (nothing moved or written)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from parity_tests.conftest import GOLDEN
from parity_tests.test_nonfinite_and_flags import error_line, snapshot
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt

# the golden bundle's official checkpoint: light, ch 4, n_dis 5, 64 px, with its Adam state, no .meta
CFG = opt.config_from(light=True, dataset="g", ch=4, n_dis=5, img_size=64, augment_flag=False)
ARGS = ["train", "--config", "C", "--dataset", "g", "--light", "True", "--img_size", "64", "--ch", "4", "--n_dis",
        "5", "--augment_flag", "False", "--iteration", "1", "--epoch", "1", "--device", "cpu", "--threads", "1"]


def _morph_folder(root):
    from morph.train import morph_paths
    return morph_paths(dict(CFG, morph_config="C", idp_weight=1.0, g_cam=True,
                            checkpoint_dir=os.path.join(root, "checkpoint"))).checkpoint


def _weights_only(folder):
    """The golden checkpoint rewritten without its Adam slots and powers (an inference-only export)."""
    import weights_convert as wc
    from ugatit_common.tf_checkpoint.names import POWER_NAMES, split_slot
    src = os.path.join(GOLDEN, "final")
    with wc.BundleReader(src) as r:
        state = {wc.tf_to_torch_name(n): wc.to_torch_layout(n, r.read(n)) for n in r.keys()
                 if n not in POWER_NAMES and not split_slot(n)[1]}
    wc.torch_to_tf(state, os.path.join(folder, "UGATIT.model-3"))


def _refused(root, monkeypatch, capsys):
    """`python -m morph train` in `root`: exit 2 with nothing moved, swept or written; (stderr, its error line)."""
    from morph.__main__ import main as morph_main
    monkeypatch.chdir(root)
    before = snapshot(root)
    capsys.readouterr()
    rc = morph_main(ARGS)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert snapshot(root) == before  # nothing moved, swept or written
    return err, error_line(err)


@pytest.mark.parametrize("case", ["training", "weights_only", "record_of_another_size"])
def test_a_tf_checkpoint_in_a_morph_folder_is_refused_for_its_kind(case, tmp_path, monkeypatch, capsys):
    from ugatit_common.demo_data import make_demo_dataset
    root = str(tmp_path)
    make_demo_dataset(root, "g", size=64, n_train=1, n_test=1)
    folder = _morph_folder(root)
    if case == "weights_only":
        os.makedirs(folder)
        _weights_only(folder)
    else:
        shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    if case == "record_of_another_size":  # the run record of the tf_reference run that wrote it (a light model:
        with open(os.path.join(folder, policy.RUN_RECORD), "w") as fh:  # its weights do not fix the size)
            json.dump({"written_by": "tf_reference", "img_size": 32, "options": dict(CFG, img_size=32)}, fh)
    err, line = _refused(root, monkeypatch, capsys)
    for words in ("an official TensorFlow UGATIT checkpoint", "UGATIT.model-3", "not a Morph-UGATIT checkpoint",
                  "--init_from", "python -m tf_reference"):
        assert words in line, line
    assert "img_size" not in line and "none can be used" not in line, line
    assert "note:" not in err, err  # the checkpoint's config was not inferred (read) on the way
    assert not os.path.exists(os.path.join(folder, policy.UNUSABLE))


def test_a_port_checkpoint_in_a_morph_folder_is_refused_for_its_kind(tmp_path, monkeypatch, capsys):
    """The same for a checkpoint of the PyTorch port (torch_port) found in Morph's folder: the
    wrong-kind message names the port's checkpoint and `python -m torch_port` to continue it (not
    tf_reference), before anything there is read, swept or set aside."""
    from parity_tests.test_outputs_guard import _save_port
    from torch_port import build_ugatit
    from ugatit_common.demo_data import make_demo_dataset
    root = str(tmp_path)
    make_demo_dataset(root, "g", size=64, n_train=1, n_test=1)
    folder = _morph_folder(root)
    _save_port(folder, build_ugatit(CFG), CFG, step=3)
    _, line = _refused(root, monkeypatch, capsys)
    for words in ("a UGATIT checkpoint of the PyTorch port", "UGATIT_light.model-3", "not a Morph-UGATIT checkpoint",
                  "Morph cannot resume it", "--init_from", "use python -m torch_port"):
        assert words in line, line
    assert "tf_reference" not in line, line

"""`python -m morph export` flags that a config-C checkpoint cannot honour are refused, not ignored
(as its --direction and, for configs A / B, --samples are). Tiny model (32 px, ch 4, one iteration)."""
from __future__ import annotations

import os

from morph.__main__ import main as morph_main
from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from morph.train import morph_paths
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

NET = dict(light=True, ch=4, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True)


def test_tf_on_is_refused_for_config_C(tmp_path, capsys):
    """`--tf on` means the verification must compare with tf_reference ("required"); config C's
    generator has no official counterpart, so the export wrote its files saying "tf_reference: not
    run". Now one `error:` line naming --tf on and the config, exit 2, nothing written (exports
    with --tf auto / off: test_onnx.py)."""
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=1, n_test=1)
    flags = ["--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--light", "True",
             "--checkpoint_dir", os.path.join(root, "checkpoint"), "--log_dir", os.path.join(root, "logs"),
             "--sample_dir", os.path.join(root, "samples"), "--device", "cpu"]
    assert morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--data_root", root] + flags) == 0
    folder = morph_paths(opt.config_from(dataset="demo", morph_config="C", checkpoint_dir=os.path.join(
        root, "checkpoint"), **NET)).checkpoint
    out = os.path.join(root, "out")
    os.mkdir(out)
    capsys.readouterr()
    assert morph_main(["export", folder, os.path.join(out, "m.onnx"), "--tf", "on", "--samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --tf on: config C's generator" in err[0], err
    assert os.listdir(out) == []


def test_tf_on_stays_allowed_for_configs_A_and_B():
    """That refusal is config C's only: a config A / B generator is the official one, which --tf on
    compares with tf_reference, so the flags check lets it through (the comparison: test_onnx.py)."""
    from morph.export import _check_flags
    from morph.model import MorphUGATIT
    for config in ("A", "B"):
        model = MorphUGATIT(opt.config_from(dataset="demo", morph_config=config, **NET))
        _check_flags(model, {"tf", "direction"}, "on")  # raises nothing

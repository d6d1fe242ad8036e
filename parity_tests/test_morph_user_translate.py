"""`python -m morph translate` on a checkpoint of config A / B (two generators, no latent code):
`--samples N` asks for N translations "each with a fresh z", which such a model cannot draw.
Tiny model (32 px, ch 4, one training iteration)."""
from __future__ import annotations

import os

from morph.__main__ import main as morph_main
from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from morph.train import morph_paths
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

NET = dict(light=True, ch=4, n_res=4, n_dis=4, img_size=32, sn=True, smoothing=True)


def test_translate_refuses_samples_for_a_model_without_latent_code(tmp_path, capsys):
    """Config B with --samples 3 wrote three identical files and a row of three copies: now one
    `error:` line naming --samples and the config, exit 2, and no result folder; --samples 1 (or
    left out) translates each input once."""
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=1, n_test=1)
    flags = ["--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--light", "True",
             "--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
             "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples"),
             "--device", "cpu", "--config", "B"]
    assert morph_main(["train", "--epoch", "1", "--iteration", "1", "--data_root", root] + flags) == 0
    out_dir = os.path.join(root, "results", os.path.basename(morph_paths(opt.config_from(
        dataset="demo", morph_config="B", checkpoint_dir="c", **NET)).checkpoint))
    test_a = os.path.join(root, "dataset", "demo", "testA")
    capsys.readouterr()
    assert morph_main(["translate", "--input", test_a, "--direction", "a2b", "--samples", "3"] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --samples=3: config B has no latent code" in err[0], err
    assert not os.path.exists(out_dir)
    assert morph_main(["translate", "--input", test_a, "--direction", "a2b"] + flags) == 0
    assert sorted(os.listdir(out_dir)) == [".ugatit-outputs.json", "A_test_0000_a2b_0.png",
                                           "A_test_0000_a2b_samples.png"]

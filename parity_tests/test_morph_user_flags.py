"""`python -m morph train` loss flags that cannot give a finite loss are refused before any work,
as the port refuses its own loss weights (ugatit_common.options.validate)."""
from __future__ import annotations

import os

import pytest

from morph.__main__ import main as morph_main
from ugatit_common.demo_data import make_demo_dataset


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_idp_weight_must_be_a_finite_number(tmp_path, capsys, value):
    """--idp_weight nan (or inf) was taken: the run made its folders (`..._morphC_idpnan/` with its
    run record), trained, and stopped at step 1 on a NaN generator loss (exit 3). Now one `error:`
    line naming the flag, exit 2, and nothing made, as for a negative weight."""
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=1, n_test=1)
    argv = ["train", "--config", "C", "--idp_weight", value, "--dataset", "demo", "--img_size", "32", "--ch", "4",
            "--n_dis", "4", "--light", "True", "--epoch", "1", "--iteration", "1", "--device", "cpu",
            "--data_root", root, "--checkpoint_dir", os.path.join(root, "checkpoint"),
            "--result_dir", os.path.join(root, "results"), "--log_dir", os.path.join(root, "logs"),
            "--sample_dir", os.path.join(root, "samples")]
    capsys.readouterr()
    assert morph_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: --idp_weight={float(value)!r}: must be a finite number >= 0" in err[0], err
    assert os.listdir(root) == ["dataset"]


@pytest.mark.parametrize("command, phase, words", [
    ("train", "test", "--phase='test': python -m morph train is the train phase; for the test phase use "
                      "python -m morph interpolate or translate"),
    ("train", "bogus", "--phase='bogus': expected 'train' or 'test'"),
    ("interpolate", "train", "--phase='train': python -m morph interpolate is the test phase"),
    ("translate", "train", "--phase='train': python -m morph translate is the test phase"),
])
def test_a_phase_that_contradicts_the_subcommand_is_refused(tmp_path, capsys, command, phase, words):
    """The official --phase is accepted by every subcommand, but the subcommand decides: `train
    --phase test` trained (making the run's folders) and `interpolate --phase train` translated. Now
    such a --phase is one `error:` line, exit 2, before anything is read or made; the matching one
    (or none) is fine."""
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=1, n_test=1)
    folders = ["--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
               "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples")]
    net = ["--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--light", "True", "--device", "cpu"]
    extra = {"train": ["--epoch", "1", "--iteration", "1", "--data_root", root],
             "interpolate": ["--input", os.path.join(root, "dataset", "demo", "testA"), "--steps", "2"],
             "translate": ["--input", os.path.join(root, "dataset", "demo", "testA"), "--direction", "a2b"]}[command]
    capsys.readouterr()
    assert morph_main([command, "--phase", phase] + net + folders + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"python -m morph {command}: error: {words}" in err[0], err
    assert os.listdir(root) == ["dataset"]
    if command == "train":  # the phase it is: trains as without the flag
        assert morph_main([command, "--phase", "train"] + net + folders + extra) == 0


def test_demo_rerun_says_how_many_iterations_its_checkpoint_did(tmp_path, capsys):
    """`python -m morph demo DIR --iterations 2` over a DIR whose checkpoint did 1 iteration
    trains none (the official resume: that run's one epoch is over) and said the checkpoint "has
    done 2", the number asked for. Now it says the checkpoint's own count, and why none was trained
    (only when more were asked for than it did)."""
    demo = str(tmp_path / "demo")
    assert morph_main(["demo", demo, "--iterations", "1", "--steps", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert morph_main(["demo", demo, "--iterations", "2", "--steps", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "no iteration left to train" in out and "has done 1 iteration(s) (its one epoch is over" in out, out
    assert "has done 2" not in out
    # the rerun that asks for what the checkpoint did: no why (nothing more was asked for)
    assert morph_main(["demo", demo, "--iterations", "1", "--steps", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "has done 1 iteration(s); the morphs below are its" in out and "epoch is over" not in out, out


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_idp_weight_zero_or_more_is_taken(value):
    """The boundary of that check: 0 (the identity-preserving loss off) and any finite positive
    weight pass `validate_morph` as given."""
    from morph.train import validate_morph
    from ugatit_common import options as opt
    cfg = validate_morph(opt.config_from(dataset="demo", img_size=32, ch=4, n_dis=4, light=True, phase="train",
                                         morph_config="C", idp_weight=value))
    assert cfg["idp_weight"] == value


def test_train_names_the_checkpoint_it_ends_with_and_the_iterations_done(tmp_path, capsys):
    """`python -m morph train`'s last line said "done: counter 2 ...; checkpoint <folder>" after a
    run that saved `MorphUGATIT_C.model-3` (the official counter starts at 1): it now says the
    iterations done (2, then 3 in all after a resume to --iteration 4, which runs batch 3 only, as
    the official loop does) and names the checkpoint file that is there."""
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 32, n_train=1, n_test=1)
    argv = ["train", "--config", "C", "--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4",
            "--light", "True", "--epoch", "1", "--device", "cpu", "--data_root", root,
            "--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
            "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples")]
    for iterations, done, step in ((2, 2, 3), (4, 3, 4)):
        assert morph_main(argv + ["--iteration", str(iterations)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith(f" [*] done: {done} iteration(s) in all, last d_loss "), last
        prefix = last.rsplit("; checkpoint ", 1)[1]
        assert prefix.endswith(f"MorphUGATIT_C.model-{step}") and os.path.isfile(prefix + ".safetensors"), last

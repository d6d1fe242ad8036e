"""Issue 19, parts 3-4, probed further: every number a command loads for use is finite, and no
output is written from a NaN / inf (ugatit_common/finite.py).

- a resumed training state: every number it continues with, not only the Adam slots - lr / betas
  / eps, the beta powers, an fp16 run's loss scale, `past_g_loss` (before: trained into a NaN
  loss, exit 3, or a TensorBoard histogram error, or silently kept);
- Morph's `--init_from` (before: trained on, exit 3 at the first step);
- `python -m parity_tests.free_run --checkpoint` and `python -m parity_tests.fast_paths` (before:
  a drift report of NaN, exit 1 / a table of NaN, exit 0); free_run's `--seed` validated by name;
- finite weights whose outputs overflow (near float32's limit; a float16 fast path past 65504):
  the test phase, Morph translate / interpolate and the ONNX exports' verification refuse them
  (before: black pictures written, exit 0; a NaN smoothness figure; exit 1 "verification
  failed").
Each refusal: exit 2, one `error:` line naming the tensor / input, no file written or changed
(hashed). Tiny models (light, 32 px, ch 2, n_dis 4)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pytest
import torch

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from parity_tests.test_outputs_guard import _save_morph, _save_port as _save_port_model
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)
MORPH_CFG = dict(CFG, morph_config="C", idp_weight=1.0, g_cam=True, z_dim=16, w_dim=16, mlp_layers=2)
TINY = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--augment_flag",
        "False", "--device", "cpu"]
TRAIN = TINY + ["--iteration", "2", "--print_freq", "100", "--save_freq", "2", "--threads", "1"]


# -- helpers -------------------------------------------------------------------------------------------

def snapshot(root):
    """Every file (content hash) under `root`. Folders are left out: a training run takes (creates)
    its log and sample folders before it reads a checkpoint (a refused run removes them again:
    test_refused_run_folders)."""
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def error_line(err):
    """The one `error:` line (a TF checkpoint's notes and progress bars may precede it)."""
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _model_dir(root, cfg=CFG, folder="checkpoint"):
    return os.path.join(root, folder, opt.model_dir(cfg))


def _morph_dir(root, cfg=MORPH_CFG):
    from morph.train import morph_paths
    return morph_paths(dict(cfg, checkpoint_dir=os.path.join(root, "checkpoint"))).checkpoint


def _save_port(folder, state, cfg=CFG, step=3):
    """A port checkpoint of `state` (test_outputs_guard's writer, which takes a model)."""
    from torch_port import build_ugatit
    model = build_ugatit(cfg)
    model.load_state_dict(state)
    _save_port_model(folder, model, cfg, step)


def _poisoned(state, name, value=float("nan"), fill=False):
    t = state[name].clone()
    if fill:
        t.fill_(value)
    else:
        t.view(-1)[1] = value
    return dict(state, **{name: t})


def _set(tree, dotted, value):
    """Set `tree[a][b][c]` for "a/b/c": a tensor gets `value` at one element, a float becomes it."""
    *path, last = dotted.split("/")
    for k in path:
        tree = tree[k]
    old = tree[last]
    if isinstance(old, torch.Tensor):
        old = old.clone()
        old.view(-1)[0] = value
        tree[last] = old
    else:
        tree[last] = value


def _run(main, argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr()


class _quiet:
    """fp16 on a CPU warns that it is slow; not this test's business."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


# -- a trained run to resume from ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """dataset/t and two finished 2-iteration runs of the port (fp32 and fp16: the latter's state
    holds loss scales), each resumable with --epoch 2."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path_factory.mktemp("trained"))
    make_demo_dataset(root, "t", size=32, n_train=2, n_test=1)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name, extra in (("fp32", []), ("fp16", ["--precision", "fp16"])):
            with _quiet():
                assert port_main(TRAIN + ["--epoch", "1", "--checkpoint_dir", name] + extra) == 0
    finally:
        os.chdir(cwd)
    for junk in ("logs", "samples", "results"):
        shutil.rmtree(os.path.join(root, junk), ignore_errors=True)
    return root


STATE_CASES = [  # (run, entry of the .state.pt, value, the name the error gives)
    ("fp32", "G_optim/lr", float("nan"), "'G_optim.lr'"),
    ("fp32", "D_optim/eps", float("nan"), "'D_optim.eps'"),           # before: a NaN loss, exit 3
    ("fp32", "G_optim/beta2", float("inf"), "'G_optim.beta2'"),       # before: a histogram error, unnamed
    ("fp32", "D_optim/beta1_power", float("nan"), "'D_optim.beta1_power'"),
    ("fp32", "G_optim/v/generator_B.conv.weight", float("inf"), "'G_optim.v.generator_B.conv.weight'"),
    ("fp32", "past_g_loss", float("nan"), "'past_g_loss'"),
    ("fp16", "loss_scale/G/scale", float("inf"), "'loss_scale.G.scale'"),  # before: an inf loss, exit 3
]


def test_resume_refuses_any_non_finite_number_of_the_state(trained, tmp_path, monkeypatch, capsys):
    """Refused up front (exit 2 naming the entry), not trained into a NaN (exit 3); nothing is
    moved or written - no checkpoint, no log, no sample."""
    from torch_port.__main__ import main as port_main
    for run, entry, value, named in STATE_CASES:
        root = str(tmp_path / entry.replace("/", "_"))
        shutil.copytree(os.path.join(trained, "dataset"), os.path.join(root, "dataset"))
        shutil.copytree(os.path.join(trained, run), os.path.join(root, "ck"))
        sp = glob.glob(os.path.join(_model_dir(root, folder="ck"), "*.state.pt"))
        assert len(sp) == 1
        state = torch.load(sp[0], map_location="cpu", weights_only=True)
        _set(state, entry, value)
        torch.save(state, sp[0])
        monkeypatch.chdir(root)
        before = snapshot(root)
        with _quiet():
            rc, got = _run(port_main, TRAIN + ["--epoch", "2", "--checkpoint_dir", "ck", "--precision", run], capsys)
        line = error_line(got.err)
        assert rc == 2 and named in line and "1 non-finite value" in line and "UGATIT_light.model-3" in line, \
            (entry, rc, got.err[-800:])
        assert snapshot(root) == before, entry


def test_a_finite_state_still_resumes(trained, tmp_path, monkeypatch, capsys):
    """The control: the same state untouched trains on (the rule does not refuse finite values,
    integers, the RNG states or the config)."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "ok")
    shutil.copytree(os.path.join(trained, "dataset"), os.path.join(root, "dataset"))
    shutil.copytree(os.path.join(trained, "fp32"), os.path.join(root, "ck"))
    monkeypatch.chdir(root)
    rc, got = _run(port_main, TRAIN + ["--epoch", "2", "--checkpoint_dir", "ck"], capsys)
    assert rc == 0, got.err[-800:]
    assert os.path.exists(os.path.join(_model_dir(root, folder="ck"), "UGATIT_light.model-5.state.pt"))


def test_resume_with_a_contradicting_model_flag_names_the_flag(trained, tmp_path, monkeypatch, capsys):
    """A typed model flag the checkpoint's weights contradict (--ch, which the folder name does not
    record): one `error:` line naming the flag and both values (before: a second line of shape
    mismatches only); nothing written."""
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "ch")
    shutil.copytree(os.path.join(trained, "dataset"), os.path.join(root, "dataset"))
    shutil.copytree(os.path.join(trained, "fp32"), os.path.join(root, "ck"))
    monkeypatch.chdir(root)
    before = snapshot(root)
    argv = [a if prev != "--ch" else "4" for prev, a in zip([None] + TRAIN, TRAIN)]
    rc, got = _run(port_main, argv + ["--epoch", "2", "--checkpoint_dir", "ck"], capsys)
    line = error_line(got.err)
    assert rc == 2 and "--ch 4 was given but the checkpoint's weights say ch 2" in line, got.err[-800:]
    assert len([ln for ln in got.err.splitlines() if ln.strip() and "shape mismatches" in ln]) == 1, got.err
    assert snapshot(root) == before


def test_named_numbers_walks_tensors_arrays_and_floats():
    import numpy as np

    from ugatit_common.finite import first_non_finite, named_numbers
    tree = {"a": {"m": {"w": torch.zeros(2)}, "lr": 0.1, "n": 3, "flag": True, "name": "x"},
            "rng": [np.zeros(2, np.uint32), 1.5], "p": (torch.zeros(1, dtype=torch.int64),)}
    names = [n for n, _ in named_numbers(tree)]
    assert names == ["a.m.w", "a.lr", "rng.0", "rng.1", "p.0"]
    assert first_non_finite(named_numbers(tree)) is None
    tree["a"]["lr"] = float("-inf")
    assert first_non_finite(named_numbers(tree)) == ("a.lr", 1, 1)


# -- weights loaded to start from: Morph --init_from, the free run, the fast-path table -------------------

@pytest.fixture(scope="module")
def sources(trained, tmp_path_factory):
    """A port weights file and a TF checkpoint with one NaN in generator_B (used by every Morph
    config), one with a NaN only in generator_A (unused by config C), and a TF checkpoint whose
    weights are finite but one Adam slot is not."""
    import weights_convert as wc
    from safetensors.torch import load_file
    root = str(tmp_path_factory.mktemp("sources"))
    weights = glob.glob(os.path.join(_model_dir(trained, folder="fp32"), "*.safetensors"))[0]
    good = load_file(weights)
    _save_port(os.path.join(root, "nan_B"), _poisoned(good, "generator_B.conv.weight"))
    _save_port(os.path.join(root, "nan_A"), _poisoned(good, "generator_A.conv.weight", float("-inf")))
    wc.torch_to_tf(_poisoned(good, "generator_B.conv.weight"), os.path.join(root, "tf_nan", "UGATIT_light.model-3"))
    slot = os.path.join(root, "slot")
    shutil.copytree(_model_dir(trained, folder="fp32"), slot)
    sp = glob.glob(os.path.join(slot, "*.state.pt"))[0]
    state = torch.load(sp, map_location="cpu", weights_only=True)
    _set(state, "G_optim/m/generator_B.conv.weight", float("nan"))
    torch.save(state, sp)
    # module scope comes before conftest's per-test patch: no .meta here either (the tests using
    # it are not marked tf; with TensorFlow installed torch2tf would build the train graph)
    with _quiet(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(wc, "_meta_builder", lambda: (None, "TensorFlow not installed"))
        assert wc.main(["torch2tf", slot, os.path.join(root, "tf_slot", "UGATIT_light.model-3"),
                        "--allow_non_finite"]) == 0
    return root


def _port_weights(folder):
    return glob.glob(os.path.join(folder, "*.safetensors"))[0]


def test_morph_init_from_refuses_non_finite_weights(trained, sources, tmp_path, monkeypatch, capsys):
    from morph.__main__ import main as morph_main
    root = str(tmp_path / "m")
    shutil.copytree(os.path.join(trained, "dataset"), os.path.join(root, "dataset"))
    monkeypatch.chdir(root)
    cases = [("A", _port_weights(os.path.join(sources, "nan_B")), "generator_B.conv.weight"),
             ("C", _port_weights(os.path.join(sources, "nan_B")), "generator.conv.weight"),  # generator_B, mapped
             ("A", os.path.join(sources, "tf_nan"), "generator_B.conv.weight"),
             ("C", os.path.join(sources, "tf_nan"), "generator.conv.weight")]
    for config, src, tensor in cases:
        ck = os.path.join(root, "ck" + config)
        argv = ["train", "--config", config] + TRAIN + ["--epoch", "1", "--checkpoint_dir", ck, "--init_from", src]
        rc, got = _run(morph_main, argv, capsys)
        line = error_line(got.err)
        assert rc == 2 and "--init_from" in line and tensor in line and "1 non-finite value" in line, \
            (config, src, got.err[-800:])
        assert not glob.glob(os.path.join(ck, "**", "*.*"), recursive=True), (config, src)  # no checkpoint
        assert not glob.glob(os.path.join(root, "logs", "**", "losses.jsonl"), recursive=True)  # no step taken
    # config C does not use generator_A: a NaN there is no reason to refuse
    from morph.model import MorphUGATIT
    from morph.train import init_from_ugatit
    fresh = init_from_ugatit(MorphUGATIT(MORPH_CFG), _port_weights(os.path.join(sources, "nan_A")))
    assert fresh and all(k.startswith(("generator.mapping.", "generator.style_")) for k in fresh)


def test_free_run_and_fast_paths_refuse_non_finite_checkpoints(sources, tmp_path, capsys):
    from parity_tests.fast_paths import main as fast_main
    from parity_tests.free_run import main as free_main
    before = snapshot(sources)
    flags = ["--img_size", "32", "--smoothing", "True", "--iterations", "1", "--quiet"]
    for ck, tensor in (("tf_nan", "'generator_B/conv/conv2d/kernel'"),       # weights only: fresh Adam slots
                       ("tf_slot", "'generator_B/conv/conv2d/kernel/Adam'")):  # finite weights, a NaN slot
        rc, got = _run(free_main, ["--checkpoint", os.path.join(sources, ck)] + flags, capsys)
        line = error_line(got.err)
        assert rc == 2 and tensor in line and "1 non-finite value" in line, got.err[-800:]
    rc, got = _run(fast_main, [os.path.join(sources, "tf_nan"), str(tmp_path / "fp"), "--img_size", "32",
                               "--paths", "bf16"], capsys)
    line = error_line(got.err)
    assert rc == 2 and "generator_B.conv.weight" in line and "1 non-finite value" in line, got.err[-800:]
    assert not os.path.exists(tmp_path / "fp")
    rc, got = _run(fast_main, [str(tmp_path / "nope"), str(tmp_path / "fp")], capsys)  # the same one error path
    assert rc == 2 and "nope" in error_line(got.err)
    assert snapshot(sources) == before
    for bad in ("-1", "4294967296", "x"):  # free_run's --seed, by name (before: numpy's words, or accepted)
        with pytest.raises(SystemExit) as e:
            free_main(["--seed", bad, "--iterations", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --seed: must be an integer in [0, 2**32-1" in err, err


# -- finite weights, non-finite outputs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def overflow(tmp_path_factory):
    """Finite checkpoints whose outputs are not: `huge` (generator_B's up_conv_1 kernel and G_logit
    bias at 3e38: NaN in float32), Morph `mhuge` (its generator's first kernel at 3e38), and `big`
    (both generators' first kernels x 1e6: finite in float32, past float16's 65504)."""
    from morph.model import MorphUGATIT
    from torch_port import build_ugatit
    root = str(tmp_path_factory.mktemp("overflow"))
    make_demo_dataset(root, "t", size=32, n_train=1, n_test=1)
    torch.manual_seed(0)
    good = build_ugatit(CFG).state_dict()
    huge = _poisoned(good, "generator_B.up_conv_1.weight", 3e38, fill=True)
    _save_port(os.path.join(root, "huge"), _poisoned(huge, "generator_B.G_logit.bias", 3e38, fill=True))
    big = dict(good)
    for k in ("generator_A.conv.weight", "generator_B.conv.weight"):
        big[k] = good[k] * 1e6
    _save_port(os.path.join(root, "big"), big)
    m = MorphUGATIT(MORPH_CFG)
    m.load_state_dict(_poisoned(m.state_dict(), "generator.conv.weight", 3e38, fill=True))
    _save_morph(os.path.join(root, "mhuge"), m)
    os.makedirs(os.path.join(root, "res", opt.model_dir(CFG)))  # the test phase's folder (made before it reads)
    return root


def test_overflowing_translations_are_never_written(overflow, tmp_path, monkeypatch, capsys):
    """The test phase (one image at a time and --batch), a float16 fast path, Morph translate and
    interpolate: exit 2 naming the input (and the precision), no picture, page or figure written."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "o")
    shutil.copytree(overflow, root)
    monkeypatch.chdir(root)
    photo = os.path.join("dataset", "t", "testA")
    test = ["--phase", "test", "--input", photo, "--device", "cpu", "--result_dir", "res", "--checkpoint"]
    morph = ["--checkpoint", "mhuge", "--input", photo, "--device", "cpu", "--result_dir", "mres"]
    cases = [(port_main, test + ["huge"], "the a2b translation of", None),
             (port_main, test + ["huge", "--batch", "2"], "the a2b translation of", None),
             (port_main, test + ["big", "--precision", "fp16"], "the a2b translation of", "--precision fp16"),
             (morph_main, ["translate", "--direction", "a2b"] + morph, "the a2b translation of", None),
             (morph_main, ["interpolate", "--steps", "2", "--samples", "1"] + morph, "the morph strip of", None)]
    for main, argv, what, words in cases:
        before = snapshot(root)
        with _quiet():
            rc, got = _run(main, argv, capsys)
        line = error_line(got.err)
        assert rc == 2 and what in line and "A_test_0000.png" in line and "non-finite value" in line, \
            (argv, got.err[-800:])
        assert words is None or words in line, line
        assert "invalid value encountered" not in got.err  # numpy never saw the NaN (nothing was cast)
        assert snapshot(root) == before, argv
    # the control: the same `big` weights in float32 translate (the fp16 refusal is the overflow's)
    rc, got = _run(port_main, test + ["big"], capsys)
    assert rc == 0, got.err[-800:]
    assert glob.glob(os.path.join(root, "res", opt.model_dir(CFG), "a2b", "*.png"))


@pytest.mark.slow  # two verified ONNX exports (~10 s)
def test_overflowing_exports_fail_as_bad_input(overflow, tmp_path, capsys):
    """The exports' verification runs the port first: its NaN is the checkpoint's (exit 2 naming
    the output), not a failed verification of the exporter (exit 1)."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "o")
    shutil.copytree(overflow, root)
    before = snapshot(root)
    for main, argv in ((port_main, ["export", os.path.join(root, "huge"), os.path.join(root, "a.onnx"),
                                    "--direction", "a2b", "--tf", "off", "--threads", "1"]),
                       (morph_main, ["export", os.path.join(root, "mhuge"), os.path.join(root, "m.onnx"),
                                     "--samples", "2", "--threads", "1"])):
        rc, got = _run(main, argv, capsys)
        line = error_line(got.err)
        assert rc == 2 and "the port's float32 translated output" in line and "non-finite value" in line, \
            got.err[-800:]
        assert "verification failed" not in got.err
        assert snapshot(root) == before


@pytest.mark.tf
@pytest.mark.slow  # TensorFlow builds the test graph (~20 s)
def test_tf_reference_test_phase_refuses_an_overflowing_translation(overflow, tmp_path, monkeypatch, capsys):
    import weights_convert as wc
    from tf_reference.__main__ import main as tf_main
    root = str(tmp_path / "o")
    shutil.copytree(os.path.join(overflow, "dataset"), os.path.join(root, "dataset"))
    folder = _model_dir(root)
    assert wc.main(["torch2tf", os.path.join(overflow, "huge"), os.path.join(folder, "UGATIT_light.model-3"),
                    "--weights_only"]) == 0
    os.makedirs(os.path.join(root, "results", opt.model_dir(CFG)))
    monkeypatch.chdir(root)
    before = snapshot(root)
    rc, got = _run(tf_main, ["--phase", "test"] + TINY[:-2], capsys)
    line = error_line(got.err)
    assert rc == 2 and "the a2b translation of" in line and "non-finite value" in line, got.err[-800:]
    assert snapshot(root) == before


def test_non_finite_or_negative_training_numbers_are_bad_input():
    """--lr inf / nan / 0 and a negative or non-finite loss weight or GP_ld: one OptionError naming
    the flag (exit 2), before a graph is built, not a NaN at the first step."""
    for flag, value in (("lr", float("inf")), ("lr", float("nan")), ("lr", 0.0), ("GP_ld", -5), ("cam_weight", -1),
                        ("adv_weight", float("inf"))):
        with pytest.raises(opt.OptionError, match=f"--{flag}="):
            opt.validate(opt.config_from(**{flag: value}))
    opt.validate(opt.config_from(lr=1e-4, GP_ld=0, identity_weight=0))  # zero weights are official settings


def test_a_dataset_folder_that_is_a_file_or_a_dead_link_is_said_so(tmp_path):
    cfg = opt.config_from(dataset="d")
    root = tmp_path / "dataset" / "d"
    root.mkdir(parents=True)
    (root / "trainA").write_text("not a folder")
    os.symlink(root / "trainB", root / "trainB")  # a link to itself
    with pytest.raises(opt.OptionError, match="trainA' is not a folder"):
        opt.domain_files(cfg, "trainA", base=str(tmp_path))
    with pytest.raises(opt.OptionError, match="trainB' is a link that leads to no folder"):
        opt.domain_files(cfg, "trainB", base=str(tmp_path), required=False)
    with pytest.raises(opt.OptionError, match="testA' does not exist"):
        opt.domain_files(cfg, "testA", base=str(tmp_path))
    assert opt.domain_files(cfg, "testB", base=str(tmp_path), required=False) == []


def test_option_messages_name_the_least_image_size_and_where_the_dataset_was_looked_for(tmp_path, monkeypatch):
    """--img_size below the official graph's least size: the message names that size for the
    n_dis given (24 at n_dis 4, 48 at 5; test_config_inference checks the rule against TF). A
    missing dataset folder: looked for relative to 'the working directory' when that is the base,
    else relative to the base folder named as such (not called the working directory)."""
    for n_dis, least in ((4, 24), (5, 48)):
        with pytest.raises(opt.OptionError) as e:
            opt.validate(opt.config_from(img_size=least - 4, n_dis=n_dis))
        assert f"--img_size={least - 4}: must be a multiple of 4 and at least {least} for n_dis={n_dis}" in str(e.value)
        opt.validate(opt.config_from(img_size=least, n_dis=n_dis))  # the least size itself is taken (without TF too)
    cfg = opt.config_from(dataset="d")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(opt.OptionError) as e:
        opt.domain_files(cfg, "trainA")
    assert str(e.value).endswith(f"relative to the working directory {os.getcwd()!r}"), str(e.value)
    with pytest.raises(opt.OptionError) as e:
        opt.domain_files(cfg, "trainA", base=str(elsewhere))
    assert str(e.value).endswith(f"relative to {str(elsewhere)!r}"), str(e.value)

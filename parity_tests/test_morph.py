"""Morph-UGATIT on the port: inherited layers unchanged, config A == the port, z codes, w
interpolation endpoints, short training, CLI end to end, clear errors. Tiny sizes (32 px, ch 4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from morph import MorphGenerator, MorphUGATIT, make_z
from morph.__main__ import main as morph_main
from morph.interpolate import lerp, morph_frames, smoothness, w_codes
from morph.train import CheckpointKindError, init_from_ugatit, morph_paths, train
from torch_port import checkpoint as ckpt
from torch_port.losses import regularization_loss
from torch_port.model import UGATIT
from torch_port.networks import Generator
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

SIZE, CH, N_DIS = 32, 4, 4
NET = dict(light=True, ch=CH, n_res=4, n_dis=N_DIS, img_size=SIZE, sn=True, smoothing=True)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(seed, n=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("morph_demo"))
    make_demo_dataset(root, "demo", SIZE, n_train=6, n_test=2)
    return root


def _train_cfg(root, **kw):
    cfg = opt.config_from(dataset="demo", epoch=1, iteration=2, print_freq=1000, save_freq=1000, decay_flag=False,
                          checkpoint_dir=os.path.join(root, "ckpt"), result_dir=os.path.join(root, "res"),
                          log_dir=os.path.join(root, "logs"), sample_dir=os.path.join(root, "samples"), **NET)
    cfg.update(kw)
    return cfg


# -- inherited layers ----------------------------------------------------------------------------------

def test_inherited_seams_bitwise_equal_to_port():
    torch.manual_seed(0)
    port = Generator(ch=CH, n_res=4, img_size=SIZE, light=True)
    morph = MorphGenerator(ch=CH, n_res=4, img_size=SIZE)
    shared = {k: v for k, v in port.state_dict().items() if not k.startswith("MLP.")}
    missing, unexpected = morph.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("mapping.", "style_")) for k in missing)
    x = _images(1, 2)
    with torch.no_grad():
        e_p, e_m = port.encode(x), morph.encode(x)
        assert torch.equal(e_p, e_m)
        a_p, a_m = port.attend(e_p), morph.attend(e_m)
        for u, v in zip(a_p, a_m):
            assert torch.equal(u, v)
        gamma, beta = port.style(a_p[0])
        out_p = port.decode(a_p[0], gamma, beta)
        assert torch.equal(out_p, morph.decode(a_m[0], gamma, beta))
        # the per-block / per-layer seam with identical entries computes the official decode
        per = [(gamma, gamma)] * 4, [(beta, beta)] * 4
        assert torch.equal(out_p, port.decode(a_p[0], *per))
        assert torch.equal(port(x)[0], out_p)


def test_morph_generator_forward_shapes_and_errors():
    g = MorphGenerator(ch=CH, n_res=4, img_size=SIZE)
    x = _images(2, 3)
    z = make_z("a2b", 3)
    img, cam, heat = g(x, z=z)
    assert img.shape == x.shape and cam.shape == (3, 2) and heat.shape == (3, SIZE // 4, SIZE // 4)
    assert torch.equal(img, g(x, w=g.w_from_z(z))[0])
    with pytest.raises(ValueError):
        g(x)
    assert not hasattr(g, "MLP")
    n_styles = sum(1 for n, _ in g.named_children() if n.startswith("style_"))
    assert n_styles == 8  # one (gamma, beta) map per AdaLIN layer


# -- config A == the port ------------------------------------------------------------------------------

def test_config_A_steps_equal_port():
    torch.manual_seed(0)
    port = UGATIT(NET)
    torch.manual_seed(0)
    morph = MorphUGATIT(dict(NET, morph_config="A"))
    assert port.state_dict().keys() == morph.state_dict().keys()
    for k, v in port.state_dict().items():
        assert torch.equal(v, morph.state_dict()[k]), k
    a, b = _images(3), _images(4)
    for _ in range(2):
        d_p, d_m = port.d_step(a, b), morph.d_step(a, b)
        g_p, g_m = port.g_step(a, b), morph.g_step(a, b)
        assert d_p == d_m
        assert {k: v for k, v in g_p.items() if isinstance(v, float)} == \
               {k: v for k, v in g_m.items() if isinstance(v, float)}
    for k, v in port.state_dict().items():
        assert torch.equal(v, morph.state_dict()[k]), k


def test_config_B_and_C_loss_terms():
    a, b = _images(5), _images(6)
    torch.manual_seed(0)
    mb = MorphUGATIT(dict(NET, morph_config="B"))
    total, terms, _ = mb.generator_losses(a, b)
    assert terms["G_A_idp"] > 0 and terms["G_B_idp"] > 0
    torch.manual_seed(0)
    mc = MorphUGATIT(dict(NET, morph_config="C", g_cam=False))
    assert not hasattr(mc, "generator_A") and hasattr(mc, "generator")
    mc.z_generator = torch.Generator().manual_seed(0)
    total, terms, _ = mc.generator_losses(a, b)
    assert float(terms["G_A_cam"].detach()) == 0.0 and float(terms["G_B_cam"].detach()) == 0.0
    expect = (terms["G_A_loss"] + terms["G_B_loss"]) / 2 + regularization_loss(mc.g_params())
    assert torch.allclose(total, expect)
    assert mc.config["cam_weight"] == opt.DEFAULTS["cam_weight"]  # restored after the override


def test_config_B_identity_terms_written_out():
    """Config B, written out from its definition (morph/model.py): G = the port's G loss plus, per
    direction, idp_weight * L1(E(G(x)), E(x)) with E the encoder of the generator that made G(x):
    A->B is generator_B on real A, B->A generator_A on real B; each term joins its own direction's
    loss and the total. Against the port's own loss (same seed: same weights) and the encoders
    called here, not the terms Morph reports. An idp_weight off 1 and all-different inputs, so a
    swapped encoder, reference image, direction or an ignored weight each moves a term."""
    a, b = _images(5), _images(6)
    torch.manual_seed(0)
    mb = MorphUGATIT(dict(NET, morph_config="B", idp_weight=2.5))
    torch.manual_seed(0)
    port = UGATIT(NET)
    total, terms, fakes = mb.generator_losses(a, b)
    p_total, p_terms, p_fakes = port.generator_losses(a, b)
    assert torch.equal(fakes["fake_B"], p_fakes["fake_B"]) and torch.equal(fakes["fake_A"], p_fakes["fake_A"])
    with torch.no_grad():
        idp_B = 2.5 * (port.generator_B.encode(p_fakes["fake_B"]) - port.generator_B.encode(a)).abs().mean()
        idp_A = 2.5 * (port.generator_A.encode(p_fakes["fake_A"]) - port.generator_A.encode(b)).abs().mean()
    close = dict(rtol=1e-6, atol=0)  # the same float32 ops in another grouping of the sums at most
    assert float(idp_A) > 1e-3 and float(idp_B) > 1e-3 and abs(float(idp_A) - float(idp_B)) > 1e-4
    torch.testing.assert_close(terms["G_B_idp"].detach(), idp_B, **close)
    torch.testing.assert_close(terms["G_A_idp"].detach(), idp_A, **close)
    torch.testing.assert_close(terms["G_B_loss"].detach(), (p_terms["G_B_loss"] + idp_B).detach(), **close)
    torch.testing.assert_close(terms["G_A_loss"].detach(), (p_terms["G_A_loss"] + idp_A).detach(), **close)
    torch.testing.assert_close(total.detach(), (p_total + idp_A + idp_B).detach(), **close)


def test_latent_mlp_and_styles_written_out():
    """Config C's generator, in float64 against formulas written here: the latent MLP is PixelNorm
    (z / sqrt(mean(z^2) + 1e-8)) then 8 Linear layers each followed by LeakyReLU(0.2); block i's
    res1 style comes from style_i_0 and res2's from style_i_1 (gamma and beta each its own Linear);
    gamma's bias starts at 1 and beta's at 0."""
    torch.manual_seed(0)
    g = MorphGenerator(ch=CH, n_res=4, img_size=SIZE)
    for i in range(4):
        for j in range(2):
            st = getattr(g, f"style_{i}_{j}")
            assert torch.equal(st.gamma.bias, torch.ones_like(st.gamma.bias)), (i, j)
            assert torch.equal(st.beta.bias, torch.zeros_like(st.beta.bias)), (i, j)
    g = g.double()
    sd = {k: v.detach() for k, v in g.state_dict().items()}
    z = torch.randn(3, g.z_dim, dtype=torch.float64) * 0.7 + 0.3
    x = z / torch.sqrt((z * z).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(8):
        x = x @ sd[f"mapping.linear_{i}.weight"].T + sd[f"mapping.linear_{i}.bias"]
        x = torch.where(x > 0, x, 0.2 * x)
    with torch.no_grad():
        w = g.w_from_z(z)
        torch.testing.assert_close(w, x, rtol=1e-12, atol=1e-12)  # float64: rounding only
        gammas, betas = g.style(None, w=w)
    for i in range(4):
        for j in range(2):
            pre = f"style_{i}_{j}"
            torch.testing.assert_close(gammas[i][j], w @ sd[f"{pre}.gamma.weight"].T + sd[f"{pre}.gamma.bias"],
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(betas[i][j], w @ sd[f"{pre}.beta.weight"].T + sd[f"{pre}.beta.bias"],
                                       rtol=1e-12, atol=1e-12)


def test_w_codes_frames_and_default_codes_written_out():
    """w_ab / w_ba = the mean over K draws of MLP(z) (not MLP of the mean z), a2b's draws first;
    frame t = G(x, w_ba + t (w_ab - w_ba)); a translation without a code draws a fresh code of its
    own direction. Each against the draws and formulas made here."""
    torch.manual_seed(0)
    m = MorphUGATIT(dict(NET, morph_config="C")).eval()
    x = _images(7)
    m.z_generator = torch.Generator().manual_seed(3)
    w_ab, w_ba = w_codes(m, samples=5)
    gen = torch.Generator().manual_seed(3)
    z_ab, z_ba = make_z("a2b", 5, gen), make_z("b2a", 5, gen)
    with torch.no_grad():
        assert torch.equal(w_ab, m.generator.mapping(z_ab).mean(dim=0, keepdim=True))
        assert torch.equal(w_ba, m.generator.mapping(z_ba).mean(dim=0, keepdim=True))
        frames = morph_frames(m, x, w_ba, w_ab, 6)
        for i in (1, 2, 4):
            t = i / 5
            assert torch.equal(frames[i], m.generator(x, w=w_ba + t * (w_ab - w_ba))[0]), i
        for direction in ("a2b", "b2a"):
            m.z_generator = torch.Generator().manual_seed(4)
            out = (m.generate_a2b if direction == "a2b" else m.generate_b2a)(x)[0]
            z = make_z(direction, 1, torch.Generator().manual_seed(4))
            assert torch.equal(out, m.generator(x, z=z)[0]), direction


# -- z codes and interpolation ------------------------------------------------------------------------

def test_z_codes_follow_the_rule():
    g = torch.Generator().manual_seed(0)
    for direction, on in (("a2b", slice(0, 32)), ("b2a", slice(32, 64))):
        z = make_z(direction, 20000, g)
        assert z.shape == (20000, 64)
        off = slice(32, 64) if on.start == 0 else slice(0, 32)
        assert abs(float(z[:, on].mean()) - 1.0) < 0.01
        assert abs(float(z[:, off].mean())) < 0.01
        assert abs(float((z[:, on] - 1).std()) - 0.2) < 0.01 and abs(float(z[:, off].std()) - 0.2) < 0.01
    with pytest.raises(ValueError):
        make_z("a2c", 1)


def test_interpolation_endpoints_are_the_translations():
    torch.manual_seed(0)
    m = MorphUGATIT(dict(NET, morph_config="C")).eval()
    m.z_generator = torch.Generator().manual_seed(1)
    x = _images(7)
    w_ab, w_ba = w_codes(m, samples=4)
    frames = morph_frames(m, x, w_ba, w_ab, 6)
    assert len(frames) == 6
    with torch.no_grad():
        assert torch.equal(frames[0], m.generate_b2a(x, w=w_ba)[0])
        assert torch.equal(frames[-1], m.generate_a2b(x, w=w_ab)[0])
        assert torch.equal(frames[2], m.translate_w(x, lerp(w_ba, w_ab, 2 / 5)))
    s = smoothness(frames)
    assert s["smoothness"] >= 1.0 and len(s["changes"]) == 5
    assert smoothness([x, x + 0.1, x + 0.2])["smoothness"] == pytest.approx(1.0, rel=1e-5)


# -- training ------------------------------------------------------------------------------------------

def test_short_config_C_training_lowers_losses(demo_root, tmp_path):
    cfg = _train_cfg(str(tmp_path), iteration=40, lr=0.0005)
    out = train(cfg, seed=0, base=demo_root, log=lambda s: None)
    h = out["history"]
    assert len(h) == 40

    def mean(key, part):
        return float(np.mean([r[key] for r in part]))
    first, last = h[:8], h[-8:]
    recon = lambda part: float(np.mean([r["G_A_cycle"] + r["G_B_cycle"] + r["G_A_identity"] + r["G_B_identity"]
                                        for r in part]))
    assert mean("g_loss", last) < mean("g_loss", first)
    assert recon(last) < recon(first)
    assert mean("d_loss", last) < mean("d_loss", first)


def test_resume_continues_exactly(demo_root, tmp_path):
    full = train(_train_cfg(str(tmp_path / "full"), epoch=2), seed=3, base=demo_root, log=lambda s: None)
    part = _train_cfg(str(tmp_path / "part"))
    train(part, seed=3, base=demo_root, log=lambda s: None)
    resumed = train(dict(part, epoch=2), seed=3, base=demo_root, log=lambda s: None)
    assert len(resumed["history"]) == 2 and resumed["history"][0]["counter"] == 3
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k


def test_init_from_ugatit_and_kind_errors(demo_root, tmp_path, capsys):
    torch.manual_seed(0)
    port = UGATIT(NET)
    from safetensors.torch import save_file
    f = str(tmp_path / "ugatit.safetensors")
    save_file({k: v.contiguous() for k, v in port.state_dict().items()}, f)
    m = MorphUGATIT(dict(NET, morph_config="C"))
    fresh = init_from_ugatit(m, f)
    assert fresh and all(k.startswith(("generator.mapping.", "generator.style_")) for k in fresh)
    assert torch.equal(m.generator.conv.weight, port.generator_B.conv.weight)
    assert torch.equal(m.generator.up_conv_1.weight, port.generator_B.up_conv_1.weight)
    assert torch.equal(m.discriminator_A.local.conv_0.weight, port.discriminator_A.local.conv_0.weight)
    # a UGATIT (torch_port) checkpoint folder where a Morph one is needed
    folder = str(tmp_path / "ugatit_ckpt")
    ckpt.save(folder, "UGATIT", 1, port, {"counter": 1, "config": ckpt.plain_config(port.config)})
    rc = morph_main(["interpolate", "--checkpoint", folder, "--input", os.path.join(demo_root, "dataset", "demo",
                                                                                     "testA"), "--result_dir", str(tmp_path)])
    assert rc == 2
    assert "a UGATIT checkpoint of the PyTorch port" in capsys.readouterr().err
    # a Morph checkpoint given to --init_from
    cfg = _train_cfg(str(tmp_path / "m"))
    out = train(cfg, seed=0, base=demo_root, log=lambda s: None)
    with pytest.raises(CheckpointKindError, match="Morph-UGATIT checkpoint"):
        init_from_ugatit(MorphUGATIT(dict(NET, morph_config="C")), out["checkpoint_dir"])
    # a port checkpoint records its config: settings the weights do not fix are checked against it,
    # as a TF checkpoint's .meta is (the folder, and its weights file)
    for given in (dict(smoothing=not NET["smoothing"]), dict(img_size=NET["img_size"] * 2)):
        for source in (folder, os.path.join(folder, "UGATIT.model-1.safetensors")):
            with pytest.raises(ckpt.CheckpointMismatch, match=f"--{next(iter(given))} .*the checkpoint records"):
                init_from_ugatit(MorphUGATIT(dict(NET, morph_config="C", **given)), source)
    assert init_from_ugatit(MorphUGATIT(dict(NET, morph_config="C")), folder)  # the recorded settings: fine


# -- CLI -----------------------------------------------------------------------------------------------

def _cli_flags(root):
    return ["--dataset", "demo", "--img_size", str(SIZE), "--ch", str(CH), "--n_dis", str(N_DIS), "--light", "True",
            "--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
            "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples"), "--device", "cpu"]


def test_cli_train_interpolate_translate_end_to_end(demo_root, tmp_path, capsys):
    root = str(tmp_path)
    flags = _cli_flags(root)
    rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "2", "--data_root", demo_root] + flags)
    assert rc == 0
    test_a = os.path.join(demo_root, "dataset", "demo", "testA")
    rc = morph_main(["interpolate", "--config", "C", "--input", test_a, "--steps", "6", "--samples", "4"] + flags)
    assert rc == 0
    out_dir = os.path.join(root, "results", os.path.basename(morph_paths(
        opt.config_from(dataset="demo", morph_config="C", **NET)).checkpoint))
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(test_a))
    for n in names:
        assert os.path.isfile(os.path.join(out_dir, f"{n}_strip.png"))
        from PIL import Image
        with Image.open(os.path.join(out_dir, f"{n}.gif")) as im:
            assert im.n_frames == 7  # the input, then 6 frames
        with open(os.path.join(out_dir, f"{n}_smoothness.json")) as fh:
            assert json.load(fh)["smoothness"] >= 1.0
    import cv2
    strip = cv2.imread(os.path.join(out_dir, f"{names[0]}_strip.png"))
    band = max(12, SIZE // 6)  # the caption band above each tile
    assert strip.shape == (SIZE + band, SIZE * 7, 3)
    # the first tile is the input as the port's test preprocessing reads it, the rest the frames
    from morph.interpolate import load_input
    from ugatit_common.results import to_uint8
    x = to_uint8(load_input(os.path.join(test_a, sorted(os.listdir(test_a))[0]), SIZE)[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(strip[band:, :SIZE, ::-1], x)
    assert strip[:band].any() and not np.array_equal(strip[band:, SIZE:2 * SIZE, ::-1], x)
    page = open(os.path.join(out_dir, "index.html")).read()
    assert page.count("<tr><td>") == len(names) and "smoothness" in page and "per-step change" in page
    assert "smoothness" in capsys.readouterr().out
    rc = morph_main(["translate", "--config", "C", "--input", test_a, "--direction", "a2b", "--samples", "3"] + flags)
    assert rc == 0
    assert os.path.isfile(os.path.join(out_dir, f"{names[0]}_a2b_2.png"))

    # bad inputs: exit code 2 with a clear message
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    cases = [
        (["translate", "--config", "C", "--input", test_a, "--direction", "x2y"], "direction"),
        (["interpolate", "--config", "C", "--input", test_a, "--steps", "1"], "steps"),
        (["interpolate", "--config", "C", "--input", str(bad)], "cannot read image"),
        (["interpolate", "--config", "C", "--input", str(tmp_path / "missing.png")], "no such file"),
        (["interpolate", "--config", "B", "--input", test_a], "does not exist"),
        (["interpolate", "--config", "A", "--input", test_a], "needs a config-C checkpoint"),
    ]
    assert morph_main(["train", "--config", "A", "--epoch", "1", "--iteration", "1", "--data_root", demo_root]
                      + flags) == 0
    for argv, words in cases:
        capsys.readouterr()
        try:
            rc = morph_main(argv + flags)
        except SystemExit as e:  # argparse's usage error (a flag's choices: --direction)
            rc = e.code
        assert rc == 2, argv
        assert words in capsys.readouterr().err, argv


def test_cli_subprocess_usage_error():
    r = subprocess.run([sys.executable, "-m", "morph", "train", "--config", "D"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--config" in r.stderr


def test_translate_names_the_direction_flag(tmp_path):
    """`morph translate --direction x2y` names the flag and its choices, as the port does, before any
    checkpoint is read (it said "direction must be 'a2b' or 'b2a'", without the flag's name)."""
    r = subprocess.run([sys.executable, "-m", "morph", "translate", "--checkpoint", str(tmp_path / "none"),
                        "--input", str(tmp_path), "--direction", "x2y"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == ("python -m morph translate: error: argument --direction: invalid choice: "
                                         "'x2y' (choose from 'a2b', 'b2a')"), r.stderr


# -- an official TF checkpoint as the starting point ------------------------------------------------------

GOLDEN_NET = dict(light=True, ch=4, n_res=4, n_dis=5, img_size=64, sn=True, smoothing=True)  # record.json


def _golden_tf_values(folder):
    """{torch name: tensor} read straight from the official checkpoint (numpy reader + layout rule)."""
    import weights_convert as wc
    from torch_port.tf_bundle import BundleReader
    with BundleReader(folder) as r:
        return {wc.tf_to_torch_name(n): torch.from_numpy(wc.to_torch_layout(n, r.read(n))) for n in r.keys()
                if n.startswith(("generator_", "discriminator_")) and not n.endswith(wc.SLOT_SUFFIXES)}


@pytest.mark.parametrize("config", ["A", "C"])
def test_init_from_official_tf_checkpoint(config):
    from parity_tests.conftest import GOLDEN
    folder = os.path.join(GOLDEN, "final")
    tf_vals = _golden_tf_values(folder)
    m = MorphUGATIT(dict(GOLDEN_NET, morph_config=config))
    fresh = init_from_ugatit(m, folder)
    own = m.state_dict()
    if config == "A":  # two generators, every variable from the checkpoint
        assert fresh == []
        for k, v in tf_vals.items():
            assert torch.equal(own[k], v), k
    else:  # one shared generator from generator_B; latent MLP and style maps stay fresh
        assert fresh and all(k.startswith(("generator.mapping.", "generator.style_")) for k in fresh)
        n = 0
        for k, v in tf_vals.items():
            if k.startswith("generator_B.") and not k.startswith("generator_B.MLP."):
                assert torch.equal(own["generator." + k[len("generator_B."):]], v), k
                n += 1
            elif k.startswith("discriminator_"):
                assert torch.equal(own[k], v), k
                n += 1
        assert n > 100


def test_cli_train_init_from_official_tf_checkpoint(tmp_path, capsys):
    from parity_tests.conftest import GOLDEN
    root = str(tmp_path)
    make_demo_dataset(root, "demo", 64, n_train=2, n_test=1)
    flags = ["--dataset", "demo", "--img_size", "64", "--ch", "4", "--n_dis", "5", "--light", "True",
             "--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
             "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples"),
             "--device", "cpu", "--data_root", root]
    rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1",
                     "--init_from", os.path.join(GOLDEN, "final")] + flags)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "initialised from UGATIT" in out and "(TensorFlow;" in out
    # the wrong architecture for that checkpoint: a clear error before any training, and before
    # anything in the run's folders changes (the first run's loss log and samples, in the same
    # log / sample folders, were moved to previous-run-* by the refused run, and its own folders made)
    def tree():  # every file and folder but the data set's
        return sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, ns in os.walk(root) for n in ds + ns
                      if not os.path.relpath(os.path.join(d, n), root).startswith("dataset"))
    before = tree()
    good_checkpoint_dir = flags[flags.index("--checkpoint_dir") + 1]
    flags[flags.index("--ch") + 1] = "8"
    flags[flags.index("--checkpoint_dir") + 1] = os.path.join(root, "checkpoint2")
    rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1",
                     "--init_from", os.path.join(GOLDEN, "final")] + flags)
    assert rc == 2
    assert "does not match" in capsys.readouterr().err
    assert tree() == before
    # --resume False over the first run's checkpoints: refused before they are moved aside
    flags[flags.index("--checkpoint_dir") + 1] = good_checkpoint_dir
    rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--resume", "False",
                     "--init_from", os.path.join(GOLDEN, "final")] + flags)
    assert rc == 2 and "does not match" in capsys.readouterr().err
    assert tree() == before


# -- the training CLI's loss flags and folder names, an --init_from start's latent variables ---------------

def test_cli_loss_flags_reach_the_run_and_name_its_folder(demo_root, tmp_path, monkeypatch):
    """`python -m morph train --config B --idp_weight 2.5 --g_cam False --precision bf16 --compile
    True --seed 9`: the run trains with those settings (its checkpoint records them; torch.compile itself
    stubbed: the slow tier compiles for real) in `<official model_dir>_morphB_idp2.5_nogcam`, so
    runs that differ in a loss never share (and resume) a folder; config A has no
    identity-preserving loss, so its folder has no _idp part; defaults add nothing."""
    from torch_port import train_compile
    compiled = []
    monkeypatch.setattr(train_compile, "compile_model", lambda model, backend=None: compiled.append(model) or ([], []))
    from morph.train import morph_model_dir
    cfg = opt.config_from(dataset="demo", **NET)
    base = opt.model_dir(cfg)
    assert morph_model_dir(dict(cfg, morph_config="C")) == base + "_morphC"
    assert morph_model_dir(dict(cfg, morph_config="A", idp_weight=3.0)) == base + "_morphA"
    assert morph_model_dir(dict(cfg, morph_config="C", idp_weight=0.5)) == base + "_morphC_idp0.5"
    assert morph_model_dir(dict(cfg, morph_config="A", g_cam=False)) == base + "_morphA_nogcam"
    root = str(tmp_path)
    rc = morph_main(["train", "--config", "B", "--idp_weight", "2.5", "--g_cam", "False", "--epoch", "1",
                     "--iteration", "1", "--precision", "bf16", "--compile", "True", "--seed", "9", "--data_root", demo_root]
                    + _cli_flags(root))
    assert rc == 0
    folders = os.listdir(os.path.join(root, "checkpoint"))
    assert folders == [base + "_morphB_idp2.5_nogcam"], folders
    _, _, state = ckpt.find_latest(os.path.join(root, "checkpoint", folders[0]))
    assert state["config"]["idp_weight"] == 2.5 and state["config"]["g_cam"] is False
    assert state["config"]["seed"] == 9
    assert state["morph_config"] == "B" and state["precision"] == "bf16" and state["compile"] is True
    assert len(compiled) == 1


def test_init_from_keeps_the_runs_seeded_latent_variables(demo_root, tmp_path):
    """Config C from a UGATIT checkpoint: the shared generator and the discriminators are the
    checkpoint's, and the latent MLP and style maps (which it lacks) start as a run without
    --init_from at the same seed starts them, whatever the process's random state was before."""
    from morph.train import MorphTrainer
    torch.manual_seed(0)
    port = UGATIT(NET)
    from safetensors.torch import save_file
    f = str(tmp_path / "ugatit.safetensors")
    save_file({k: v.contiguous() for k, v in port.state_dict().items()}, f)
    starts = {}

    class Snapshot(MorphTrainer):
        def wrap_steps(self, d_step, g_step):  # called once, after start_fresh, before the first step
            starts[self.init_from] = {k: v.clone() for k, v in self.model.state_dict().items()}
            return super().wrap_steps(d_step, g_step)
    for name, init_from in (("plain", None), ("init", f)):
        torch.manual_seed(1234)  # the process's state before the run: no part of the run's
        Snapshot(_train_cfg(str(tmp_path / name), iteration=1), "cpu", init_from=init_from, seed=5, base=demo_root,
                 log=lambda s: None).run()
    plain, init = starts[None], starts[f]
    latent = [k for k in plain if k.startswith(("generator.mapping.", "generator.style_"))]
    assert latent and all(torch.equal(init[k], plain[k]) for k in latent), latent
    assert torch.equal(init["generator.conv.weight"], port.generator_B.conv.weight)
    assert torch.equal(init["discriminator_B.global.conv_0.weight"], port.discriminator_B.get_submodule(
        "global.conv_0").weight)


def test_cli_interpolate_and_translate_follow_their_flags(demo_root, tmp_path):
    """`interpolate --steps 3 --samples 2 --seed 7` and `translate --direction b2a --samples 2
    --seed 7` write what their flags define, recomputed here from the definitions with the
    checkpoint's networks: z = 0.2 N(0, 1) (+1 on the direction's half) drawn from a generator
    seeded with --seed (interpolate: the 2 A->B codes, then the 2 B->A codes; translate: one fresh
    code per sample), w = MLP(z), w_ab / w_ba the means, frame t = G(x, w_ba + t (w_ab - w_ba)) for
    t = 0, 1/2, 1; the strip shows the input then the frames; translate writes
    `<name>_b2a_<k>.png`, k = 0, 1, and a row picture of the input and the two samples. Tolerance:
    one 8-bit level (the same float32 operations; PNGs hold rounded levels)."""
    import cv2
    from morph.interpolate import load_input
    from morph.loading import load
    from ugatit_common.results import to_uint8
    root = str(tmp_path)
    flags = _cli_flags(root)
    assert morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--data_root", demo_root]
                      + flags) == 0
    folder = morph_paths(opt.config_from(dataset="demo", morph_config="C", checkpoint_dir=os.path.join(
        root, "checkpoint"), **NET)).checkpoint
    model, _ = load(folder)
    test_a = os.path.join(demo_root, "dataset", "demo", "testA")
    first = sorted(os.listdir(test_a))[0]
    name = os.path.splitext(first)[0]
    x = load_input(os.path.join(test_a, first), SIZE)
    gen = model.generator

    def draw(g, direction, n):
        z = torch.randn(n, gen.z_dim, generator=g) * 0.2
        half = gen.z_dim // 2
        if direction == "a2b":
            z[:, :half] += 1.0
        else:
            z[:, half:] += 1.0
        return z

    def image(w):
        with torch.no_grad():
            return to_uint8(gen(x, w=w)[0][0].permute(1, 2, 0).numpy()).astype(int)

    def read(path):
        return cv2.imread(path)[:, :, ::-1].astype(int)
    out_dir = os.path.join(root, "results", os.path.basename(folder))
    assert morph_main(["interpolate", "--input", os.path.join(test_a, first), "--steps", "3", "--samples", "2",
                       "--seed", "7"] + flags) == 0
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        w_ab = gen.w_from_z(draw(g, "a2b", 2)).mean(0, keepdim=True)
        w_ba = gen.w_from_z(draw(g, "b2a", 2)).mean(0, keepdim=True)
    strip = read(os.path.join(out_dir, f"{name}_strip.png"))
    band = max(12, SIZE // 6)
    assert strip.shape == (SIZE + band, SIZE * 4, 3)
    tiles = [strip[band:, i * SIZE:(i + 1) * SIZE] for i in range(4)]
    assert np.abs(tiles[0] - to_uint8(x[0].permute(1, 2, 0).numpy()).astype(int)).max() == 0
    for tile, t in zip(tiles[1:], (0.0, 0.5, 1.0)):
        assert np.abs(tile - image(w_ba + t * (w_ab - w_ba))).max() <= 1, t
    with open(os.path.join(out_dir, f"{name}_smoothness.json")) as fh:
        fig = json.load(fh)
    assert fig["t"] == [0.0, 0.5, 1.0] and fig["samples"] == 2 and len(fig["changes"]) == 2

    assert morph_main(["translate", "--input", os.path.join(test_a, first), "--direction", "b2a", "--samples", "2",
                       "--seed", "7"] + flags) == 0
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        expected = [image(gen.w_from_z(draw(g, "b2a", 1))) for _ in range(2)]
    assert not np.array_equal(expected[0], expected[1])  # two samples, two codes
    for k in range(2):
        assert np.abs(read(os.path.join(out_dir, f"{name}_b2a_{k}.png")) - expected[k]).max() <= 1, k
    row = read(os.path.join(out_dir, f"{name}_b2a_samples.png"))
    assert row.shape[:2] == (SIZE, 3 * SIZE)
    assert np.abs(row[:, :SIZE] - to_uint8(x[0].permute(1, 2, 0).numpy()).astype(int)).max() == 0
    for k in range(2):
        assert np.abs(row[:, (k + 1) * SIZE:(k + 2) * SIZE] - expected[k]).max() <= 1, k


def test_cli_demo_steps_flag(tmp_path):
    """`python -m morph demo DIR --steps 3`: every strip, GIF and smoothness figure of the demo has
    3 frames (t = 0, 1/2, 1) after the input."""
    from PIL import Image
    assert morph_main(["demo", str(tmp_path), "--iterations", "1", "--img_size", "64", "--steps", "3",
                       "--device", "cpu"]) == 0
    res = tmp_path / "results" / "morph"
    figures = sorted(res.glob("*_smoothness.json"))
    assert figures
    for f in figures:
        assert json.loads(f.read_text())["t"] == [0.0, 0.5, 1.0], f
        with Image.open(str(f).replace("_smoothness.json", ".gif")) as im:
            assert im.n_frames == 4  # the input, then 3 frames


def test_cli_demo_refuses_bad_flags_and_folders_before_writing(tmp_path, capsys):
    """`python -m morph demo DIR` with a size or width its model cannot have, or a DIR that is a
    file: one error line naming the flag / DIR, exit 2, and no data set left behind (it was
    written before the check; a DIR that is a file gave a bare OSError text)."""
    for flags, words in ((["--img_size", "32"], "--img_size=32"), (["--ch", "0"], "--ch=0")):
        target = tmp_path / f"demo{flags[0]}"
        capsys.readouterr()
        assert morph_main(["demo", str(target), "--iterations", "1", "--device", "cpu"] + flags) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not target.exists(), sorted(os.listdir(target))
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert morph_main(["demo", str(a_file), "--iterations", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "DIR" in err and str(a_file) in err and "not writable" in err, err
    assert a_file.read_text() == "mine"


def test_cli_unwritable_result_dir_is_named(demo_root, tmp_path, capsys):
    """interpolate / translate with a --result_dir that cannot be a folder (a file is there, or
    above it): one error line naming --result_dir, exit 2, as the port's test phase says it (it
    was a bare OSError text, without the flag)."""
    root = str(tmp_path)
    flags = _cli_flags(root)
    assert morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--data_root", demo_root]
                      + flags) == 0
    ckpt_folder = morph_paths(opt.config_from(dataset="demo", morph_config="C", checkpoint_dir=root + "/checkpoint",
                                              **NET)).checkpoint
    test_a = os.path.join(demo_root, "dataset", "demo", "testA")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for out in (str(a_file), str(a_file / "sub")):
        for argv in (["interpolate", "--steps", "2", "--samples", "1"], ["translate", "--direction", "a2b"]):
            capsys.readouterr()
            assert morph_main(argv + ["--checkpoint", ckpt_folder, "--input", test_a, "--result_dir", out,
                                      "--device", "cpu"]) == 2, (argv, out)
            err = capsys.readouterr().err
            assert "error: --result_dir" in err and "not writable" in err and len(err.strip().splitlines()) == 1, err
    assert a_file.read_text() == "mine"


def test_cli_train_resume_false_starts_afresh(demo_root, tmp_path, capsys):
    """`python -m morph train --resume False` over a finished run: the older run is moved aside
    (previous-run-<time>/) and iteration 1 is trained again (with the same seed: to the same
    weights), instead of resuming it (which, with its iterations done, would train nothing)."""
    root = str(tmp_path)
    argv = ["train", "--config", "C", "--epoch", "1", "--iteration", "1", "--data_root", demo_root] + _cli_flags(root)
    assert morph_main(argv) == 0
    folder = morph_paths(opt.config_from(dataset="demo", morph_config="C", checkpoint_dir=os.path.join(
        root, "checkpoint"), **NET)).checkpoint
    first = ckpt.find_latest(folder)[1]
    capsys.readouterr()
    assert morph_main(argv + ["--resume", "False"]) == 0
    assert "Epoch: [ 0] [    0/    1]" in capsys.readouterr().out  # the iteration ran again
    assert any(n.startswith("previous-run-") for n in os.listdir(folder)), os.listdir(folder)
    step, weights, _ = ckpt.find_latest(folder)
    assert step == 2 and all(torch.equal(weights[k], first[k]) for k in first)


def test_config_C_direction_codes_are_served_as_host_draws():
    """Config C's steps draw their direction codes z on the host (`MorphUGATIT.make_z`); under CUDA
    graphs such a draw must be served from fixed tensors (`Trainer.host_draws`), or every replay
    would reuse the codes of the recording (the full tier's emulated replays catch that end to end:
    test_train_graphs.py). Configs A / B draw none."""
    from morph.train import MorphTrainer
    t = MorphTrainer.__new__(MorphTrainer)  # the seam alone, no run
    t.model = MorphUGATIT(dict(NET, morph_config="C"))
    assert t.host_draws() == [(t.model, "make_z")]
    for config in ("A", "B"):
        t.model = MorphUGATIT(dict(NET, morph_config=config))
        assert t.host_draws() == []


def test_generator_codes_are_checked_and_taken_in_the_layers_dtype():
    """`fast(x, z=z)` / `fast(x, w=w)` (README "Fast paths"): a code of another float dtype was
    `mat1 and mat2 must have the same dtype` (the port's own layers cast their input: x in
    float64 worked, z from `make_z(..., dtype=torch.float64)` did not), and a code whose batch is
    not the picture batch `shape '[2, 16, 1, 1]' is invalid for input of size 16` from inside
    AdaLIN. Now a code is cast to its layers' dtype (the result is the float32 code's, bit for
    bit) and a code of the wrong shape or kind is a ValueError naming [B, z_dim] / [B, w_dim]."""
    from torch_port import optimize
    torch.manual_seed(0)
    g = MorphGenerator(ch=CH, n_res=4, img_size=SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    z64 = make_z("a2b", 2, torch.Generator().manual_seed(1), dtype=torch.float64)
    z = z64.float()
    with torch.no_grad():
        w = g.w_from_z(z)
        want = g(x, z=z)
        for got in (g(x, z=z64), g(x, w=w.double()), g(x, w=w)):
            for a, b in zip(got, want):
                assert torch.equal(a, b)
    for net in (g, optimize(g, "bf16")):
        for kw in (dict(z=z[:1]), dict(z=torch.cat([z, z])), dict(z=z[0]), dict(z=torch.zeros(2, 10)),
                   dict(w=w[:, :8]), dict(z=z.numpy()), dict(z=(z > 0))):
            with pytest.raises(ValueError, match=r"must be a float tensor \[B, (64|256)\], one row per picture"):
                net(x, **kw)


def test_generator_checks_its_pictures_as_the_ports_generator_does():
    """MorphGenerator.forward runs the port Generator's input check (`check_input`) before its
    own code check: without it a uint8 batch was translated as if it were in [-1, 1], a 14 px one
    gave 12 px back and a grayscale one a bare convolution error. Each is now the port's
    TypeError / ValueError naming the expected [B, 3, H, W] layout, as for the plain generator."""
    torch.manual_seed(0)
    g = MorphGenerator(ch=CH, n_res=4, img_size=SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    z = make_z("a2b", 2, torch.Generator().manual_seed(1))
    for inp in (((x + 1) * 127.5).to(torch.uint8), x > 0, x[..., :14, :14], x[:, :1], x.permute(0, 2, 3, 1)):
        with pytest.raises((TypeError, ValueError), match=r"^MorphGenerator expects a float tensor \[B, 3, H, W\]"):
            g(inp, z=z)

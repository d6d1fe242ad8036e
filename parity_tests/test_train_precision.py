"""`--precision bf16|fp16` training (torch_port.train_precision through the trainer's `wrap_steps`
seam): the losses follow float32 training's within a stated band, the split of dtypes is the
stated one (reduced-precision convolutions; float32 norms, spectral norm, CAM, dense layers,
output convolutions and losses), master weights, Adam state and checkpoints stay float32, fp16's
loss scaling skips overflowing steps without touching the optimizer, and resume, NaN stop and
the 2N = N + resume + N property hold in every precision."""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from torch_port import checkpoint as ckpt
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

NET = dict(light=True, img_size=32, ch=4, n_dis=4, n_res=4, sn=True, smoothing=True)
ITERATIONS = 8
# Measured (light, 32 px, ch 4, lr 2e-4, seed 1, 8 iterations, this CPU): bf16 vs fp32 relative
# difference of d_loss at most 1.2e-3, of g_loss at most 1.7e-2 (it grows with the iterations as
# the two runs' weights drift apart). Bands: 5x the d figure, 3x the g figure. fp16 measured
# 1.8e-3 / 1.9e-2 (the drift of the weights dominates, not the format's 11 vs 8 mantissa bits).
D_BAND, G_BAND = 6e-3, 5e-2
# fp16 from GradScaler's initial scale 2^16 skips this model's first steps (the official
# cam_weight 1000 makes its gradients large): natively G settles at 16 after 12 skips. The band
# run starts at 16 so that fp16's rounding, not the skipped warm-up, is compared; 16 is at the
# edge (under AVX2 kernels one G step overflowed and the scale went on at 8), so at most one
# skip is allowed. Lower scales underflow: starting at 8, D's loss drifted 5.3e-3-7.2e-3 from
# fp32's (1.8e-3 at 16), through the generator's underflowing gradients.
SETTLED_SCALE = 16.0


def _config(name, **kw):
    return opt.config_from(**{**dict(dataset="demo", epoch=1, iteration=ITERATIONS, print_freq=1000, save_freq=1000,
                                     decay_flag=False, augment_flag=False, lr=0.0002, checkpoint_dir=f"ck_{name}",
                                     result_dir="res", log_dir=f"logs_{name}", sample_dir="samples"), **NET, **kw})


@contextlib.contextmanager
def demo_folder(root: str, n_train: int = 4):
    """The demo data set in `root`, which becomes the working directory, one CPU thread."""
    make_demo_dataset(root, "demo", 32, n_train=n_train, n_test=1)
    cwd, n = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        yield root
    finally:
        os.chdir(cwd)
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from torch_port import train_precision
    from torch_port.train import train
    root = str(tmp_path_factory.mktemp("precision"))
    init = train_precision.LOSS_SCALE_INIT
    with demo_folder(root):
        try:
            out = {}
            for name, prec, seed in (("fp32", "fp32", 1), ("bf16", "bf16", 1), ("fp16", "fp16", 1),
                                     ("fp32_seed2", "fp32", 2)):
                cfg = _config(name)
                train_precision.LOSS_SCALE_INIT = SETTLED_SCALE if prec == "fp16" else init
                out[name] = train(cfg, torch.device("cpu"), seed=seed, precision=prec)
                out[name]["folder"] = os.path.join(root, f"ck_{name}", opt.model_dir(cfg))
            return out
        finally:
            train_precision.LOSS_SCALE_INIT = init


def _worst(a, b, key):
    return max(abs(x[key] - y[key]) / abs(x[key]) for x, y in zip(a["steps"], b["steps"]))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_losses_follow_fp32_within_the_band(runs, precision):
    assert len(runs[precision]["steps"]) == ITERATIONS
    d, g = _worst(runs["fp32"], runs[precision], "d_loss"), _worst(runs["fp32"], runs[precision], "g_loss")
    print(f"{precision} vs fp32, worst relative loss difference: d {d:.2e} g {g:.2e}")
    assert d <= D_BAND and g <= G_BAND, (d, g)
    assert d > 0 and g > 0  # it did run in reduced precision
    if precision == "fp16":  # no step was skipped at the settled scale
        scales = [r["G_loss_scale"] for r in runs["fp16"]["steps"]]
        assert set(scales) <= {SETTLED_SCALE, SETTLED_SCALE / 2} and scales[0] == SETTLED_SCALE, scales
        assert {r["D_loss_scale"] for r in runs["fp16"]["steps"]} == {SETTLED_SCALE}
    # the band tells runs apart: float32 from another seed (other initial weights) leaves it
    d2, g2 = _worst(runs["fp32"], runs["fp32_seed2"], "d_loss"), _worst(runs["fp32"], runs["fp32_seed2"], "g_loss")
    assert d2 > D_BAND or g2 > G_BAND, (d2, g2)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_checkpoint_weights_and_adam_state_stay_float32(runs, precision):
    step, weights, state = ckpt.find_latest(runs[precision]["folder"])
    assert step == ITERATIONS + 1 and state["precision"] == precision
    assert ("loss_scale" in state) == (precision == "fp16")
    assert all(v.dtype == torch.float32 for v in weights.values())
    for name in ("G_optim", "D_optim"):
        assert all(t.dtype == torch.float32 for part in ("m", "v") for t in state[name][part].values())
    assert all(p.dtype == torch.float32 for p in runs[precision]["model"].parameters())


def test_bf16_step_dtypes(tmp_path):
    """Inside a bf16 G step: the generators' encoder / residual / up-sampling convolutions give
    bfloat16, every norm, CAM, dense layer and output convolution float32; the loss terms and the
    spectral-norm `u` buffers are float32; gradients reach the float32 master weights."""
    from torch_port import build_ugatit
    from torch_port.train import Trainer
    from torch_port.train_precision import float32_modules
    torch.manual_seed(0)
    model = build_ugatit(dict(NET, ch=2))
    model.make_optimizers(1e-4)
    trainer = Trainer.__new__(Trainer)  # the seam alone, no run
    trainer.precision, trainer.compile, trainer.device, trainer.model = "bf16", False, torch.device("cpu"), model
    _, g_step = trainer.wrap_steps(model.d_step, model.g_step)
    islands = {n for n, _ in float32_modules(model)}
    seen = {}

    def hook(name):
        def record(module, args, out):
            first = out[0] if isinstance(out, tuple) else out
            seen[name] = first.dtype
        return record
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and not list(m.children())]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    out = g_step(torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, 1e-4)
    for h in handles:
        h.remove()
    assert seen["generator_B.conv_0"] == seen["generator_A.resblock_0.res1.conv_0"] == torch.bfloat16
    assert seen["generator_B.up_conv_1"] == seen["generator_A.conv_1x1"] == torch.bfloat16
    # (a spectral-norm convolution also runs in bfloat16; its float32 bias, added after dividing by
    # sigma, makes its output float32)
    assert all(seen[n] == torch.float32 for n in islands if n in seen), {n: seen[n] for n in islands if n in seen}
    assert seen["generator_B.G_logit"] == seen["discriminator_B.global.D_logit"] == torch.float32
    assert out["fake_B"].dtype == torch.float32 and isinstance(out["Generator_loss"], float)
    after = model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert not torch.equal(before["generator_B.conv_0.weight"], after["generator_B.conv_0.weight"])


def test_loss_scaler_rule():
    """GradScaler's rule: unscale in place; a non-finite gradient halves the scale and counts a
    skip; `growth_interval` finite steps in a row double it; the state round-trips."""
    from torch_port.train_precision import LossScaler
    s = LossScaler(8.0, growth_interval=2)
    g = [torch.tensor([8.0, -16.0]), torch.tensor([4.0])]
    assert s.unscale_(g) and torch.equal(g[0], torch.tensor([1.0, -2.0])) and torch.equal(g[1], torch.tensor([0.5]))
    s.update(True)
    assert s.scale == 8.0
    s.update(True)
    assert s.scale == 16.0 and s.good_steps == 0
    assert not s.unscale_([torch.tensor([1.0, float("inf")])])
    s.update(False)
    assert (s.scale, s.good_steps, s.skipped) == (8.0, 0, 1)
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()


def test_fp16_overflowing_step_is_skipped_without_touching_the_optimizer():
    """An fp16 step whose scaled gradients overflow changes no weight, no Adam slot and no Adam
    power; the scale halves; the next step with a fitting scale updates."""
    from torch_port import build_ugatit
    from torch_port.train_precision import LossScaler, mixed_precision_steps
    torch.manual_seed(0)
    model = build_ugatit(NET)
    model.make_optimizers(2e-4)
    d_step, _ = mixed_precision_steps(model, model.d_step, model.g_step, "fp16", "cpu")
    model.D_optim.loss_scaler.load_state_dict(LossScaler(2.0 ** 60).state_dict())  # overflows float16 at once
    params = {k: v.clone() for k, v in model.named_parameters()}
    slots = {k: v.clone() for k, v in model.D_optim.named_slots().items()}
    powers = [p.clone() for p in model.D_optim.powers]
    g = torch.Generator().manual_seed(5)
    x, y = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    out = d_step(x, y, 2e-4)
    assert out["D_loss_scale"] == 2.0 ** 60 and model.D_optim.loss_scaler.scale == 2.0 ** 59
    assert model.D_optim.loss_scaler.skipped == 1
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    assert all(torch.equal(v, slots[k]) for k, v in model.D_optim.named_slots().items())
    assert all(torch.equal(a, b) for a, b in zip(model.D_optim.powers, powers))
    model.D_optim.loss_scaler.scale = SETTLED_SCALE
    d_step(x, y, 2e-4)
    assert model.D_optim.loss_scaler.skipped == 1
    assert not torch.equal(model.discriminator_A.get_submodule("global.conv_0").weight,
                           params["discriminator_A.global.conv_0.weight"])


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, precision):
    """2N iterations == N + resume + N, bit for bit, in bf16 and fp16 (fp16 from GradScaler's
    initial scale: its first steps are skipped, so the scales and skip counts must travel in the
    checkpoint for the runs to agree)."""
    from torch_port.train import train
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    monkeypatch.chdir(tmp_path)

    def run(name, epochs):
        cfg = _config(name, epoch=epochs, iteration=3, save_freq=3)
        return train(cfg, torch.device("cpu"), seed=1, precision=precision)
    whole = run("whole", 2)
    run("split", 1)
    split = run("split", 2)
    assert [r["counter"] for r in split["steps"]] == [4, 5, 6]
    assert [r["d_loss"] for r in split["steps"]] == [r["d_loss"] for r in whole["steps"][3:]]
    a, b = whole["model"].state_dict(), split["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for opt_name in ("G_optim", "D_optim"):
        wa, wb = getattr(whole["model"], opt_name), getattr(split["model"], opt_name)
        assert all(torch.equal(x, y) for x, y in zip(wa.powers, wb.powers))
        if precision == "fp16":
            assert wa.loss_scaler.state_dict() == wb.loss_scaler.state_dict()
    if precision == "fp16":
        assert whole["model"].G_optim.loss_scaler.skipped > 0  # the skipped warm-up was crossed


@pytest.mark.parametrize("precision,gan_type", [("bf16", "lsgan"), ("fp16", "lsgan"), ("fp16", "wgan-gp")])
def test_nan_stop_in_reduced_precision(tmp_path, monkeypatch, capsys, precision, gan_type):
    """A NaN loss stops a reduced-precision run with exit 3 (fp16: in a step its loss scaling did
    not skip - the hook's NaN stands for the model's, so with wgan-gp it stops although the early
    steps are skipped for the penalty's overflow), and the newest checkpoint is the last good one."""
    from torch_port.__main__ import main as port_main
    from torch_port.train import NAN_HOOK_ENV
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(NAN_HOOK_ENV, "2")
    rc = port_main(["--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--light", "True",
                    "--augment_flag", "False", "--iteration", "4", "--epoch", "1", "--save_freq", "1",
                    "--device", "cpu", "--precision", precision, "--gan_type", gan_type])
    err = capsys.readouterr().err
    assert rc == 3 and "step 2" in err, err
    folder = os.path.join("checkpoint", f"UGATIT_light_demo_{gan_type}_4resblock_4dis_1_1_10_10_1000_sn_smoothing")
    step, weights, state = ckpt.find_latest(folder)
    assert step == 2 and state["precision"] == precision
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("gan_type", ["wgan-gp", "dragan", "wgan-lp"])
def test_fp16_gradient_penalty_overflow_is_skipped_and_training_goes_on(tmp_path, monkeypatch, capsys, gan_type):
    """fp16 from GradScaler's 2^16 with a gradient penalty: its inner gradient, taken at the loss
    scale, overflows float16, so the D loss of the first steps is not finite. Those steps are
    skipped (weights unchanged) and the scale halved, as torch.amp does; the run says so in one
    line per step and trains on (it stopped at step 1 with exit 3 before), its later losses finite,
    its checkpoint finite. The record of every D step says whether it was skipped (steps with a
    finite loss are skipped too: an outer gradient overflowed, as in any fp16 run)."""
    from torch_port.train import train
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    out = train(_config("gp", gan_type=gan_type, iteration=16, save_freq=16), torch.device("cpu"), seed=1,
                precision="fp16")
    said = [l for l in capsys.readouterr().out.splitlines() if l.startswith(" [fp16] step")]
    assert said and all("discriminator loss" in l and "at loss scale" in l and "skipped" in l for l in said), said
    records = out["steps"]
    skipped = [r["counter"] for r in records if r["D_step_skipped"]]
    not_finite = [r["counter"] for r in records if not math.isfinite(r["d_loss"])]
    assert not_finite and not_finite == [int(l.split()[2].rstrip(":")) for l in said], (not_finite, said)
    assert set(not_finite) <= set(skipped) and skipped[-1] < 16, skipped  # then it trains
    scales = [r["D_loss_scale"] for r in records]
    assert scales[0] == 2.0 ** 16 and all(b == a / 2 for a, b, r in zip(scales, scales[1:], records)
                                           if r["D_step_skipped"])
    step, weights, _ = ckpt.find_latest(out["checkpoint_dir"])
    assert step == 17 and all(torch.isfinite(v).all() for v in weights.values())  # saved after 16 iterations


def test_fp16_a_forward_overflow_with_a_penalty_stops_at_once(tmp_path, monkeypatch, capsys):
    """fp16 with a gradient penalty tolerates a non-finite D loss only when it is the penalty's
    (its gradient taken at the loss scale): when the loss without the penalty is not finite
    either - the model's own forward overflowed, which no loss scale cures - the run stops at
    that step with exit 3 (it trained on, every D step skipped, up to MAX_SKIPS_IN_A_ROW). Here
    the adversarial terms overflow from the first step on."""
    from torch_port import model as port_model
    from torch_port.__main__ import main as port_main
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    real = port_model.discriminator_loss
    monkeypatch.setattr(port_model, "discriminator_loss", lambda *a: real(*a) * float("inf"))
    rc = port_main(["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
                    "--augment_flag", "False", "--iteration", "6", "--epoch", "1", "--save_freq", "6",
                    "--device", "cpu", "--precision", "fp16", "--gan_type", "wgan-gp"])
    got = capsys.readouterr()
    assert rc == 3 and "discriminator loss Discriminator_loss is" in got.err and "at step 1 " in got.err, got
    assert " [fp16] step" not in got.out, got.out


def test_fp16_a_forward_overflow_on_one_rank_stops_every_rank():
    """Under torchrun the values are averaged over the ranks: one rank of two whose forward
    overflowed makes `D_unpenalized_finite` 0.5, not 0 - still the model's overflow, not the
    penalty's: the run stops (it was tolerated as the penalty's)."""
    from torch_port.train import NonFiniteLoss, _check_finite
    values = {"Discriminator_loss": float("nan"), "D_step_skipped": 1.0, "D_loss_scale": 65536.0}
    said = []
    _check_finite(dict(values, D_unpenalized_finite=1.0), "discriminator", 1, {}, said.append, scaled_loss=True)
    assert said and "skipped" in said[0]
    for averaged in (0.5, 0.0):
        with pytest.raises(NonFiniteLoss, match="discriminator loss Discriminator_loss is nan at step 1"):
            _check_finite(dict(values, D_unpenalized_finite=averaged), "discriminator", 1, {}, said.append,
                          scaled_loss=True)


def test_fp16_skipped_losses_are_null_in_the_loss_log(tmp_path, monkeypatch):
    """Morph's `losses.jsonl` stays strict JSON when an fp16 step's D loss overflowed: the
    non-finite values are `null` (NaN would be Python-only JSON), named in the line's `non_finite`
    field (ugatit_common.strict_json)."""
    import json

    from morph.__main__ import main as morph_main
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    assert morph_main(["train", "--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light",
                       "True", "--augment_flag", "False", "--epoch", "1", "--iteration", "2", "--device", "cpu",
                       "--precision", "fp16", "--gan_type", "wgan-gp"]) == 0
    [log] = [os.path.join(d, f) for d, _, fs in os.walk("logs") for f in fs if f == "losses.jsonl"]

    def refuse(constant):
        raise AssertionError(f"{constant} in {log}")
    records = [json.loads(line, parse_constant=refuse) for line in open(log)]
    assert records[0]["D_step_skipped"] == 1 and records[0]["Discriminator_loss"] is None, records[0]
    assert records[0]["non_finite"]["/Discriminator_loss"] in ("NaN", "Infinity", "-Infinity"), records[0]
    assert all(isinstance(v, (int, float)) for r in records for k, v in r.items() if v is not None and k != "non_finite")


def test_fp16_steps_skipped_too_often_in_a_row_stop_the_run(tmp_path, monkeypatch, capsys):
    """An overflow that halving the scale does not cure (here: a scale starting at 2^40, the
    limit lowered to 3 skips in a row) stops the run with exit 3 naming fp16 and what to use
    instead; the newest checkpoint is the last one saved, finite."""
    from torch_port import train, train_precision
    from torch_port.__main__ import main as port_main
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_precision, "LOSS_SCALE_INIT", 2.0 ** 40)
    monkeypatch.setattr(train, "MAX_SKIPS_IN_A_ROW", 3)
    rc = port_main(["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
                    "--augment_flag", "False", "--epoch", "1", "--device", "cpu", "--precision", "fp16",
                    "--gan_type", "wgan-gp", "--iteration", "8", "--save_freq", "2"])
    err = capsys.readouterr().err
    assert rc == 3 and "overflowed float16 in 4 steps in a row, up to step 4" in err and "bf16" in err, err
    step, weights, _ = ckpt.find_latest(os.path.join(
        "checkpoint", "UGATIT_light_demo_wgan-gp_4resblock_4dis_1_1_10_10_1000_sn_smoothing"))
    assert step == 3 and all(torch.isfinite(v).all() for v in weights.values())  # saved after 2 iterations


def test_cli_precision_flags(tmp_path, monkeypatch, capsys):
    """bf16 and fp16 training on both command lines (fp16 on CPU warns that it is slow); an
    unknown precision is refused (exit 2)."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
             "--augment_flag", "False", "--iteration", "1", "--epoch", "1", "--device", "cpu"]
    for precision in ("bf16", "fp16"):
        assert port_main(flags + ["--precision", precision]) == 0
        assert morph_main(["train"] + flags + ["--precision", precision]) == 0
    for run, argv in ((port_main, flags + ["--precision", "fp8"]), (morph_main, ["train"] + flags + ["--precision", "int8"])):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run(argv)
        assert e.value.code == 2 and "--precision" in capsys.readouterr().err



@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: training fast paths on a GPU")
def test_cuda_training_fast_paths_follow_fp32(tmp_path, monkeypatch):
    """On CUDA: bf16, fp16 (loss scaling, from the settled scale) and fp32 + compile train, and
    their losses follow CUDA fp32 (TF32 off) within the CPU bands."""
    from torch_port import train_precision
    from torch_port.train import pick_device, train
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_precision, "LOSS_SCALE_INIT", SETTLED_SCALE)
    device = pick_device("cuda")
    runs = {name: train(_config(name), device, seed=1, precision=prec, compile=comp)
            for name, prec, comp in (("fp32", "fp32", False), ("bf16", "bf16", False), ("fp16", "fp16", False),
                                     ("fp32c", "fp32", True))}
    for name in ("bf16", "fp16", "fp32c"):
        d, g = _worst(runs["fp32"], runs[name], "d_loss"), _worst(runs["fp32"], runs[name], "g_loss")
        assert d <= D_BAND and g <= G_BAND, (name, d, g)


@pytest.mark.parametrize("gan_type", ["wgan-gp", "dragan"])
def test_fp16_gradient_penalty_scales_its_inner_gradient(gan_type):
    """fp16 with a gradient-penalty loss: the penalty's inner gradient (of the logits w.r.t. the
    interpolated images) runs back through float16 convolutions, so it is taken of the scaled
    logits and divided back (torch.amp's recipe). With nearly flat logits (the discriminators'
    logit weights x 1e-2) it underflows unscaled: the norm is 0, sqrt's gradient there makes every
    D gradient NaN, and fp16 would skip the step and halve the scale forever. Scaled (2^14), D's
    gradients are finite and follow float32's: measured relative difference (2-norm over all D
    gradients) 3.2e-3 wgan-gp, 1.7e-3 dragan; band 1e-2 (fp16's 11-bit rounding)."""
    import copy

    from torch_port import build_ugatit
    from torch_port.train_precision import mixed_precision_steps
    torch.manual_seed(0)
    base = build_ugatit(dict(NET, sn=False, gan_type=gan_type))
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.startswith("discriminator") and "logit" in name.lower():
                p.mul_(1e-2)
    g = torch.Generator().manual_seed(2)
    x, y = ((torch.rand(1, 3, 32, 32, generator=g) * 2 - 1) for _ in range(2))
    draws = {k: torch.rand(1, 1, 1, 1, generator=g) for k in ("alpha_A", "alpha_B")}
    draws.update({k: torch.rand(1, 3, 32, 32, generator=g) for k in ("noise_A", "noise_B")})

    def d_gradients(precision):
        m = copy.deepcopy(base)
        m.make_optimizers(2e-4)
        scale = 1.0
        if precision == "fp16":
            mixed_precision_steps(m, m.d_step, m.g_step, "fp16", "cpu")
            m.D_optim.loss_scaler.scale = scale = 2.0 ** 14
        params = [p for _, p in m.D_optim.named_params]
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16", cache_enabled=False):
            total, _ = m.discriminator_losses(x, y, draws)
            grads = torch.autograd.grad(total * scale, params, allow_unused=True)  # as _optimizer_update scales
        return torch.cat([torch.zeros(p.numel()) if q is None else q.flatten() / scale for q, p in zip(grads, params)])
    truth, fp16 = d_gradients("fp32"), d_gradients("fp16")
    assert torch.isfinite(truth).all() and truth.norm() > 0
    assert torch.isfinite(fp16).all(), "the penalty's inner gradient underflowed in float16"
    assert (fp16 - truth).norm() / truth.norm() <= 1e-2


# -- the policy, pinned from its statement (not from float32_modules / LossScaler themselves) --------------

def _float32_reference(module, args):
    """The module's own class forward on float32 copies of `args`, autocast off: what the policy
    says the layer computes in a reduced-precision step."""
    args = [a.detach().float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return type(module).forward(module, *args)


def test_bf16_float32_layers_compute_what_float32_computes():
    """In a bf16 D step and G step every instance norm, AdaLIN, LIN, CAM and dense layer, and each
    output convolution, gives (as float32) exactly what the layer's float32 forward gives on its
    inputs (the torch_port.train_precision docstring's list, written out here by class and scope
    name). Tolerance: 1e-6 relative (the same float32 operations on the same values; only an
    operation run in bfloat16, whose rounding is 2^-9 relative, breaks it)."""
    from torch_port import build_ugatit
    from torch_port.ops import LIN, AdaLIN, CAMLogit, Dense, InstanceNorm
    from torch_port.train_precision import mixed_precision_steps
    torch.manual_seed(0)
    model = build_ugatit(dict(NET, ch=2))
    model.make_optimizers(1e-4)
    d_step, g_step = mixed_precision_steps(model, model.d_step, model.g_step, "bf16", "cpu")
    policy = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (InstanceNorm, AdaLIN, LIN, CAMLogit, Dense)) or n.endswith(("G_logit", "D_logit"))]
    assert {type(m).__name__ for _, m in policy} >= {"InstanceNorm", "AdaLIN", "LIN", "CAMLogit", "Dense", "Conv"}
    worst, checked = {}, set()

    def hook(name):
        def compare(module, args, out):
            outs = out if isinstance(out, tuple) else (out,)
            ref = _float32_reference(module, args)
            refs = ref if isinstance(ref, tuple) else (ref,)
            for o, r in zip(outs, refs):
                assert o.dtype == torch.float32, (name, o.dtype)
                err = ((o.detach() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
                worst[name] = max(worst.get(name, 0.0), err)
            checked.add(name)
        return compare
    handles = [m.register_forward_hook(hook(n)) for n, m in policy]
    g = torch.Generator().manual_seed(3)
    x, y = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    try:
        d_step(x, y, 1e-4)
        g_step(x, y, 1e-4)
    finally:
        for h in handles:
            h.remove()
    assert checked == {n for n, _ in policy}, sorted({n for n, _ in policy} - checked)
    bad = {n: e for n, e in worst.items() if e > 1e-6}
    assert not bad, bad


def test_bf16_power_iteration_is_float32():
    """After a bf16 D step each spectral-norm `u` is one power iteration from its start value on
    the start kernel (u_hat = l2n(l2n(u W) W^T), W the kernel as [out, in*k*k]), computed here in
    float64: the iteration runs in float32 (the policy: sigma divides every output of the layer).
    Tolerance 1e-5 absolute on unit vectors: float32 rounding of a few hundred-term sums is ~1e-6;
    a bfloat16 iteration is off by ~1e-3."""
    from torch_port import build_ugatit
    from torch_port.train_precision import mixed_precision_steps
    torch.manual_seed(0)
    model = build_ugatit(dict(NET, ch=2))
    model.make_optimizers(1e-4)
    start = {n: (m.weight.detach().double().clone(), m.u.detach().double().clone())
             for n, m in model.named_modules() if getattr(m, "sn", False) and hasattr(m, "u")}
    assert len(start) > 10
    d_step, _ = mixed_precision_steps(model, model.d_step, model.g_step, "bf16", "cpu")
    g = torch.Generator().manual_seed(3)
    x, y = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    d_step(x, y, 1e-4)

    def l2n(t):
        return t / t.square().sum().sqrt()
    worst = 0.0
    for n, (w, u) in start.items():
        wm = w.reshape(w.shape[0], -1)
        u_hat = l2n(l2n(u @ wm) @ wm.t())
        got = model.get_submodule(n).u
        assert got.dtype == torch.float32
        worst = max(worst, (got.double() - u_hat).abs().max().item())
    assert worst <= 1e-5, worst


def test_loss_scaler_count_restarts_after_a_skip_and_travels_in_the_state():
    """GradScaler's rule, counted by hand: the count of finite steps in a row restarts at a
    non-finite one (so growth_interval finite steps must follow it before the scale doubles), and
    a loaded state continues the count (a resumed fp16 run doubles when the uninterrupted one does)."""
    from torch_port.train_precision import LossScaler
    s = LossScaler(8.0, growth_interval=3)
    for finite in (True, True, False, True, True):  # 2 good, a skip (8 -> 4), 2 good: not 3 in a row yet
        s.update(finite)
    assert (s.scale, s.good_steps, s.skipped) == (4.0, 2, 1)
    s.update(True)  # the third in a row: doubles, the count restarts
    assert (s.scale, s.good_steps) == (8.0, 0)
    a = LossScaler(8.0, growth_interval=3)
    a.update(True), a.update(True)
    b = LossScaler(8.0, growth_interval=3)
    b.load_state_dict(a.state_dict())
    assert b.good_steps == 2
    b.update(True)
    assert b.scale == 16.0 and b.good_steps == 0


def test_tf32_steps_turn_tf32_on_during_each_step_only():
    """--precision tf32 (CUDA): each step runs with cuDNN's and cuBLAS's TF32 on, and the process's
    own flags (off: the exact path) are back after it. Run without a GPU: the flags alone are read
    (tf32 steps change nothing else, so no model is needed)."""
    from torch_port.train_precision import mixed_precision_steps
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    seen = []

    def step(*args):
        seen.append((cudnn.allow_tf32, matmul.allow_tf32))
        return {}
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        for s in mixed_precision_steps(None, step, step, "tf32", "cuda"):
            seen.clear()
            s()
            assert seen == [(True, True)] and (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved

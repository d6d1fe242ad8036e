"""`--precision bf16` training (torch_port.train_precision through the trainer's `wrap_steps` seam):
the losses follow float32 training's within a stated band, the split of dtypes is the stated one
(bfloat16 convolutions; float32 norms, spectral norm, CAM, dense layers, output convolutions and
losses), and master weights, Adam state and checkpoints stay float32."""
from __future__ import annotations

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
# the two runs' weights drift apart). Bands: 5x the d figure, 3x the g figure.
D_BAND, G_BAND = 6e-3, 5e-2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from torch_port.train import train
    root = str(tmp_path_factory.mktemp("precision"))
    make_demo_dataset(root, "demo", 32, n_train=4, n_test=1)
    cwd = os.getcwd()
    os.chdir(root)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, prec, seed in (("fp32", "fp32", 1), ("bf16", "bf16", 1), ("fp32_seed2", "fp32", 2)):
            cfg = opt.config_from(dataset="demo", epoch=1, iteration=ITERATIONS, print_freq=1000, save_freq=1000,
                                  decay_flag=False, augment_flag=False, lr=0.0002, checkpoint_dir=f"ck_{name}",
                                  result_dir="res", log_dir=f"logs_{name}", sample_dir="samples", **NET)
            out[name] = train(cfg, torch.device("cpu"), seed=seed, precision=prec)
            out[name]["folder"] = os.path.join(root, f"ck_{name}", opt.model_dir(cfg))
        return out
    finally:
        os.chdir(cwd)
        torch.set_num_threads(n)


def _worst(a, b, key):
    return max(abs(x[key] - y[key]) / abs(x[key]) for x, y in zip(a["steps"], b["steps"]))


def test_bf16_losses_follow_fp32_within_the_band(runs):
    assert len(runs["bf16"]["steps"]) == ITERATIONS
    d, g = _worst(runs["fp32"], runs["bf16"], "d_loss"), _worst(runs["fp32"], runs["bf16"], "g_loss")
    assert d <= D_BAND and g <= G_BAND, (d, g)
    assert d > 0 and g > 0  # it did run in reduced precision
    # the band tells runs apart: float32 from another seed (other initial weights) leaves it
    d2, g2 = _worst(runs["fp32"], runs["fp32_seed2"], "d_loss"), _worst(runs["fp32"], runs["fp32_seed2"], "g_loss")
    assert d2 > D_BAND or g2 > G_BAND, (d2, g2)


def test_bf16_checkpoint_weights_and_adam_state_stay_float32(runs):
    step, weights, state = ckpt.find_latest(runs["bf16"]["folder"])
    assert step == ITERATIONS + 1 and state["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in weights.values())
    for name in ("G_optim", "D_optim"):
        assert all(t.dtype == torch.float32 for part in ("m", "v") for t in state[name][part].values())
    assert all(p.dtype == torch.float32 for p in runs["bf16"]["model"].parameters())


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
    trainer.precision, trainer.device, trainer.model = "bf16", torch.device("cpu"), model
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


def test_cli_precision_flags(tmp_path, monkeypatch, capsys):
    """bf16 training on the command lines; fp16 and --compile training are refused (exit 2)."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
             "--augment_flag", "False", "--iteration", "1", "--epoch", "1", "--device", "cpu"]
    assert port_main(flags + ["--precision", "bf16"]) == 0
    assert morph_main(["train"] + flags + ["--precision", "bf16"]) == 0
    for run, argv in ((port_main, flags + ["--precision", "fp16"]), (morph_main, ["train"] + flags + ["--precision", "fp16"]),
                      (port_main, flags + ["--compile", "True"])):
        capsys.readouterr()
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert "--precision" in err or "--compile" in err, err

"""Inputs a PyTorch user hands the networks directly (README "Python API"): a picture too small
for a discriminator is one ValueError naming the least size, at exactly the size below which the
official graph cannot run (ugatit_common.options.min_img_size); it was torch's "Padding size
should be less than the corresponding input dimension" from a reflect pad deep inside. And what
the README says a call changes: a discriminator's `u` (eval mode too), a generator nothing. And a
`torch_port.optimize` result handed to the ONNX export."""
from __future__ import annotations

import warnings

import pytest
import torch

from torch_port.networks import Discriminator
from ugatit_common.options import min_img_size


@pytest.mark.parametrize("n_dis", [4, 5])
def test_a_discriminator_names_the_least_picture_size(n_dis):
    least = min_img_size(n_dis)  # 24, 48
    d = Discriminator(ch=2, n_dis=n_dis, sn=True)
    for h, w in ((least, least), (least, 3 * least + 1)):  # the least size runs, non-square too
        logits, cams, local_heat, global_heat = d(torch.zeros(2, 3, h, w))
        assert logits[1].shape[0] == 2 and cams[1].shape == (2, 2)
    for h, w in ((least - 1, least), (least, least - 1), (8, 8)):
        with pytest.raises(ValueError) as e:
            d(torch.zeros(1, 3, h, w))
        message = str(e.value)
        assert "Discriminator expects a float tensor [B, 3, H, W]" in message, message
        assert f"H and W at least {least}; got {h} x {w}" in message, message


def test_discriminator_calls_advance_u_in_eval_mode_and_generator_calls_change_nothing():
    """README "Python API": each discriminator call assigns its spectral-norm `u` (the official
    graph's behaviour), eval() and no_grad() included; a generator call leaves its state as it was."""
    from torch_port import build_ugatit
    from ugatit_common import options as opt
    torch.manual_seed(0)
    model = build_ugatit(opt.config_from(light=True, ch=2, n_res=4, n_dis=4, img_size=24)).eval()
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    g_before = {k: v.clone() for k, v in model.generator_B.state_dict().items()}
    u_before = model.discriminator_A.local.conv_0.u.clone()
    with torch.no_grad():
        first = model.discriminator_A(x)[0][0]
        second = model.discriminator_A(x)[0][0]
        model.generator_B(x)
    assert not torch.equal(model.discriminator_A.local.conv_0.u, u_before)
    assert not torch.equal(first, second)
    for k, v in model.generator_B.state_dict().items():
        assert torch.equal(v, g_before[k]), k


def test_a_reduced_precision_optimized_generator_is_not_exported(tmp_path):
    """torch_port.export.export of a `torch_port.optimize(g, "bf16")` result wrote an ONNX file
    labelled fp32 whose weights were rounded to bf16 (4e-3 from the exact port, 400x the float32
    budget), verified against those same rounded weights: now refused, naming the precision (an
    fp32 optimize result exports the module itself: the slow test below)."""
    from torch_port import export as tx, optimize
    from torch_port.networks import Generator
    torch.manual_seed(0)
    cfg = dict(light=True, ch=2, n_res=4, img_size=8, smoothing=True, img_ch=3)
    g = Generator(ch=2, n_res=4, img_size=8, light=True).eval()
    kw = dict(direction="a2b", source="random", source_kind="random", step=0, batches=(1,))
    for precision in ("bf16", "fp16"):
        with warnings.catch_warnings():  # fp16 on a CPU warns that it is slow: known here
            warnings.simplefilter("ignore", RuntimeWarning)
            fast = optimize(g, precision)
        with pytest.raises(tx.ExportError, match=f"precision='{precision}'.*export the float32 module"):
            tx.export(fast, str(tmp_path / f"{precision}.onnx"), cfg, **kw)
        assert not (tmp_path / f"{precision}.onnx").exists()


@pytest.mark.slow  # ~15-30 s: one export (torch.export tracing)
def test_an_fp32_optimized_generator_exports_as_its_module(tmp_path):
    import numpy as np
    import onnxruntime as ort
    from torch_port import export as tx, optimize
    from torch_port.networks import Generator
    torch.manual_seed(0)
    cfg = dict(light=True, ch=2, n_res=4, img_size=8, smoothing=True, img_ch=3)
    g = Generator(ch=2, n_res=4, img_size=8, light=True).eval()
    kw = dict(direction="a2b", source="random", source_kind="random", step=0, batches=(1,))
    out = str(tmp_path / "fp32.onnx")
    tx.export(optimize(g, "fp32"), out, cfg, **kw)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(["translated"], {"image": x})[0]
    with torch.no_grad():
        want = g(torch.from_numpy(x))[0].numpy()
    assert np.abs(got - want).max() <= tx.FLOAT32_TOL  # the parity suite's float32 budget (|y| <= 1)


def test_an_export_config_the_generator_cannot_take_is_said_before_tracing(tmp_path):
    """export(full 32 px generator, cfg img_size=64) failed inside torch.export with a wrapped
    TorchExportError (its advice: file a PyTorch issue); now one ExportError naming both sizes."""
    from torch_port import export as tx
    from torch_port.networks import Generator
    g = Generator(ch=2, n_res=4, img_size=32, light=False).eval()
    cfg = dict(light=False, ch=2, n_res=4, img_size=64, smoothing=True, img_ch=3)
    with pytest.raises(tx.ExportError, match=r"img_size=64.*expects 32 x 32"):
        tx.export(g, str(tmp_path / "g.onnx"), cfg, direction="a2b", source="random", source_kind="random",
                  step=0, batches=(1,))
    assert not (tmp_path / "g.onnx").exists()
    # the check's picture is made on the module's device: a module on a GPU (`meta` stands in) whose
    # size fits passes, not refused as a picture on another device than its weights
    fits = Generator(ch=2, n_res=4, img_size=32, light=False).eval().to("meta")
    tx._check_config_fits(fits, dict(cfg, img_size=32))


def test_an_input_on_another_device_than_the_weights_is_one_value_error_naming_both():
    """README "Python API": a picture on the CPU given to a model on a GPU (or the reverse) was
    torch's RuntimeError from the first convolution ("Input type ... and weight type ... should be
    the same"), naming neither the device to use nor the fix. The `meta` device stands in for a
    GPU here (the check compares devices, never values: no host sync on a GPU)."""
    from morph.networks import MorphGenerator
    from torch_port import build_ugatit
    from ugatit_common import options as opt
    model = build_ugatit(opt.config_from(light=True, ch=2, n_res=4, n_dis=4, img_size=24)).to("meta")
    x = torch.zeros(1, 3, 24, 24)
    for net, who in ((model.generator_B, "Generator"), (model.discriminator_A, "Discriminator")):
        with pytest.raises(ValueError) as e:
            net(x)
        assert str(e.value).startswith(f"{who} expects a float tensor [B, 3, H, W]"), str(e.value)
        assert "on meta, the weights' device; got a tensor on cpu (x.to('meta')" in str(e.value), str(e.value)
        net(x.to("meta"))  # the same picture on the weights' device runs
    g = MorphGenerator(ch=2, n_res=4, img_size=24)
    for name, width in (("z", 64), ("w", 256)):
        with pytest.raises(ValueError, match=rf"{name} must be a float tensor \[B, {width}\] on cpu, the weights' "
                                             rf"device; got a tensor on meta \({name}.to\('cpu'\)"):
            g(x, **{name: torch.zeros(1, width, device="meta")})


def test_pictures_in_0_255_or_0_1_barely_move_a_generator_but_do_move_a_discriminator():
    """README "Python API": the values of `x` are not checked (a look at them is a host sync on a
    GPU). What a user who forgets `x / 127.5 - 1` gets: a generator's first convolution feeds an
    instance norm, which takes out any positive scale and offset of its input except through its
    epsilon (1e-5 against the features' variance, ~0.02 at this init: ~1e-4 relative); 1e-2 on
    the [-1, 1] output bounds that with room, and is far below what a real change of the picture
    makes (checked: x * 0.5 moves more). A discriminator's first layer is a convolution and a leaky
    ReLU, so its logits move by more than their own size."""
    import copy
    from torch_port import build_ugatit
    from ugatit_common import options as opt
    torch.manual_seed(0)
    for light in (True, False):
        model = build_ugatit(opt.config_from(light=light, ch=4, n_res=4, n_dis=4, img_size=32)).double()
        x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
        image, cam, heatmap = model.generator_B(x)
        for wrong in (x * 127.5 + 127.5, (x + 1) / 2):
            image2, cam2, heatmap2 = model.generator_B(wrong)
            assert (image2 - image).abs().max() < 1e-2
            assert (cam2 - cam).abs().max() < 1e-2 * cam.abs().max()
        assert (model.generator_B(torch.cat([x[:, :1] * 0.5, x[:, 1:]], 1))[0] - image).abs().max() > 1e-2
        d = copy.deepcopy(model.discriminator_A)  # each call advances `u`: the same state for both calls
        logits = model.discriminator_A(x)[0][0]
        logits_255 = d(x * 127.5 + 127.5)[0][0]
        assert (logits_255 - logits).abs().max() > logits.abs().max()


@pytest.mark.parametrize("other, said", [
    (dict(light=False), "light False (this model: light True)"),
    (dict(ch=4), "ch 4 (this model: ch 2)"),
    (dict(n_dis=5), "n_dis 5 (this model: n_dis 4)"),
    (dict(sn=False), "sn False (this model: sn True)")])
def test_a_state_dict_of_another_config_is_named_in_load_state_dicts_first_line(other, said):
    """README "Python API" `model.load_state_dict(state)`: a state dict of another config was torch's
    list of every tensor that differs (40 000 characters for another ch), whose first line names a
    tensor, not the setting; now its first line names each setting the shapes fix (torch's list
    follows; still a RuntimeError, as torch raises it). A matching one loads as before."""
    from torch_port import build_ugatit
    from ugatit_common import options as opt
    base = dict(light=True, ch=2, n_res=4, n_dis=4, img_size=32)
    model = build_ugatit(opt.config_from(**base))
    state = build_ugatit(opt.config_from(**{**base, **other})).state_dict()
    with pytest.raises(RuntimeError) as e:
        model.load_state_dict(state)
    first = str(e.value).splitlines()[0]
    assert first == (f"the state dict is of another config: {said}; build the model with that config "
                     f"(weights_convert.tf_to_torch returns it)"), first
    assert "Error(s) in loading state_dict for UGATIT" in str(e.value)
    model.load_state_dict(build_ugatit(opt.config_from(**base)).state_dict())
    generators = {k: v for k, v in state.items() if k.startswith("generator_")}
    if "ch" not in other and "light" not in other:  # generators-only, strict=False (README): the same generators
        model.load_state_dict(generators, strict=False)


@pytest.mark.parametrize("key, value, error", [
    ("light", "False", TypeError), ("smoothing", "False", TypeError), ("sn", None, TypeError), ("sn", 2, TypeError),
    ("ch", 4.0, TypeError), ("ch", "4", TypeError), ("ch", 0, ValueError), ("ch", -1, ValueError),
    ("img_size", 0, ValueError)])
def test_build_ugatit_refuses_a_setting_of_the_wrong_kind_naming_it(key, value, error):
    """`build_ugatit(config)` with `light="False"` (a command-line string) built a light model, the
    string being truthy (`smoothing="False"` likewise: AdaLIN's smoothing on), silently; `ch` 4.0,
    "4" or -1 was torch's error from inside a layer, and `ch` 0 a model of empty layers. Now one
    TypeError / ValueError naming the key and the value. True/False, numpy booleans and 0/1 build."""
    import numpy as np
    from torch_port import build_ugatit
    from ugatit_common import options as opt
    base = dict(light=True, ch=2, n_res=4, n_dis=4, img_size=24, sn=True, smoothing=True)
    with pytest.raises(error, match=rf"build_ugatit: config\['{key}'\] must be "):
        build_ugatit(opt.config_from(**{**base, key: value}))
    for ok in (dict(light=np.bool_(True), sn=1, smoothing=0), dict(ch=np.int64(2), img_size=np.int32(24))):
        model = build_ugatit(opt.config_from(**{**base, **ok}))
        assert model.generator_B.MLP.light and model.discriminator_A.sn

"""Inputs a PyTorch user hands the networks directly (README "Python API"): a picture too small
for a discriminator is one ValueError naming the least size, at exactly the size below which the
official graph cannot run (ugatit_common.options.min_img_size); it was torch's "Padding size
should be less than the corresponding input dimension" from a reflect pad deep inside. And what
the README says a call changes: a discriminator's `u` (eval mode too), a generator nothing."""
from __future__ import annotations

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

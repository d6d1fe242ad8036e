"""README "The naming rule", called as written there: the example name both ways, and a
spectral-norm kernel (directly under its scope) back to TF with `sn_scopes` from a model."""
from __future__ import annotations

import os
import re

import weights_convert
from torch_port import build_ugatit
from ugatit_common import options as opt

from .conftest import ROOT


def _naming_section() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return text[text.index("### The naming rule"):text.index("## ONNX export")]


def test_the_readme_naming_examples_hold_both_ways():
    section = _naming_section()
    tf_name, torch_name = re.search(r"`(generator_B/[^`]+)` →\s+`(generator_B\.[^`]+)`", section).groups()
    assert weights_convert.tf_to_torch_name(tf_name) == torch_name
    model = build_ugatit(opt.config_from(light=True, ch=2, n_dis=4, img_size=24))
    sn_scopes = {k[:-len(".u")] for k in model.state_dict() if k.endswith(".u")}
    assert "torch_to_tf_name(torch_name, sn_scopes)" in section
    assert weights_convert.torch_to_tf_name(torch_name, sn_scopes) == tf_name
    sn_kernel = re.search(r"`(discriminator_A/local/conv_0/kernel)`", section).group(1)
    assert "discriminator_A.local.conv_0" in sn_scopes
    assert weights_convert.tf_to_torch_name(sn_kernel) == "discriminator_A.local.conv_0.weight"
    assert weights_convert.torch_to_tf_name("discriminator_A.local.conv_0.weight", sn_scopes) == sn_kernel
    for name in model.state_dict():  # every key of a model round-trips
        assert weights_convert.tf_to_torch_name(weights_convert.torch_to_tf_name(name, sn_scopes)) == name

"""`weights_convert.py torch2tf` of a port checkpoint whose `.state.pt` reads but holds no Adam
state in its G_optim / D_optim (no `m` / `v` slots or powers: e.g. an optimizer state dict of
another optimizer, or a hand-made state file) stopped with `error: 'm'` (a KeyError's text). Now
one `error:` line naming the state file, what it lacks and `--weights_only`; exit 2, nothing
written; `--weights_only` converts the weights."""
from __future__ import annotations

import os

import pytest
import torch

import weights_convert as wc
from parity_tests.test_nonfinite_and_flags import CFG, error_line
from ugatit_common import options as opt


def _port(folder, g_optim, d_optim):
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    torch.manual_seed(0)
    ck.save(str(folder), opt.model_name(CFG), 3, build_ugatit(CFG),
            {"config": ck.plain_config(CFG), "run": "r1", "counter": 3, "G_optim": g_optim, "D_optim": d_optim})
    return os.path.join(str(folder), f"{opt.model_name(CFG)}.model-3.safetensors")


@pytest.mark.parametrize("g_optim", [{}, {"m": {}, "beta1_power": 0.9, "beta2_power": 0.999}, {"m": [], "v": [],
                                     "beta1_power": 0.9, "beta2_power": 0.999}], ids=["empty", "no_v", "lists"])
def test_a_state_file_without_adam_state_is_one_error_naming_it(g_optim, tmp_path, capsys):
    src = _port(tmp_path / "port", g_optim, {})
    state = src.replace(".safetensors", ".state.pt")
    capsys.readouterr()
    rc = wc.main(["torch2tf", src, str(tmp_path / "tf" / "UGATIT_light.model")])
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and repr(state) in line and "G_optim" in line and "--weights_only" in line, line
    assert not os.path.exists(tmp_path / "tf")
    assert wc.main(["torch2tf", src, str(tmp_path / "tf" / "UGATIT_light.model"), "--weights_only"]) == 0

"""README "The naming rule", called as written there: the example name both ways, and a
spectral-norm kernel (directly under its scope) back to TF with `sn_scopes` from a model."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
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


def test_a_generators_only_checkpoint_loads_as_the_readme_says():
    """README "Python API": a generators-only checkpoint (the demo fixture, an inference export)
    loads with strict=False, and what is missing is exactly the discriminators."""
    import torch
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        api = f.read().split("## Python API", 1)[1].split("```", 2)[1]
    assert "generators-only" in api and "strict=False" in api, api
    from torch_port import build_ugatit as build
    from .conftest import FIXTURES
    folder = os.path.join(FIXTURES, "demo_light64", "UGATIT_light_demo_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing")
    config, state = weights_convert.tf_to_torch(folder, quiet=True)
    model = build(config)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("discriminator_") for k in result.missing_keys)
    assert sorted(result.missing_keys) == sorted(k for k in model.state_dict() if k.startswith("discriminator_"))
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], torch.as_tensor(v)), k


def test_the_walkthrough_results_keep_each_photos_name_and_format(tmp_path):
    """README "From an official checkpoint to your photos", step 1 on a JPEG photo: the picture is
    `a2b/<the photo's name>` in the photo's format (the README said `a2b/*.png`)."""
    import subprocess
    import sys

    import cv2
    import numpy as np
    from .conftest import FIXTURES
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        what = f.read().split("What you get:", 1)[1].split("\n\n", 1)[0]
    assert "a2b/*.png" not in what and "photo.jpg" in what, what
    ckpt = os.path.join(FIXTURES, "demo_light64", "UGATIT_light_demo_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "photo.jpg"), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    r = subprocess.run([sys.executable, "-m", "torch_port", "--phase", "test", "--checkpoint", ckpt, "--input",
                        str(photos), "--result_dir", str(tmp_path / "my_results"), "--img_size", "64",
                        "--threads", "1"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (model_dir,) = os.listdir(tmp_path / "my_results")
    out = tmp_path / "my_results" / model_dir / "a2b"
    assert os.listdir(out) == ["photo.jpg"]
    assert (out / "photo.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG


def test_the_readme_fp16_skip_line_is_the_line_training_prints():
    """README "Training fast paths" quotes the line an fp16 step skipped at an overflowing loss
    scale prints; it must be the line `torch_port.train._check_finite` logs for such a step (the
    README had quoted a shorter wording than the code's)."""
    from torch_port.train import _check_finite
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    quoted = " ".join(re.search(r"` (\[fp16\] step 1: [^`]+)`", text).group(1).split())  # across a line break
    lines = []
    values = {"Discriminator_loss": float("nan"), "D_loss_scale": 65536.0, "D_step_skipped": 1.0,
              "D_unpenalized_finite": 1.0}
    _check_finite(values, "discriminator", 1, {}, lines.append, scaled_loss=True)
    assert [line.strip() for line in lines] == [quoted]


# The README's test counts: file -> the pattern of its "N CPU tests ... M quick" claim.
_COUNT_CLAIMS = {
    "test_onnx.py": r"`parity_tests/test_onnx\.py` \((\d+) CPU tests, (\d+) in the quick tier",
    "test_fast_infer.py": r"`parity_tests/test_fast_infer\.py`, (\d+) CPU tests in the full tier \((\d+) quick",
    "test_train_graphs.py": r"`parity_tests/test_train_graphs\.py`, (\d+) CPU tests in the full tier \((\d+) quick",
}


def _cpu_test_counts(*tier) -> dict:
    """Tests per file of _COUNT_CLAIMS that pytest collects without the `cuda` marker in a tier."""
    env = {k: v for k, v in os.environ.items() if k != "UGATIT_FULL_TIER"}
    files = [os.path.join("parity_tests", f) for f in _COUNT_CLAIMS]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *tier,
                           "-m", "not cuda", *files], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    return {f: sum(i.startswith(f"parity_tests/{f}::") for i in ids) for f in _COUNT_CLAIMS}


@pytest.mark.slow  # collects three test files in both tiers (~20 s of imports)
def test_the_readme_test_counts_are_the_suites_counts():
    """README "ONNX export", "Translating on a GPU" and "Training on a GPU" say how many CPU tests
    test_onnx.py, test_fast_infer.py and test_train_graphs.py hold, in the full tier and the quick
    one; they must be what pytest collects (they had fallen behind: 41 / 49 / 29 for 43 / 60 / 35).
    A test added to one of these files needs its README count raised."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    claimed = {f: tuple(int(n) for n in re.search(pattern, text).groups()) for f, pattern in _COUNT_CLAIMS.items()}
    full, quick = _cpu_test_counts("--full"), _cpu_test_counts()
    assert claimed == {f: (full[f], quick[f]) for f in _COUNT_CLAIMS}

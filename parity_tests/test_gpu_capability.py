"""Precisions a GPU cannot run natively are refused in one line naming the GPU, for the device
asked for (not the current one). bfloat16 needs compute capability 8.0 (Ampere) like TF32:
torch.cuda.is_bf16_supported() also says True on Volta / Turing (T4, V100, common rented GPUs),
where bf16 is emulated - slow, and without cuDNN kernels. GPUs simulated on the CPU: torch.cuda's
capability and name queries answer per device index."""
from __future__ import annotations

import pytest
import torch

from torch_port.precision import check_supported
from torch_port.train_precision import check_training_precision
from ugatit_common.options import OptionError

GPUS = {0: ("NVIDIA H100 80GB HBM3", (9, 0)), 1: ("Tesla T4", (7, 5)), 2: ("Tesla V100-SXM2-16GB", (7, 0)),
        3: ("NVIDIA A100-SXM4-40GB", (8, 0))}


@pytest.fixture
def machine(monkeypatch):
    """Four GPUs; cuda:0 (an H100) is the current one."""
    def index(device=None):
        device = torch.device("cuda", 0) if device is None else torch.device(device)
        return 0 if device.index is None else device.index
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: GPUS[index(device)][1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPUS[index(device)][0])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # as on an emulating GPU
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("index", [1, 2])
def test_bf16_and_tf32_are_refused_before_ampere_naming_the_gpu(index, machine):
    name, (major, minor) = GPUS[index]
    device = torch.device("cuda", index)
    for precision in ("bf16", "tf32"):
        with pytest.raises(ValueError) as e:
            check_supported(precision, device)
        assert name in str(e.value) and "fp16" in str(e.value).split("; ")[-1], str(e.value)  # what runs there
        with pytest.raises(OptionError) as e:
            check_training_precision(precision, device)
        assert name in str(e.value) and f"{major}.{minor}" in str(e.value), str(e.value)
    check_supported("fp16", device)  # fp16 runs there (tensor cores since Volta)
    check_training_precision("fp16", device)


@pytest.mark.parametrize("index", [0, 3])
def test_every_precision_runs_from_ampere_on(index, machine):
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        check_supported(precision, torch.device("cuda", index))
        check_training_precision(precision, torch.device("cuda", index))


@pytest.mark.parametrize("name", ["mps", "xpu", "cuda:x", "cuda:-1", "CUDA", "gpu"])
def test_a_device_this_project_does_not_run_on_is_one_line(name, tmp_path, monkeypatch, capsys):
    """--device takes auto, cpu, cuda or cuda:N in every command (the port's and Morph's, which
    gave torch's 'not linked with support for mps devices' as an internal error)."""
    from morph.__main__ import main as morph_main
    from torch_port.train import pick_device
    from ugatit_common.demo_data import make_demo_dataset
    with pytest.raises(OptionError, match=r"expected cpu, cuda, cuda:N or auto"):
        pick_device(name)
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=1, n_test=1)
    monkeypatch.chdir(tmp_path)
    rc = morph_main(["train", "--config", "C", "--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4",
                     "--iteration", "1", "--epoch", "1", "--device", name])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert rc == 2 and len(err) == 1 and f"--device={name!r}: expected cpu, cuda, cuda:N or auto" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # refused before any folder was made

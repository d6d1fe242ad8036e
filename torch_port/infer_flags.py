"""The translation commands' GPU flags: `--cuda_graphs` and `--cudnn_benchmark` (python -m torch_port
--phase test, python -m morph interpolate / translate); what they do: torch_port.fast."""
from __future__ import annotations

from ugatit_common import options as opt

__all__ = ["add_gpu_inference_flags", "check_gpu_inference_flags"]


def _optional_bool(text: str):
    return None if text.lower() in ("auto", "default") else opt.str2bool(text)


def add_gpu_inference_flags(p) -> None:
    p.add_argument("--cuda_graphs", type=opt.str2bool, default=False,
                   help="translation on CUDA: capture each generator call as a CUDA graph and replay it (the same "
                        "kernels and results, no per-kernel launch time; default False)")
    p.add_argument("--cudnn_benchmark", type=_optional_bool, default=None, metavar="True|False|auto",
                   help="translation on CUDA: let cuDNN time its convolution algorithms per shape (default auto: off "
                        "for fp32, the exact path, on for tf32 / bf16 / fp16)")


def check_gpu_inference_flags(a) -> None:
    """The flags only translate: with --phase train they would change nothing, so they are refused."""
    if getattr(a, "phase", "test") == "train":
        if a.cuda_graphs:
            raise opt.OptionError("--cuda_graphs applies to the test phase (translation); training does not use it")
        if a.cudnn_benchmark is not None:
            raise opt.OptionError("--cudnn_benchmark applies to the test phase (translation); training does not "
                                  "use it")

"""The translation commands' GPU flags: `--cuda_graphs` and `--cudnn_benchmark` (python -m torch_port
--phase test, python -m morph interpolate / translate); what they do: torch_port.fast.

`--cuda_graphs auto|True|False` is spelt as training's (torch_port.train registers the same flag
for `--phase train`; where it already exists it is not added twice): auto (the default) replays
the generators as CUDA graphs on a CUDA device and not elsewhere; True on a CPU is refused.
`--cudnn_benchmark True|False|auto`: auto (the default) is off for fp32, the exact path, and on
for tf32 / bf16 / fp16."""
from __future__ import annotations

from ugatit_common import options as opt

__all__ = ["add_gpu_inference_flags", "check_gpu_inference_flags", "tristate"]


def tristate(value):
    """True / False / None (auto) from a flag value: a bool, None or 'True' / 'False' / 'auto'."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "default"):
        return None
    return opt.str2bool(text)


def _tristate_flag(text: str) -> str:
    import argparse
    try:
        tristate(text)
    except argparse.ArgumentTypeError:  # argparse names the flag in its usage error
        raise argparse.ArgumentTypeError(f"expected auto, True or False, got {text!r}") from None
    return text


def add_gpu_inference_flags(p) -> None:
    """--cuda_graphs and --cudnn_benchmark on parser `p` (each unless `p` has it already)."""
    have = getattr(p, "_option_string_actions", {})
    if "--cuda_graphs" not in have:
        p.add_argument("--cuda_graphs", default="auto", type=_tristate_flag, metavar="auto|True|False",
                       help="translate with each generator call replayed as a CUDA graph (the same kernels and "
                            "results, no per-kernel launch time); default auto: on CUDA devices")
    if "--cudnn_benchmark" not in have:
        p.add_argument("--cudnn_benchmark", default="auto", type=_tristate_flag, metavar="True|False|auto",
                       help="translation on CUDA: let cuDNN time its convolution algorithms per shape (default auto: "
                            "off for fp32, the exact path, on for tf32 / bf16 / fp16)")


def check_gpu_inference_flags(a) -> None:
    """--cudnn_benchmark only translates: given with --phase train it would change nothing, so it is
    refused (--cuda_graphs is training's flag too: torch_port.train checks it there)."""
    if getattr(a, "phase", "test") == "train" and tristate(getattr(a, "cudnn_benchmark", None)) is not None:
        raise opt.OptionError("--cudnn_benchmark applies to the test phase (translation); training does not use it")

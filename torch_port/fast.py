"""Fast inference paths: `optimize(module, precision="fp32"|"bf16"|"fp16", compile=False)`.

    fast = torch_port.optimize(model.generator_B, precision="bf16", compile=True)
    image, cam_logit, heatmap = fast(x)        # float32 outputs, no gradient

Works for a `Generator`, a Morph `MorphGenerator` (fast(x, z=z) or fast(x, w=w)) and a
`Discriminator`. The dtype of every op is the policy in `torch_port.precision` (convolutions in
the reduced dtype; norms, spectral norm's power iteration, CAM, the output convolutions and
the small dense layers in float32).

Weights: cast once, here. The reduced-precision parameters are new tensors (a snapshot: call
`optimize` again after training further); every tensor that keeps its dtype (float32 masters of
spectral-norm kernels, norm parameters, `u` buffers, ...) is shared with `module`, so the fast
path costs only the reduced copies' memory and a discriminator's `u` advances in `module`'s own
buffers, as calling `module` does. "fp32" shares everything: `optimize(m, "fp32")` is `m` under
`torch.no_grad()`, bit for bit.

compile=True: `torch.compile` (inductor) compiles on the first call (`first_call_seconds` says
how long it took; a 256 px generator on this 2-core CPU with a cold inductor cache: 34-55 s,
up to 100 s under heavy load, bench/bench_fast.py; a few seconds from a warm cache); later calls
at the same input shape and dtype reuse the graph (`compile_stats()` counts graphs, recompiles
and graph breaks from torch._dynamo's counters; the generators and discriminators compile to
one graph, no break). A new input shape compiles again once (dynamic=False: a translation batch
of a fixed size is the use case). Inductor's `freezing` is patched in around the calls: the
weights become constants of the graph, prepacked for oneDNN on CPU (the profile shows
mkldnn::_convolution_pointwise, convolutions fused with their elementwise neighbours), so a
compiled path is a snapshot of the weights in every precision. Spectral-norm `u` buffers are
mutated state, not frozen: they advance as in eager mode.

The result is an `nn.Module` (`OptimizedModule`): it can replace the generator attribute of a
model (`model.generator_B = optimize(model.generator_B, "bf16")`), and unknown attributes
(`make_z`, `w_from_z`, `img_size`, ...) are looked up on the wrapped module.
"""
from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn as nn

from .precision import check_supported, compute_dtype, lowp_plan

__all__ = ["optimize", "OptimizedModule", "optimize_generators", "dynamo_counts", "COMPILE_DEFAULTS"]

COMPILE_DEFAULTS = {}  # torch.compile keyword arguments
# inductor settings patched in while a compiled path runs (and compiles): freezing folds the weights
# into the graph as constants, so oneDNN gets prepacked convolution weights (torch.compile's
# `options={"freezing": True}` did not reach the freezing pass in torch 2.13: no weight was packed)
INDUCTOR_PATCH = {"freezing": True}


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` whose planned layers hold `dtype` tensors; all other tensors shared."""
    plan = lowp_plan(module)
    memo = {}
    for t in list(module.parameters()) + list(module.buffers()):
        memo[id(t)] = t  # shared unless replaced below
    lowp_weights = {}
    with torch.no_grad():
        for name, kind in plan.items():
            m = module.get_submodule(name)
            if m.bias is not None:
                memo[id(m.bias)] = nn.Parameter(m.bias.detach().to(dtype), requires_grad=False)
            if kind == "cast":
                memo[id(m.weight)] = nn.Parameter(m.weight.detach().to(dtype), requires_grad=False)
            else:  # spectral norm: float32 weight shared for the power iteration, reduced copy to convolve
                lowp_weights[name] = m.weight.detach().to(dtype)
    fast = copy.deepcopy(module, memo)
    for name, w in lowp_weights.items():
        fast.get_submodule(name).weight_lowp = w
    return fast


def _inductor_config(patch: dict):
    if not patch:
        import contextlib
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config
    return inductor_config.patch(patch)


def _to_float32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def separate_inductor_cache() -> None:
    """Inductor's on-disk cache is not keyed by ATen's CPU capability: kernels compiled natively
    (AVX-512 here) crash a process run with ATEN_CPU_CAPABILITY=avx2 that finds them (measured: a
    segfault loading cached training kernels). With that variable set and no TORCHINDUCTOR_CACHE_DIR,
    the cache gets a folder of its own per capability. Call before the first compile."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if cap and not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{cap}"


def dynamo_counts() -> dict:
    """torch._dynamo's global counters: graphs compiled (a recompile compiles one more), graph
    breaks (by reason)."""
    from torch._dynamo.utils import counters
    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": dict(counters["graph_break"])}


class OptimizedModule(nn.Module):
    """`module`'s forward in `precision` (optionally compiled), under no_grad, outputs float32.

    Attributes: precision, dtype, compiled, first_call_seconds (None until the first call),
    calls; `inner` is the (cast) module, `plan` the layers given the reduced dtype."""

    def __init__(self, module: nn.Module, precision: str = "fp32", compile: bool = False,
                 compile_options: dict | None = None, log=None):
        super().__init__()
        self._log = log  # called once with the compile summary after the first compiled call
        dtype = compute_dtype(precision)
        device = _device_of(module)
        check_supported(precision, device)
        self.precision, self.dtype, self.compiled = precision, dtype, bool(compile)
        self.plan = lowp_plan(module) if dtype != torch.float32 else {}
        inner = module if dtype == torch.float32 else _cast_copy(module, dtype)
        inner.eval()
        self.inner = inner
        options = dict(COMPILE_DEFAULTS if compile_options is None else compile_options)
        if compile:
            separate_inductor_cache()
        fn = torch.compile(inner, dynamic=False, **options) if compile else inner
        self._inductor_patch = dict(INDUCTOR_PATCH) if compile else {}
        object.__setattr__(self, "_fn", fn)  # not a registered child: `inner` is the one copy of the weights
        self.first_call_seconds = None
        self.calls = 0
        self._counts_before = None
        self._counts_after_first = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, *args, **kwargs):
        first = self.first_call_seconds is None
        if first:
            self._counts_before = dynamo_counts() if self.compiled else None
            t = time.perf_counter()
        with torch.no_grad(), _inductor_config(self._inductor_patch):
            out = self._fn(*args, **kwargs)
        out = _to_float32(out)
        self.calls += 1
        if first:
            if out is not None and _device_of(self.inner).type == "cuda":
                torch.cuda.synchronize()
            self.first_call_seconds = time.perf_counter() - t
            if self.compiled:
                self._counts_after_first = dynamo_counts()
                if self._log is not None:
                    st = self.compile_stats()
                    self._log(f" [*] torch.compile ({type(self.inner).__name__}, {self.precision}): first call "
                              f"{self.first_call_seconds:.1f} s, {st['graphs_first_call']} graph(s), graph breaks: "
                              f"{st['graph_breaks'] or 'none'}")
        return out

    def compile_stats(self) -> dict:
        """Graphs compiled by the first call (1 = no graph break), graphs compiled since (a
        recompile; 0 at a fixed input shape), graph breaks (reason -> count) since this module was
        first called; {} without compile or before the first call. The counters are torch._dynamo's
        global ones: other compiled code running meanwhile counts too."""
        if not self.compiled or self._counts_before is None:
            return {}
        before, first, now = self._counts_before, self._counts_after_first, dynamo_counts()
        breaks = {k: v - before["graph_breaks"].get(k, 0) for k, v in now["graph_breaks"].items()
                  if v - before["graph_breaks"].get(k, 0) > 0}
        return {"first_call_seconds": self.first_call_seconds,
                "graphs_first_call": first["unique_graphs"] - before["unique_graphs"],
                "graphs_after_first_call": now["unique_graphs"] - first["unique_graphs"],
                "graph_breaks": breaks}

    def extra_repr(self) -> str:
        return f"precision={self.precision}, compile={self.compiled}, reduced layers={len(self.plan)}"


def optimize(module: nn.Module, precision: str = "fp32", compile: bool = False,
             compile_options: dict | None = None, log=None) -> OptimizedModule:
    """`module` for inference in `precision` ("fp32", "bf16", "fp16"), optionally compiled with
    torch.compile; a callable returning the module's outputs in float32, without gradient.
    `compile_options`: keyword arguments for torch.compile (e.g. {"mode": "max-autotune"}); inductor
    freezing is patched in around the calls (INDUCTOR_PATCH). `log`: e.g. print, called once with
    the compile summary (first-call seconds, graphs, graph breaks) after the first call."""
    if isinstance(module, OptimizedModule):
        raise ValueError("module is already optimized; optimize the original module")
    return OptimizedModule(module, precision, compile, compile_options, log)


GENERATOR_ATTRS = ("generator_A", "generator_B", "generator")


def optimize_generators(model: nn.Module, precision: str = "fp32", compile: bool = False, log=print) -> nn.Module:
    """Replace a U-GAT-IT / Morph-UGATIT model's generator attributes with their optimized
    versions in place (for the test phase and Morph's interpolate / translate); returns model.
    With fp32 and no compile the model is returned unchanged."""
    if precision == "fp32" and not compile:
        compute_dtype(precision)
        return model
    for attr in GENERATOR_ATTRS:
        g = model._modules.get(attr)
        if g is not None and not isinstance(g, OptimizedModule):
            setattr(model, attr, optimize(g, precision, compile, log=log))
    return model

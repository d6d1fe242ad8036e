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

On CUDA (README "Translating on a GPU"):
- precision "tf32": the module's own float32 weights, with cuDNN / cuBLAS TF32 on during the
  call; every other precision runs with TF32 off, so its float32 layers are float32 (each call
  sets the two flags and restores the process's own afterwards).
- cudnn_benchmark: cuDNN times its algorithms for each new shape and keeps the fastest (every
  candidate computes in the layer's dtype; with TF32 off a float32 convolution stays float32, but
  the algorithm, hence the float32 rounding, may differ from run to run). Default (None): on for
  tf32 / bf16 / fp16, off for fp32, the exact path, which keeps cuDNN's heuristic choice (the
  same algorithm every run, as measured by the parity suite).
- cuda_graphs=True: the forward (eager or compiled) is captured as a CUDA graph per input shape
  and replayed (`torch_port.static_forward`): the kernels and the results are the eager call's,
  the host's per-kernel launch time is gone. Default False; a CPU device is refused; a capture
  that fails is said in one line and that shape runs eagerly. `use_graphs` switches replay off
  and on (benchmarks compare both on one compiled module).
"""
from __future__ import annotations

import contextlib
import copy
import os
import time

import torch
import torch.nn as nn

from .precision import check_supported, compute_dtype, lowp_plan, uses_tf32
from .static_forward import StaticForward

__all__ = ["optimize", "OptimizedModule", "optimize_generators", "dynamo_counts", "COMPILE_DEFAULTS",
           "cuda_backend_flags", "default_cudnn_benchmark"]

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


def default_cudnn_benchmark(precision: str) -> bool:
    """cuDNN's benchmark mode by default: off for fp32 (the exact path keeps the heuristic, run-to-run
    identical algorithm choice), on for the fast paths (their budgets are far above any algorithm's
    float rounding)."""
    compute_dtype(precision)
    return precision != "fp32"


@contextlib.contextmanager
def cuda_backend_flags(tf32: bool, benchmark: bool):
    """TF32 (cuDNN convolutions and cuBLAS matrix products) and cuDNN's benchmark mode as given, for
    the block; the process's own settings after it. The legacy `allow_tf32` flags, as
    `torch_port.train.pick_device` sets them (torch refuses reads that mix the legacy and the new
    `fp32_precision` interfaces)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    cudnn.allow_tf32 = matmul.allow_tf32 = bool(tf32)
    cudnn.benchmark = bool(benchmark)
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


def separate_inductor_cache() -> None:
    """Inductor's on-disk cache is not keyed by ATen's CPU capability: kernels compiled natively
    (AVX-512 here) crash a process run with ATEN_CPU_CAPABILITY=avx2 that finds them (measured: a
    segfault loading cached training kernels). With that variable set and no TORCHINDUCTOR_CACHE_DIR,
    the cache gets a folder of its own per capability. Call before the first compile."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if cap and not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default_cache_dir()}_{cap}"


def check_inductor_cache() -> None:
    """OptionError naming inductor's on-disk cache folder (TORCHINDUCTOR_CACHE_DIR, else
    `<tmp>/torchinductor_<user>`) when this user cannot write it - e.g. one of that name another
    user made in the shared /tmp: the compile failed mid-run as an internal error
    (InductorError: PermissionError). Call before the first compile; it first picks this
    process's folder (separate_inductor_cache)."""
    separate_inductor_cache()
    from ugatit_common.cli_errors import check_writable_folder
    from ugatit_common.options import OptionError
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:  # (only then: importing torch._inductor makes the folder that variable names, or fails there)
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        path = default_cache_dir()
    try:
        check_writable_folder(path, "torch.compile's cache folder")
    except OptionError as e:
        raise OptionError(f"{e}: set TORCHINDUCTOR_CACHE_DIR to a folder this user can write, or run without "
                          f"--compile") from None


def dynamo_counts() -> dict:
    """torch._dynamo's global counters: graphs compiled (a recompile compiles one more), graph
    breaks (by reason)."""
    from torch._dynamo.utils import counters
    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": dict(counters["graph_break"])}


class OptimizedModule(nn.Module):
    """`module`'s forward in `precision` (optionally compiled, optionally replayed as CUDA graphs),
    under no_grad, outputs float32.

    Attributes: precision, dtype, compiled, cuda_graphs, use_graphs, cudnn_benchmark,
    first_call_seconds (None until the first call), calls; `inner` is the (cast) module, `plan`
    the layers given the reduced dtype, `static` the StaticForward (None without graphs)."""

    def __init__(self, module: nn.Module, precision: str = "fp32", compile: bool = False,
                 compile_options: dict | None = None, log=None, cuda_graphs: bool = False,
                 cudnn_benchmark: bool | None = None):
        super().__init__()
        self._log = log  # called once with the compile summary after the first compiled call, and with graph notes
        dtype = compute_dtype(precision)
        device = _device_of(module)
        check_supported(precision, device)
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True: CUDA graphs need the module on a CUDA device; it is on {device}")
        self.precision, self.dtype, self.compiled = precision, dtype, bool(compile)
        self.cuda_graphs = self.use_graphs = bool(cuda_graphs)
        self._on_cuda = device.type == "cuda"
        self._device = device
        if cudnn_benchmark and not self._on_cuda:
            raise ValueError(f"cudnn_benchmark=True: cuDNN's benchmark mode applies to CUDA; the module is on {device}")
        if not self._on_cuda:
            self.cudnn_benchmark = None  # no cuDNN on this device
        else:
            self.cudnn_benchmark = default_cudnn_benchmark(precision) if cudnn_benchmark is None else bool(cudnn_benchmark)
        self.plan = lowp_plan(module) if dtype != torch.float32 else {}
        inner = module if dtype == torch.float32 else _cast_copy(module, dtype)
        inner.eval()
        self.inner = inner
        options = dict(COMPILE_DEFAULTS if compile_options is None else compile_options)
        if compile:
            check_inductor_cache()
        fn = torch.compile(inner, dynamic=False, **options) if compile else inner
        self._inductor_patch = dict(INDUCTOR_PATCH) if compile else {}
        object.__setattr__(self, "_fn", fn)  # not a registered child: `inner` is the one copy of the weights
        # state: the warm-up before a capture must not advance a discriminator's `u` (module's buffers)
        static = (StaticForward(self._run, capture=True, log=log, name=f"{type(module).__name__} ({precision})",
                                state=lambda: list(inner.buffers())) if cuda_graphs else None)
        object.__setattr__(self, "static", static)
        self.first_call_seconds = None
        self.calls = 0
        self._counts_before = None
        self._counts_after_first = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def _run(self, *args, **kwargs):
        return _to_float32(self._fn(*args, **kwargs))

    def _settings(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(_inductor_config(self._inductor_patch))
        if self._on_cuda:
            stack.enter_context(cuda_backend_flags(uses_tf32(self.precision), self.cudnn_benchmark))
        return stack

    def forward(self, *args, **kwargs):
        first = self.first_call_seconds is None
        if first:
            self._counts_before = dynamo_counts() if self.compiled else None
            t = time.perf_counter()
        with self._settings():
            graphed = self.static is not None and self.use_graphs
            out = self.static(*args, **kwargs) if graphed else self._run(*args, **kwargs)
        self.calls += 1
        if first:
            if out is not None and self._on_cuda:
                torch.cuda.synchronize(self._device)  # the module's GPU, whichever is current
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
        return (f"precision={self.precision}, compile={self.compiled}, cuda_graphs={self.cuda_graphs}, "
                f"cudnn_benchmark={self.cudnn_benchmark}, reduced layers={len(self.plan)}")


def optimize(module: nn.Module, precision: str = "fp32", compile: bool = False,
             compile_options: dict | None = None, log=None, cuda_graphs: bool = False,
             cudnn_benchmark: bool | None = None) -> OptimizedModule:
    """`module` for inference in `precision` ("fp32", "tf32" (CUDA), "bf16", "fp16"), optionally
    compiled with torch.compile; a callable returning the module's outputs in float32, without
    gradient. `compile_options`: keyword arguments for torch.compile (e.g. {"mode":
    "max-autotune-no-cudagraphs"}; the modes with CUDA graph trees return outputs that the next
    call overwrites); inductor freezing is patched in around the calls (INDUCTOR_PATCH). `log`: e.g. print, called
    once with the compile summary (first-call seconds, graphs, graph breaks) after the first call,
    and with any CUDA graph note. `cuda_graphs`, `cudnn_benchmark`: CUDA only, see the module doc."""
    if isinstance(module, OptimizedModule):
        raise ValueError("module is already optimized; optimize the original module")
    return OptimizedModule(module, precision, compile, compile_options, log, cuda_graphs, cudnn_benchmark)


GENERATOR_ATTRS = ("generator_A", "generator_B", "generator")


def optimize_generators(model: nn.Module, precision: str = "fp32", compile: bool = False, log=print,
                        cuda_graphs: bool | str | None = False, cudnn_benchmark: bool | str | None = None) -> nn.Module:
    """Replace a U-GAT-IT / Morph-UGATIT model's generator attributes with their optimized
    versions in place (for the test phase and Morph's interpolate / translate); returns model.
    `cuda_graphs` / `cudnn_benchmark`: True, False or None / "auto" (graphs: on a CUDA device;
    benchmark: torch_port.fast.default_cudnn_benchmark), as the flags give them. With fp32, no
    compile, no graphs and cuDNN's benchmark mode at its default the model is returned unchanged
    (on a CPU, always with fp32 and no compile). A setting the device cannot run: OptionError
    naming the flag."""
    from ugatit_common.options import OptionError

    from .infer_flags import tristate
    device = _device_of(model)
    compute_dtype(precision)
    cuda_graphs, cudnn_benchmark = tristate(cuda_graphs), tristate(cudnn_benchmark)
    if cuda_graphs is None:  # auto: graphs wherever they can run
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise OptionError(f"--cuda_graphs True: CUDA graphs need --device cuda; this run is on {device.type} "
                          f"(leave --cuda_graphs False there)")
    if cudnn_benchmark is not None and device.type != "cuda":
        raise OptionError(f"--cudnn_benchmark applies to cuDNN (--device cuda); this run is on {device.type}")
    if precision == "fp32" and not compile and not cuda_graphs and not cudnn_benchmark:
        return model
    if compile:  # said as itself, not as "--precision=fp32: ..." below
        check_inductor_cache()
    for attr in GENERATOR_ATTRS:
        g = model._modules.get(attr)
        if g is not None and not isinstance(g, OptimizedModule):
            try:
                fast = optimize(g, precision, compile, log=log, cuda_graphs=cuda_graphs,
                                cudnn_benchmark=cudnn_benchmark)
            except ValueError as e:  # the device cannot run this precision (said once, not "precision X: " twice)
                said = str(e).removeprefix(f"precision {precision}: ")
                raise OptionError(f"--precision={precision}: {said}") from e
            setattr(model, attr, fast)
    return model

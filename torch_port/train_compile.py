"""Compiled training (`--compile True` in `python -m torch_port` and `python -m morph train`).

What is compiled: each network of the model (the generators, Morph's generator with its latent
MLP, the discriminators) in place with `nn.Module.compile`, so parameter names, checkpoints and
`state_dict` keys do not change. AOTAutograd compiles each network's backward with its forward;
the loss sums, `torch.autograd.grad`'s bookkeeping and TF1 Adam stay eager (Adam is one fused
pass per tensor already, and its exact TF operation order is the parity contract).

Graphs: one per way a network is called in an iteration (the D step runs the generators without
gradient; a spectral-norm discriminator's first call of a step starts the power iteration, the
others reuse it; ...): 6 for the port, all compiled during the first iteration. The first
iteration's time is the compile cost (`CompileWatch` says it, with the graph breaks: there are
none in the port); a later iteration that compiles anything is reported with its counter, so a
recompile in the hot path cannot pass unnoticed.

Not compiled: the discriminators of the gradient-penalty losses (wgan-gp, wgan-lp, dragan), whose
penalty differentiates the discriminator twice: AOTAutograd cannot compile a double backward.
Their generators are compiled.
"""
from __future__ import annotations

import time

import torch.nn as nn

BACKEND = "inductor"
RECOMPILE_LIMIT = 64


def compiled_networks(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names compiled, names left eager with the reason) of `model`'s networks."""
    from .losses import uses_gradient_penalty
    from .networks import Discriminator, Generator
    gp = uses_gradient_penalty(model.config["gan_type"])
    yes, no = [], []
    for name, child in model.named_children():
        if isinstance(child, Discriminator) and gp:
            no.append(f"{name} (gan_type {model.config['gan_type']}: the penalty's double backward)")
        elif isinstance(child, (Generator, Discriminator)):
            yes.append(name)
    return yes, no


def compile_model(model: nn.Module, backend: str | None = None) -> tuple[list[str], list[str]]:
    """Compile `model`'s networks in place (once; `backend` default `BACKEND`, inductor);
    returns `compiled_networks(model)`."""
    backend = backend or BACKEND  # read at call time: the tests switch the module's BACKEND
    yes, no = compiled_networks(model)
    # Every network compiled with nn.Module.compile shares one code object (Module._call_impl),
    # and dynamo keeps at most `recompile_limit` (8) graphs per code object, then silently runs
    # eager. Training needs 6 (Morph 5), a test phase in the same process more: raise the limit,
    # and make hitting it an error rather than a silent fall-back to eager.
    from .fast import check_inductor_cache
    check_inductor_cache()
    import torch._dynamo.config as dynamo_config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.fail_on_recompile_limit_hit = True
    for name in yes:
        net = getattr(model, name)
        if getattr(net, "_compiled_call_impl", None) is None:
            net.compile(backend=backend)
    return yes, no


class CompileWatch:
    """Reports compilation around the training steps: the first iteration (the compile cost, the
    graphs, any graph break), then any later iteration that compiles a graph (a recompile).
    Counts come from `torch_port.fast.dynamo_counts` (dynamo's process-wide counters)."""

    def __init__(self, log):
        from .fast import dynamo_counts
        self.counts = dynamo_counts
        self.log = log
        self.iteration = 0
        self.graphs = dynamo_counts()["unique_graphs"]
        self.t0 = None

    def next_iteration(self) -> None:
        """Close the iteration in progress (report it) and open the next."""
        if self.iteration:
            now = self.counts()
            new = now["unique_graphs"] - self.graphs
            if self.iteration == 1:
                breaks = now["graph_breaks"]
                took = time.perf_counter() - self.t0
                self.log(" [*] torch.compile: " + (f"{new} graphs compiled in the first iteration ({took:.1f} s, "
                                                   f"compile included)" if new else "compiled code reused (no new graph)")
                         + "; graph breaks: " + (", ".join(f"{k} (x{v})" for k, v in breaks.items()) if breaks
                                                 else "none"))
            elif new:
                self.log(f" [!] torch.compile: {new} graph(s) recompiled in iteration {self.iteration} of this run "
                         f"(TORCH_LOGS=recompiles shows why)")
            self.graphs = now["unique_graphs"]
        self.iteration += 1
        if self.iteration == 1:
            self.t0 = time.perf_counter()


def compiled_steps(model: nn.Module, d_step, g_step, log, backend: str | None = None):
    """(d_step, g_step) with the model's networks compiled, each iteration watched by a
    `CompileWatch` (the D step opens an iteration, the loop's next D step closes it)."""
    backend = backend or BACKEND
    yes, no = compile_model(model, backend)
    log(f" [*] torch.compile ({backend}): {', '.join(yes)}" + (f"; eager: {', '.join(no)}" if no else ""))
    watch = CompileWatch(log)

    def d(*args, **kwargs):
        watch.next_iteration()
        return d_step(*args, **kwargs)
    return d, g_step

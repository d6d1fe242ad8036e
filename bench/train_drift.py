"""Why does compiled fp32 training drift from eager fp32 on CUDA (issue 17)? The evidence, in one
run: the loss band test's runs (parity_tests/test_train_precision.py: light, 32 px, ch 4, 8
iterations, lr 2e-4, seed 1) on CUDA, each path against eager fp32, and eager fp32 against itself.

    python bench/train_drift.py [--json OUT.json]          # CUDA; ~1-3 min (two cold compiles)

One iteration from the same weights (the sharp evidence): each path's weights, `u`, Adam's slots
and losses against eager fp32 after one D and one G step; besides the paths above, eager with
channels-last tensors (cuDNN's NHWC algorithms) and compile without inductor's layout
optimisation (which turns convolutions channels-last on CUDA): rounding gives ~1e-6, TF32 ~1e-3.

Runs: fp32 from initial weights one float32 ulp away (rounding-sized perturbation, nothing
else changed: the control), fp32 eager twice with cuDNN's default algorithms and ATen's atomic reflection-pad backward
("nondet": the run-to-run spread of CUDA fp32 itself), fp32 eager twice in deterministic mode (the
exact path's), fp32 captured in CUDA graphs, fp32 + compile (deterministic mode), bf16, fp16
(from the settled scale 16) and tf32. Printed: the worst relative difference of d_loss and g_loss
over the 8 iterations for each pair, and iteration by iteration for the telling pairs (a
difference that starts at float32 rounding, ~1e-7, and grows by orders of magnitude per iteration
is the GAN + Adam amplifying any perturbation: the band then measures chaos, not the path)."""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_iteration_state(device, skip_compile=False) -> dict:
    """From the same weights and batch, one D step and one G step in each path; the relative
    difference (max |a - b| / max |a| per group) of the weights, the spectral-norm `u`, Adam's m
    and v and the losses against eager fp32 (deterministic). Rounding gives ~1e-6; a path whose
    `u` or weights differ by far more after ONE iteration computes something else."""
    import copy

    import torch

    from parity_tests.test_train_precision import NET
    from torch_port import build_ugatit, train_compile
    from torch_port.train_precision import deterministic_math, mixed_precision_steps, tf32_steps
    torch.manual_seed(1)
    base = build_ugatit(NET)
    g = torch.Generator().manual_seed(2)
    x, y = ((torch.rand(1, 3, 32, 32, generator=g) * 2 - 1).to(device) for _ in range(2))

    def run(path):
        m = copy.deepcopy(base).to(device)
        m.make_optimizers(2e-4)
        d_step, g_step = m.d_step, m.g_step
        xx, yy, layout = x, y, _null()
        if path.startswith("compile"):
            train_compile.compile_model(m)
            if path == "compile_nolayout":  # inductor keeps eager's NCHW convolutions
                import torch._inductor.config as inductor_config
                layout = inductor_config.patch(layout_optimization=False)
        elif path == "eager_cl":  # eager with cuDNN's NHWC kernels (what inductor's layout optimisation picks on CUDA)
            m = m.to(memory_format=torch.channels_last)
            xx, yy = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
        elif path in ("bf16", "fp16"):
            d_step, g_step = mixed_precision_steps(m, d_step, g_step, path, device)
            for o in (m.D_optim, m.G_optim):
                if path == "fp16":
                    o.loss_scaler.scale = 16.0  # the settled scale (no skipped step)
        elif path == "tf32":
            d_step, g_step = tf32_steps(d_step, g_step, device.type)
        with deterministic_math() if device.type == "cuda" else _null(), layout:
            d = d_step(xx, yy, 2e-4)
            gg = g_step(xx, yy, 2e-4)
        state = {k: v.detach().double().cpu() for k, v in m.state_dict().items()}
        groups = {"u": [v for k, v in state.items() if k.endswith(".u")],
                  "weights": [v for k, v in state.items() if not k.endswith(".u")],
                  "adam m": [t.double().cpu() for o in (m.D_optim, m.G_optim) for t in o.m.values()],
                  "adam v": [t.double().cpu() for o in (m.D_optim, m.G_optim) for t in o.v.values()]}
        return groups, (d["Discriminator_loss"], gg["Generator_loss"])

    ref, ref_loss = run("eager")
    out = {}
    print("\none iteration from the same weights and batch, vs eager fp32: max |diff| / max |ref| per group")
    # compile_nolayout and eager_cl: is a compiled step's difference inductor's channels-last
    # convolutions (cuDNN's NHWC algorithms), not its own kernels? (layout optimisation acts on CUDA only)
    for path in ["eager", "tf32", "bf16", "fp16", "eager_cl"] + ([] if skip_compile else ["compile", "compile_nolayout"]):
        try:
            got, loss = run(path)
        except Exception as e:  # noqa: BLE001
            print(f"  {path:<8} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        row = {k: max(float((a - b).abs().max()) for a, b in zip(ref[k], got[k]))
               / max(float(a.abs().max()) for a in ref[k]) for k in ref}
        row["d_loss"] = abs(loss[0] - ref_loss[0]) / abs(ref_loss[0])
        row["g_loss"] = abs(loss[1] - ref_loss[1]) / abs(ref_loss[1])
        out[path] = row
        print(f"  {path:<8} " + "  ".join(f"{k} {v:.1e}" for k, v in row.items()))
    return out


def conv_accuracy(device) -> dict:
    """Each distinct convolution of the drift model (shapes recorded from one G and one D forward)
    in float32 on `device` against float64 on the CPU: max |diff| / max |ref| of the output and of
    both gradients, per way cuDNN may run it: deterministic mode (the exact path), cuDNN's default
    heuristic, benchmark mode (timed choice: FFT / Winograd allowed), and channels-last (what
    inductor's layout optimisation runs). Rounding gives ~1e-6; FFT / Winograd ~1e-5-1e-4; TF32
    ~1e-3: a mode far above rounding is a cause of drift that compile or graphs would inherit."""
    import torch
    import torch.nn.functional as F

    from parity_tests.test_train_precision import NET
    from torch_port import build_ugatit
    from torch_port.train_precision import cudnn_benchmark, deterministic_math
    torch.manual_seed(1)
    model = build_ugatit(NET)
    shapes, original = {}, F.conv2d

    def record(x, w, b=None, stride=1, *args, **kwargs):
        key = (tuple(x.shape), tuple(w.shape), stride if isinstance(stride, int) else tuple(stride))
        shapes.setdefault(key, (x.detach().clone(), w.detach().clone()))
        return original(x, w, b, stride, *args, **kwargs)
    F.conv2d = record
    try:
        with torch.no_grad():
            x = torch.rand(1, 3, 32, 32) * 2 - 1
            fake, _ = model.generate_a2b(x)
            model.discriminator_B(fake)
    finally:
        F.conv2d = original

    def grads(x, w, stride, g, memory_format=torch.contiguous_format):
        x = x.contiguous(memory_format=memory_format).requires_grad_(True)
        w = w.contiguous(memory_format=memory_format).requires_grad_(True)
        y = original(x, w, None, stride)
        gx, gw = torch.autograd.grad(y, (x, w), g.contiguous(memory_format=memory_format))
        return y, gx, gw

    modes = {"deterministic": lambda: deterministic_math() if device.type == "cuda" else _null(),
             "default": lambda: cudnn_benchmark(False), "benchmark": lambda: cudnn_benchmark(True),
             "channels_last det": lambda: deterministic_math() if device.type == "cuda" else _null()}
    out = {}
    print("\nconvolutions in float32 vs float64 (max |diff| / max |ref| of output, grad input, grad weight)")
    for (xs, ws, stride), (x, w) in sorted(shapes.items()):
        g = torch.randn(original(x, w, None, stride).shape, generator=torch.Generator().manual_seed(3))
        ref = grads(x.double(), w.double(), stride, g.double())
        row = {}
        for mode, ctx in modes.items():
            fmt = torch.channels_last if mode.startswith("channels_last") else torch.contiguous_format
            with ctx():
                got = grads(x.to(device), w.to(device), stride, g.to(device), fmt)
            row[mode] = [float((a.double().cpu() - b).abs().max() / b.abs().max()) for a, b in zip(got, ref)]
        name = f"x{list(xs)} w{list(ws)} s{stride}"
        out[name] = row
        print(f"  {name:<40} " + "  ".join(f"{m} " + "/".join(f"{v:.0e}" for v in r) for m, r in row.items()))
    return out


def _null():
    import contextlib
    return contextlib.nullcontext()


def main(argv=None) -> int:
    from ugatit_common.options import path_value
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, type=path_value)
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script (no graphs, no TF32)")
    p.add_argument("--skip_compile", action="store_true", help="leave out the compiled runs")
    a = p.parse_args(argv)
    from workers import check_json_out, measured_on, write_json  # bench/workers.py (sys.path[0] as a script)
    if a.json and check_json_out(a.json):  # before the work, not after it
        p.error(check_json_out(a.json))
    import torch

    from parity_tests.test_train_precision import D_BAND, G_BAND, SETTLED_SCALE, _config, demo_folder
    from torch_port import train_precision
    from torch_port.train import Trainer, pick_device
    from ugatit_common.options import OptionError
    try:
        device = pick_device(a.device)
    except OptionError as e:  # no CUDA here, or not a device: one line, not a traceback
        p.error(str(e))
    print(f"measured on {measured_on(device)['gpu']}, torch {torch.__version__}", flush=True)
    # the sharp evidence first: printed even if the step's timeout ends the longer runs below
    one = one_iteration_state(device, skip_compile=a.skip_compile)
    try:
        convs = conv_accuracy(device)
    except Exception as e:  # noqa: BLE001 - evidence, not a gate
        convs = {"failed": f"{type(e).__name__}: {e}"}
        print(f"conv accuracy failed: {convs['failed'][:200]}")

    def save(**more):  # JSON after each part (a timeout keeps what was measured)
        if a.json:
            write_json(a.json, {"torch": torch.__version__, "device": str(device), **measured_on(device),
                                "one_iteration": one, "conv_accuracy": convs, **more}, indent=1)
    save()
    runs = {}
    class Nudged(Trainer):
        """fp32 from initial weights moved by one float32 ulp each (a perturbation at the rounding
        level, no other difference): how far 8 iterations carry float32 rounding alone."""

        def start_fresh(self):
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))

    plan = [("nondet_1", "fp32", False, False, False), ("nondet_2", "fp32", False, False, False),
            ("det_1_ulp", "fp32", False, False, True),
            ("det_1", "fp32", False, False, True), ("det_2", "fp32", False, False, True),
            ("det_graphs", "fp32", False, True, True), ("compile_det", "fp32", True, False, True),
            ("bf16", "bf16", False, True, True),
            ("fp16", "fp16", False, True, True), ("tf32", "tf32", False, True, True)]
    if a.skip_compile:
        plan = [r for r in plan if not r[2]]
    init = train_precision.LOSS_SCALE_INIT
    from work_folders import work_folder  # bench/work_folders.py: those of killed runs removed first
    with work_folder("train_drift_") as root, demo_folder(root):
        for name, precision, compile, graphs, det in plan:
            Trainer.DETERMINISTIC_FP32 = det
            train_precision.LOSS_SCALE_INIT = SETTLED_SCALE if precision == "fp16" else init
            try:
                graphs_flag = graphs if device.type == "cuda" else "auto"  # a CPU has no graph: the eager steps
                out = (Nudged if name.endswith("_ulp") else Trainer)(_config(name), device, seed=1, precision=precision,
                                                                      compile=compile, cuda_graphs=graphs_flag,
                                                                      log=lambda m: None).run()
                runs[name] = [(r["d_loss"], r["g_loss"]) for r in out["history"]]
                print(f"ran {name}", flush=True)
            except Exception as e:  # noqa: BLE001 - a failing path is evidence too
                runs[name] = None
                print(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            finally:
                Trainer.DETERMINISTIC_FP32 = True
                train_precision.LOSS_SCALE_INIT = init
    pairs = [("nondet_1", "nondet_2", "CUDA fp32 vs itself (default cuDNN, atomic pad backward)"),
             ("det_1", "det_2", "CUDA fp32 vs itself (deterministic mode)"),
             ("det_1", "det_1_ulp", "fp32 vs fp32 from weights 1 ulp away"),
             ("det_1", "det_graphs", "graphs vs eager (deterministic)"),
             ("det_1", "compile_det", "compile vs eager (deterministic)"),
             ("det_1", "nondet_1", "deterministic vs default eager"),
             ("det_1", "bf16", "bf16 vs fp32"), ("det_1", "fp16", "fp16 vs fp32"), ("det_1", "tf32", "tf32 vs fp32")]
    rows = []
    print(f"\nworst relative loss difference over 8 iterations (band: d {D_BAND}, g {G_BAND})")
    for x, y, what in pairs:
        if x not in runs or y not in runs:
            print(f"  {what:<58} (not run: --skip_compile)")
            continue
        if not runs[x] or not runs[y]:
            print(f"  {what:<58} (a run failed: {x if not runs[x] else y}, above)")
            continue
        per = [(abs(a[0] - b[0]) / abs(a[0]), abs(a[1] - b[1]) / abs(a[1])) for a, b in zip(runs[x], runs[y])]
        d, g = max(v[0] for v in per), max(v[1] for v in per)
        rows.append({"pair": [x, y], "what": what, "d": d, "g": g, "per_iteration": per})
        print(f"  {what:<58} d {d:9.2e}  g {g:9.2e}  {'in band' if d <= D_BAND and g <= G_BAND else 'OUT of band'}")
    print("\nper iteration (relative d_loss difference):")
    for row in rows:
        print(f"  {row['what']:<58} " + " ".join(f"{v[0]:.0e}" for v in row["per_iteration"]))
    save(runs=runs, pairs=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

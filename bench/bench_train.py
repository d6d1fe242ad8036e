"""Time per training iteration (one D run + one G run) and test-phase images/second (one
generator forward at img_size) for torch_port vs tf_reference, in the same run on the same
machine, with every training fast path of the port and of Morph-UGATIT beside them. Each
framework lives in its own worker process (in one process their thread pools spin against each
other and both slow down), and the parent times them alternately, iteration by iteration, so
load from other processes falls on all alike; medians are reported.

Training modes (`--modes`, `[morph-]<precision>[+compile][+graphs][+nondet]`): port fp32 (the exact
port), tf32 (CUDA), bf16, fp16 (CUDA only: on CPU float16 convolutions run a reference kernel),
each also + compile, + graphs (the steps captured as CUDA graphs, torch_port.train_graphs), fp32 +
nondet (CUDA fp32 without the exact path's deterministic mode), + cl (channels-last weights and
batches: a trial the trainer does not offer); morph-* (Morph-UGATIT config C,
timed against its own fp32). An iteration is one D and one G step as the trainer's loop runs them
(the same wrappers; loss values fetched without blocking). Compile time is reported separately:
the first iteration of a compiled mode minus its median (a fresh inductor cache: what a user's
first run pays).

On CUDA (no TensorFlow there): per mode the median synchronised iteration, the host's share
(launching the steps), the pipelined rate (iterations back to back, values read two iterations
late, as the loop does) and issue 17's targets beside them (light, 256 px, batch 1, H200: fp32
<= 0.15 s, tf32 <= 0.10 s, bf16 / fp16 <= 0.06 s, Morph C within 10 % of the port).

    python bench/bench_train.py                       # light, 256 px, batch 1, ch 64, every mode
    python bench/bench_train.py --img_size 64 --ch 8 --n_dis 4 --iters 3
    python bench/bench_train.py --modes fp32,bf16     # a subset
    python bench/bench_train.py --device cuda --json out.json          # every CUDA mode, targets
    python bench/bench_train.py --device cuda --light False --modes fp32+graphs,bf16+graphs

Targets (issue 9, a CPU with bf16 support): training fp32 <= 0.8x of tf_reference, bf16 <= 0.5x;
Morph bf16 <= 0.6x of Morph fp32.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ugatit_common import options as opt  # noqa: E402

from work_folders import work_folder  # noqa: E402 - bench/work_folders.py
from workers import Worker, check_json_out, measured_on, reply, targets_note, write_json  # bench/workers.py (this folder is sys.path[0] as a script)


def _inputs(s):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32), rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32))


def parse_mode(mode: str) -> dict:
    """'[morph-]<precision>[+compile][+graphs][+nondet][+cl]' -> its parts (precision fp32 / tf32 /
    bf16 / fp16; graphs: the steps captured as CUDA graphs; nondet: fp32 without the exact path's
    deterministic mode; cl: weights and batches in channels-last layout, a trial: the trainer
    does not offer it)."""
    family = "morph" if mode.startswith("morph-") else "port"
    precision, *flags = mode[len("morph-"):].split("+") if family == "morph" else mode.split("+")
    unknown = set(flags) - {"compile", "graphs", "nondet", "cl"}
    if precision not in ("fp32", "tf32", "bf16", "fp16") or unknown:
        raise ValueError(f"unknown mode {mode!r}")
    return {"family": family, "precision": precision, "compile": "compile" in flags, "graphs": "graphs" in flags,
            "deterministic": "nondet" not in flags, "channels_last": "cl" in flags}


class TrainModes:
    """{mode: train_iteration} of one worker, each built by `build(mode)` when first asked for (or
    by `build`), and `release`d on request: on CUDA the parent times one mode at a time and
    releases it before the next, so the GPU holds one mode's model, Adam state and CUDA graph
    pools at a time (all of a group at once: the full model's four graphed modes ~95 GiB by our
    estimate, more than an H100's 80 GB)."""

    def __init__(self, modes, build):
        self.modes, self._build, self._built = list(modes), build, {}

    def __iter__(self):
        return iter(self.modes)

    def __contains__(self, mode) -> bool:
        return mode in self.modes

    def __getitem__(self, mode):
        if mode not in self.modes:
            raise KeyError(mode)
        if mode not in self._built:
            self._built[mode] = self._build(mode)
        return self._built[mode]

    def build(self, mode) -> None:
        self[mode]

    def built(self) -> list:
        return list(self._built)

    def release(self, mode) -> None:
        self._built.pop(mode, None)


def torch_runner(cfg, device, init_from: str | None = None, modes=("fp32",), lazy: bool = False):
    """(TrainModes {mode: train_iteration}, translate, sync) callables for torch_port; a
    train_iteration runs one D and one G step as the trainer's loop does (the steps built by the
    same wrappers: precision, compile, the CUDA math settings, CUDA graphs; the loss values
    fetched without blocking) and returns the values in flight (`PendingValues`: `.result()`
    waits for them). On a CPU, modes with the same compile setting share one model (the
    mixed-precision wrappers change nothing outside autocast), all built at once; on CUDA every
    mode has its own (fp16 installs loss scalers, graphs their own memory pools), built when first
    asked for (`lazy`) and dropped with its model by `TrainModes.release`. Morph modes build
    Morph-UGATIT config C. init_from: a TF checkpoint folder whose weights (converted) the port's
    models start from."""
    import copy

    import torch
    from torch_port import build_ugatit
    from torch_port.host_device import PendingValues
    from torch_port.train_compile import compile_model
    from torch_port.train_graphs import static_steps
    from torch_port.train_precision import cuda_steps, mixed_precision_steps
    torch.manual_seed(0)
    base = build_ugatit(cfg)
    if init_from:
        import weights_convert
        base.load_state_dict(weights_convert.tf_to_torch(init_from, overrides={"img_size": cfg["img_size"]})[1])
    a, b = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device) for x in _inputs(cfg["img_size"]))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    models = {}

    def model_for(family, compiled, key_extra=None, channels_last=False):
        key = (family, compiled, key_extra, channels_last)
        if key not in models or models[key] is None:
            if family == "morph":
                from morph.model import MorphUGATIT
                torch.manual_seed(0)
                m = MorphUGATIT(dict(cfg, morph_config="C"))
                m.z_generator = torch.Generator().manual_seed(0)
            else:
                m = copy.deepcopy(base)
            m = m.to(device)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            m.make_optimizers(cfg["lr"])
            m.loss_values = "tensor"  # as in the trainer's loop: no read back inside a step
            if compiled:
                compile_model(m)
            models[key] = m
        return models[key]

    def build(mode):
        spec = parse_mode(mode)
        key_extra = mode if device.type == "cuda" else None
        m = model_for(spec["family"], spec["compile"], key_extra, spec["channels_last"])
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (a, b)) if spec["channels_last"] else (a, b)
        d_step, g_step = m.d_step, m.g_step
        if spec["precision"] != "fp32":
            d_step, g_step = mixed_precision_steps(m, d_step, g_step, spec["precision"], device)
        d_step, g_step = cuda_steps(d_step, g_step, spec["precision"], device, spec["deterministic"])
        how = "capture" if spec["graphs"] and device.type == "cuda" else "off"
        d_step, g_step = static_steps(m, d_step, g_step, how, [(m, "make_z")] if spec["family"] == "morph" else [],
                                      log=lambda line: print(line, file=sys.stderr, flush=True))

        def train(d_step=d_step, g_step=g_step, x=x, y=y):
            values = [PendingValues(d_step(x, y, cfg["lr"]))]
            g = dict(g_step(x, y, cfg["lr"]))
            g.pop("fake_A"), g.pop("fake_B")
            return values + [PendingValues(g)]
        return train

    class Modes(TrainModes):
        def release(self, mode):
            super().release(mode)
            spec = parse_mode(mode)  # its own model on CUDA: dropped with its graphs and Adam state
            if device.type == "cuda":
                models.pop((spec["family"], spec["compile"], mode, spec["channels_last"]), None)

    trains = Modes(modes, build)
    if not lazy:
        for mode in modes:
            trains.build(mode)

    def translate():
        with torch.no_grad():
            model_for("port", False).translate(a, "a2b")
        sync()
    return trains, translate, sync


def tf_runner(cfg, save_to: str | None = None):
    """(train_iteration, translate) callables for tf_reference (two graphs, two sessions).
    save_to: write the initial weights there (a checkpoint folder) and give the test graph the
    same weights, so both frameworks run the same model."""
    from tf_reference.compat import session_config, tf
    from tf_reference.model import UGATITGraph
    s = cfg["img_size"]
    a, b = _inputs(s)
    g_train, g_test = tf.Graph(), tf.Graph()
    with g_train.as_default():
        pa, pb = tf.placeholder(tf.float32, [1, s, s, 3]), tf.placeholder(tf.float32, [1, s, s, 3])
        m = UGATITGraph(cfg).build_train(pa, pb)
        sess_train = tf.Session(graph=g_train, config=session_config(g_train))
        sess_train.run(tf.global_variables_initializer())
        if save_to:
            prefix = tf.train.Saver().save(sess_train, os.path.join(save_to, "UGATIT.model"), global_step=0)
    with g_test.as_default():
        mt = UGATITGraph(dict(cfg, phase="test")).build_test()
        sess_test = tf.Session(graph=g_test)
        sess_test.run(tf.global_variables_initializer())
        if save_to:
            tf.train.Saver().restore(sess_test, prefix)
    feed = {pa: a, pb: b, m.lr: cfg["lr"]}

    def train():
        sess_train.run(m.D_optim, feed)
        sess_train.run(m.G_optim, feed)

    def translate():
        sess_test.run(mt.test_fake_B, {mt.test_domain_A: a})
    return train, translate


def conv_throughput(device, ch: int = 256, size: int = 64, reps: int = 5, dtype=None) -> float:
    """FLOP/s of the port's commonest convolution (3x3, ch -> ch at size x size: a resblock of the
    256-px model), forward plus both backward products, best of `reps` (a practical peak);
    `dtype` bfloat16 / float16: under autocast, as the mixed-precision training runs it."""
    import contextlib

    import torch
    import torch.nn.functional as F
    x = torch.randn(1, ch, size + 2, size + 2, device=device, requires_grad=True)
    w = torch.randn(ch, ch, 3, 3, device=device, requires_grad=True)
    flops = 3 * 2 * size * size * ch * ch * 9
    best = float("inf")
    for _ in range(reps + 1):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            y = F.conv2d(x, w)
        y.backward(torch.ones_like(y))
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return flops / best


def iteration_flops(train) -> int:
    """FLOPs of one training iteration as the port computes it (convolutions and matrix products,
    forward and backward, counted by torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        train()
    return counter.get_total_flops()


def profile(fn, top: int = 10) -> list:
    """[(op, self seconds, calls)] of one call of `fn` under torch.profiler, the `top` largest by
    self CPU time, then everything else as one row: where an iteration's time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()),
                  key=lambda r: -r[1])
    rest = sum(r[1] for r in rows[top:])
    return rows[:top] + [("(everything else)", rest, sum(r[2] for r in rows[top:]))]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed_iteration(train, sync) -> dict:
    """One iteration: the host's time to launch it (until the steps return) and the time until its
    loss values are on the host (the GPU done)."""
    t = time.perf_counter()
    values = train()
    host = time.perf_counter() - t
    for v in values:
        v.result()
    sync()
    return {"seconds": time.perf_counter() - t, "host_seconds": host}


def _pipelined(train, sync, n: int) -> float:
    """n iterations back to back, values read two iterations late as the trainer's loop does:
    seconds per iteration."""
    t = time.perf_counter()
    pending = []
    for _ in range(n):
        pending.append(train())
        if len(pending) > 2:
            for v in pending.pop(0):
                v.result()
    for vs in pending:
        for v in vs:
            v.result()
    sync()
    return (time.perf_counter() - t) / n


CPU_MODES = ["fp32", "bf16", "fp32+compile", "bf16+compile", "morph-fp32", "morph-bf16"]
# CUDA: every precision with graphs and eager (what graphs give), fp32 without the
# deterministic mode (what determinism costs), bf16 / fp16 channels-last (a trial), Morph C; the
# compiled mode is timed on its own (bench/gpu_check.sh: bf16+compile+graphs)
CUDA_MODES = ["fp32", "fp32+graphs", "fp32+nondet+graphs", "tf32", "tf32+graphs", "bf16", "bf16+graphs", "fp16",
              "fp16+graphs", "bf16+graphs+cl", "fp16+graphs+cl", "morph-fp32", "morph-fp32+graphs", "morph-tf32+graphs",
              "morph-bf16+graphs", "morph-fp16+graphs"]
# issue 17's targets, set on an H200 (light, 256 px, batch 1): seconds per iteration; Morph within 10 %
CUDA_TARGETS = {"fp32": 0.15, "tf32": 0.10, "bf16": 0.06, "fp16": 0.06}
MORPH_SLACK = 1.10


def worker(name: str, cfg: dict, device: str, weights: str | None, modes: list[str]) -> int:
    """Serve timing requests on stdin ("train:<mode>" / "translate" / "floor"), one JSON line each.
    `weights`: the TF worker writes its initial weights there, the torch worker loads them."""
    if name == "torch_port":
        from torch_port.cpu_memory import keep_freed_memory
        from torch_port.train import pick_device
        dev = pick_device(device)
        if dev.type == "cpu":
            keep_freed_memory()  # as `python -m torch_port` does on CPU
        trains, translate, sync = torch_runner(cfg, dev, weights, modes, lazy=dev.type == "cuda")
        import torch

        def build(mode):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            trains.build(mode)
            return {"built": mode}

        def release(mode):
            """Drop `mode`'s model, Adam state and graphs; what the GPU held at most since its build."""
            out = {"released": mode}
            if dev.type == "cuda":
                out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
                out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2 ** 30
            trains.release(mode)
            import gc
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            return out

        def floor():
            # counted on an eager mode: a CUDA graph's replay launches no operator the counter sees
            eager = [m for m in trains if not (parse_mode(m)["graphs"] and dev.type == "cuda")]
            ref = trains["fp32"] if "fp32" in trains else (trains[eager[0]] if eager else None)
            flops = iteration_flops(lambda: [v.result() for v in ref()]) if ref is not None else None
            return {"flops": flops, "peak": conv_throughput(dev), "peak_bf16": conv_throughput(dev, dtype=torch.bfloat16)}
    else:
        train, translate = tf_runner(cfg, weights)
        trains = {"tf": train}
        sync = None
    reply({"ready": True})
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what == "floor":
            reply(floor())
            continue
        if what.startswith("build:") or what.startswith("release:"):
            kind, mode = what.split(":", 1)
            reply((build if kind == "build" else release)(mode))
            continue
        if what.startswith("profile:"):
            mode = what.split(":", 1)[1]
            reply({"ops": profile(lambda: [v.result() for v in trains[mode]()])})
            continue
        if what.startswith("pipe:"):
            _, mode, n = what.split(":")
            reply({"seconds": _pipelined(trains[mode], sync, int(n))})
            continue
        if what == "translate" or sync is None:  # tf_reference's callables return when done
            fn = translate if what == "translate" else trains[what.split(":", 1)[1]]
            reply({"seconds": _timed(fn)})
            continue
        reply(_timed_iteration(trains[what.split(":", 1)[1]], sync))
    return 0


def _Worker(name, args, env=None):
    return Worker(os.path.abspath(__file__), name, args, env)


def _groups(modes) -> dict:
    """One worker process per group: the port's eager / graphed modes, its compiled modes, Morph's."""
    specs = {m: parse_mode(m) for m in modes}
    return {"port": [m for m in modes if specs[m]["family"] == "port" and not specs[m]["compile"]],
            "morph": [m for m in modes if specs[m]["family"] == "morph" and not specs[m]["compile"]],
            "compiled": [m for m in modes if specs[m]["compile"]]}


def cuda_main(a, cfg, modes) -> int:
    """The CUDA benchmark (no TensorFlow there): each mode's median seconds per iteration over
    `iters` synchronised iterations after `warmup`, the host's share of it (launching the steps),
    the pipelined rate (iterations back to back, as the loop runs), compile time, and the issue's
    targets beside the figures. Each row is printed as soon as it is measured (a timeout keeps
    what was done); --json is rewritten after each mode."""
    import torch
    passthrough = ["--img_size", str(a.img_size), "--ch", str(a.ch), "--n_dis", str(a.n_dis),
                   "--light", str(a.light), "--device", a.device]
    cache = work_folder("bench_train_inductor_")  # a cold compile, as a user's first run (bench/work_folders.py)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache.name)
    gpu = measured_on()  # the GPU's own name (an H100 or an H200 may be lent: results say which)
    print(f"{gpu['gpu']} ({gpu['memory_gib']} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"light={a.light} "
          f"img_size={a.img_size} ch={a.ch} n_dis={a.n_dis} batch=1; median of {a.iters} after {a.warmup} warm-up "
          f"iterations; pipelined: {a.pipelined} back to back", flush=True)
    print(f"{'mode':<26}{'s/iter':>9}{'host s':>9}{'pipelined':>11}{'target':>8}{'compile s':>11}{'peak GiB':>10}",
          flush=True)
    rows, failed, floor = {}, {}, None
    try:
        for group, group_modes in _groups(modes).items():
            if not group_modes:
                continue
            w = None
            try:
                for mode in group_modes:
                    if w is None:  # (again after a worker died: the group's other modes still run)
                        try:
                            w = _Worker("torch_port", passthrough + ["--modes", ",".join(group_modes)], env)
                        except RuntimeError as e:  # a worker that cannot start: the group's rows are missing
                            print(f"group {group}: {e}", flush=True)
                            failed.update({m: str(e) for m in group_modes if m not in rows})
                            break
                    try:
                        rows[mode] = _cuda_mode(w, mode, a)
                    except RuntimeError as e:  # the worker died (e.g. out of memory): this mode's row is missing
                        print(f"{mode:<26}failed: {e}", flush=True)
                        failed[mode] = str(e)
                        _close(w)
                        w = None
                    _write_json(a.json, cfg, "cuda", rows, floor, failed, gpu)  # a timeout keeps every row so far
                if group == "port" and floor is None and w is not None:
                    try:
                        floor = w.ask("floor")
                    except RuntimeError as e:
                        print(f"arithmetic floor: {e}", flush=True)
                        w = None
            finally:
                _close(w)
            _write_json(a.json, cfg, "cuda", rows, floor, failed, gpu)
    finally:
        cache.cleanup()
    _cuda_summary(rows, floor, a, gpu["gpu"])
    _write_json(a.json, cfg, "cuda", rows, floor, failed, gpu)
    return 0


def _close(w) -> None:
    if w is not None:
        try:
            w.close()
        except OSError:
            pass


def _cuda_mode(w, mode: str, a) -> dict:
    """One mode on CUDA in worker `w`: built, `warmup` + `iters` synchronised iterations, the
    pipelined rate, then released (the next mode has the GPU's memory); its row, printed."""
    spec = parse_mode(mode)
    w.ask(f"build:{mode}")
    # eager modes need no capture: 2 warm-up iterations (cuDNN / cuBLAS set-up) are enough
    warmup = a.warmup if spec["graphs"] or spec["compile"] else min(a.warmup, 2)
    runs = [w.ask(f"train:{mode}") for _ in range(warmup + a.iters)]
    timed = runs[warmup:]
    t = statistics.median(r["seconds"] for r in timed)
    host = statistics.median(r["host_seconds"] for r in timed)
    pipe = w.time(f"pipe:{mode}:{a.pipelined}") if a.pipelined else None
    memory = w.ask(f"release:{mode}")
    target = CUDA_TARGETS.get(spec["precision"]) if a.light and a.img_size == 256 else None
    comp = runs[0]["seconds"] - t if spec["compile"] else None
    row = {"seconds": t, "host_seconds": host, "pipelined_seconds": pipe, "target": target, "compile_seconds": comp,
           "times": [r["seconds"] for r in timed], "first_seconds": runs[0]["seconds"],
           "peak_allocated_gib": memory.get("peak_allocated_gib"), "peak_reserved_gib": memory.get("peak_reserved_gib")}
    gib = row["peak_reserved_gib"]
    print(f"{mode:<26}{t:>9.4f}{host:>9.4f}{(f'{pipe:.4f}' if pipe else '-'):>11}"
          f"{(f'{target:.2f}' if target else '-'):>8}{(f'{comp:.0f}' if comp is not None else '-'):>11}"
          f"{(f'{gib:.1f}' if gib is not None else '-'):>10}", flush=True)
    return row


def _write_json(path, cfg, device, rows, floor, failed=None, gpu=None) -> None:
    if path:
        write_json(path, {"config": cfg, "device": device, "measured_on": gpu, "rows": rows, "floor": floor,
                          "failed": failed or {}}, indent=1, default=str)


def _cuda_summary(rows, floor, a, gpu: str = "the GPU") -> None:
    """The targets beside the best measured mode of each precision (the exact fp32 path: fp32 in
    deterministic mode; Morph: within 10 % of the port in the same precision)."""
    def best(prefix, precision):
        cands = {m: r["pipelined_seconds"] or r["seconds"] for m, r in rows.items()
                 if parse_mode(m)["precision"] == precision and parse_mode(m)["family"] == prefix
                 and parse_mode(m)["deterministic"] and not parse_mode(m)["channels_last"]}
        return min(cands.items(), key=lambda kv: kv[1]) if cands else (None, None)
    print(f"\ntargets (issue 17's, set on an H200 for light 256 px batch 1) against {gpu} (pipelined s/iter where "
          f"measured; the port's trainer runs NCHW, so +cl rows are a trial, not counted):")
    if targets_note(gpu):
        print(f"  ({targets_note(gpu)})")
    for precision, target in CUDA_TARGETS.items():
        mode, t = best("port", precision)
        mmode, mt = best("morph", precision)
        if mode is None:
            print(f"  {precision:<5} target <= {target:.2f} s: not measured")
            continue
        verdict = ("met" if t <= target else "MISSED") if a.light and a.img_size == 256 else "(other size)"
        line = f"  {precision:<5} target <= {target:.2f} s: {t:.4f} s ({mode}) {verdict}"
        if mmode is not None:
            line += (f"; Morph C {mt:.4f} s ({mmode}) = {mt / t:.2f}x of the port "
                     f"({'within' if mt <= MORPH_SLACK * t else 'OUTSIDE'} 10 %)")
        print(line)
    if floor and not floor.get("flops"):
        print("arithmetic floor: not counted (every mode of this run replays a CUDA graph; add the mode fp32)")
    elif floor:
        for key, label in (("peak", "fp32"), ("peak_bf16", "bf16 autocast")):
            if floor.get(key):
                print(f"arithmetic floor ({label}): {floor['flops'] / 1e12:.3f} TFLOP per iteration / "
                      f"{floor[key] / 1e12:.1f} TFLOP/s (3x3 conv, forward + backward) = "
                      f"{floor['flops'] / floor[key]:.4f} s per iteration")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--n_dis", type=int, default=6)
    p.add_argument("--light", type=opt.str2bool, default=True)
    p.add_argument("--iters", type=int, default=None, help="timed iterations per mode (default: CPU 3, CUDA 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first iterations (default: CPU 1, CUDA 5: "
                   "graphs are captured at the 4th)")
    p.add_argument("--pipelined", type=int, default=10, help="CUDA: also time this many iterations back to back "
                   "(values read two iterations late, as the trainer's loop does)")
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", default="", help="comma-separated training modes of the port (default: every mode "
                   f"of the device; CPU: {','.join(CPU_MODES)})")
    p.add_argument("--skip_tf", action="store_true")
    p.add_argument("--json", default=None, type=opt.path_value, help="also write the results here")
    p.add_argument("--profile", action="store_true", help="also print where one iteration of each mode spends its "
                   "time (torch.profiler, self CPU time by op)")
    p.add_argument("--worker", choices=["torch_port", "tf_reference"], help=argparse.SUPPRESS)
    p.add_argument("--weights", type=opt.path_value, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag, least in (("iters", 1), ("warmup", 0), ("pipelined", 0)):  # one line, not a traceback after the work
        if getattr(a, flag) is not None and getattr(a, flag) < least:
            p.error(f"--{flag}={getattr(a, flag)}: must be >= {least}")
    cfg = opt.validate(opt.config_from(light=a.light, img_size=a.img_size, ch=a.ch, n_dis=a.n_dis))
    if a.json and not a.worker and check_json_out(a.json):  # before the work, not after it
        p.error(check_json_out(a.json))
    from torch_port.train import pick_device
    device = pick_device(a.device)
    modes = [m for m in a.modes.split(",") if m] or (CUDA_MODES if device.type == "cuda" else CPU_MODES)
    for m in modes:
        try:
            parse_mode(m)
        except ValueError:
            p.error(f"unknown mode {m!r}: [morph-]fp32|tf32|bf16|fp16[+compile][+graphs][+nondet], e.g. {CUDA_MODES}")
    if a.worker:
        return worker(a.worker, cfg, a.device, a.weights, modes)
    if device.type == "cuda":
        a.iters, a.warmup = a.iters or 20, 5 if a.warmup is None else a.warmup
        return cuda_main(a, cfg, modes)
    a.iters, a.warmup = a.iters or 3, 1 if a.warmup is None else a.warmup
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # the reference of every ratio, and the arithmetic floor
    passthrough = ["--img_size", str(a.img_size), "--ch", str(a.ch), "--n_dis", str(a.n_dis),
                   "--light", str(a.light), "--device", a.device]
    # one torch worker per group at a time (three 256-px training models and their compiled graphs
    # in one process took 16 GB), each group timed alternately with the one TF worker
    groups = _groups(modes)
    tmp = work_folder("bench_train_")  # those of killed runs removed first (bench/work_folders.py)
    cache = work_folder("bench_train_inductor_")  # a cold compile, as a user's first run
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache.name)
    # TF first: it writes its initial weights, which the torch workers then load
    tf_worker = None if a.skip_tf else _Worker("tf_reference", passthrough + ["--weights", tmp.name])
    times, first, tf_times, tests, profiles = {}, {}, {}, {}, {}
    floor = None
    try:
        for group, group_modes in groups.items():
            if not group_modes:
                continue
            w = _Worker("torch_port", passthrough + ["--modes", ",".join(group_modes)]
                        + ([] if a.skip_tf else ["--weights", tmp.name]), env)
            jobs = [(w, m) for m in group_modes] + ([(tf_worker, "tf")] if tf_worker else [])
            try:
                for i in range(a.warmup + a.iters):  # alternate: one iteration of each in turn
                    for worker_, mode in jobs:
                        t = worker_.time(f"train:{mode}")
                        if i == 0:
                            first[mode] = t
                        if i >= a.warmup:
                            (tf_times.setdefault(group, []) if mode == "tf" else times.setdefault(mode, [])).append(t)
                    if group == "port":
                        for worker_ in [w] + ([tf_worker] if tf_worker else []):
                            t = worker_.time("translate")
                            if i >= a.warmup:
                                tests.setdefault(worker_.name, []).append(t)
                if group == "port":
                    floor = w.ask("floor")
                if a.profile:
                    for mode in group_modes:
                        profiles[mode] = w.ask(f"profile:{mode}")["ops"]
            finally:
                w.close()
    finally:
        if tf_worker:
            tf_worker.close()
        tmp.cleanup()
        cache.cleanup()
    import torch
    med = {m: statistics.median(v) for m, v in times.items()}
    tf_med = {g: statistics.median(v) for g, v in tf_times.items()}
    group_of = {m: g for g, ms in groups.items() for m in ms}
    print(f"\nsame initial weights in both: {not a.skip_tf}")
    print(f"light={a.light} img_size={a.img_size} ch={a.ch} n_dis={a.n_dis} batch=1 iters={a.iters} "
          f"torch threads={torch.get_num_threads()} load average {os.getloadavg()[0]:.2f} device {device.type}")
    print("tf_reference s/iter, timed alternately with each group: "
          + ", ".join(f"{g} {t:.3f}" for g, t in tf_med.items()))
    print(f"{'mode':<20}{'s/iter (D+G)':>14}{'vs TF':>8}{'vs own fp32':>13}{'compile s':>11}   per-iteration times")
    rows = {}
    for mode, t in med.items():
        tf = tf_med.get(group_of[mode])
        own = med["morph-fp32"] if mode.startswith("morph-") and "morph-fp32" in med else med["fp32"]
        comp = first[mode] - t if "+compile" in mode else None
        rows[mode] = {"seconds": t, "vs_tf": t / tf if tf else None, "vs_own_fp32": t / own, "tf_seconds": tf,
                      "compile_seconds": comp, "times": times[mode]}
        name = mode if mode.startswith("morph") else "port " + mode
        print(f"{name:<20}{t:>14.3f}{(f'{t / tf:.2f}x' if tf else '-'):>8}{f'{t / own:.2f}x':>13}"
              f"{(f'{comp:.0f}' if comp is not None else '-'):>11}   {' '.join(f'{x:.2f}' for x in times[mode])}")
    tf = tf_med.get("port")
    ips = {name: 1.0 / statistics.median(v) for name, v in tests.items()}
    print("test img/s: " + ", ".join(f"{k} {v:.2f}" for k, v in ips.items())
          + (f" ({ips['torch_port'] / ips['tf_reference']:.2f}x)" if len(ips) == 2 else ""))
    # what no implementation of the same arithmetic can beat on this machine: the iteration's
    # FLOPs at the best throughput measured for one of its own convolutions
    seconds = floor["flops"] / floor["peak"]
    print(f"arithmetic floor (fp32): {floor['flops'] / 1e12:.3f} TFLOP per iteration / {floor['peak'] / 1e9:.0f} "
          f"GFLOP/s (3x3 conv, forward + backward) = {seconds:.2f} s per iteration"
          + (f" = {seconds / tf:.2f}x of tf_reference's" if tf else "") + f"; port fp32 takes {med['fp32'] / seconds:.2f}x the floor")
    if "peak_bf16" in floor:
        s16 = floor["flops"] / floor["peak_bf16"]
        print(f"arithmetic floor (bf16 autocast): {floor['peak_bf16'] / 1e9:.0f} GFLOP/s = {s16:.2f} s per iteration"
              + (f" = {s16 / tf:.2f}x of tf_reference's" if tf else "")
              + (f"; port bf16 takes {med['bf16'] / s16:.2f}x the floor" if "bf16" in med else ""))
    for mode, ops in profiles.items():
        total = sum(o[1] for o in ops)
        print(f"\nprofile of one iteration, {mode} (self CPU seconds by op, {total:.2f} s in all):")
        for op, sec, calls in ops:
            print(f"  {op:<52}{sec:>8.2f} s {100 * sec / total:>5.1f}%  {calls:>6} calls")
    if a.json:
        write_json(a.json, {"config": cfg, "device": device.type, "rows": rows, "tf_seconds": tf_med,
                            "test_img_per_s": ips, "floor": floor, "profiles": profiles}, indent=1, default=str)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except opt.OptionError as e:  # a bad flag: one line, exit 2 (any other error keeps its traceback:
        print(f"error: {e}", file=sys.stderr)  # on a lent GPU it is the diagnosis)
        sys.exit(2)

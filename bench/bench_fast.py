"""Generator forward (the test phase, batch 1) of every fast path of torch_port side by side with
tf_reference, in the same run: fp32 eager, fp32 + torch.compile, bf16, bf16 + compile (and fp16
on CUDA; on CPU fp16 is measured on one convolution, see below). Each framework runs in its own
worker process; the parent times them alternately, call by call, so load from other processes
falls on all alike; medians are reported, ratios are to tf_reference's median.

    python bench/bench_fast.py                                # light and full, 256 px, ch 64
    python bench/bench_fast.py --light True --img_size 64 --ch 8 --iters 3
    python bench/bench_fast.py --profile                      # + where the time goes (torch.profiler)

Compile time is reported separately: the first call of a compiled path minus a steady call, with
a fresh inductor cache (a cold compile, what a user's first run pays; --warm_cache to reuse
~/.cache). Weights are random (speed does not depend on them; fidelity: parity_tests/fast_paths.py).
Targets (issue 9, a CPU with bf16 support): fp32 + compile <= 0.7x of TF, bf16 + compile <= 0.2x.

On CUDA (`--device cuda`) the run is bench/infer_matrix.py's instead, in this process (TF has no
GPU role there): every fast path (fp32 exact, tf32, bf16, fp16; eager, compiled, CUDA graphs,
cuDNN benchmark mode) at batch 1, 16, 64, the end-to-end test phase at batch 64, Morph's
generator and interpolate, the full model, fidelity against float64, a profile, and the targets
of issue 17 beside the measured values:

    python bench/bench_fast.py --device cuda --json r.json [--sections light,compile,e2e] [--iters 20]
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
from workers import Worker, check_json_out, reply, write_json  # bench/workers.py (this folder is sys.path[0] when run as a script)

CPU_MODES = ["fp32", "fp32+compile", "bf16", "bf16+compile"]
CUDA_MODES = CPU_MODES + ["fp16", "fp16+compile"]  # --device cuda --modes ...: the worker design on a GPU


def _input(s):
    return np.random.default_rng(0).uniform(-1, 1, (1, s, s, 3)).astype(np.float32)


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_worker(cfg, device_name, modes):
    """{mode: callable}; compiled modes are compiled (and timed) on their first call here."""
    import torch
    from torch_port.fast import optimize
    from torch_port.networks import Generator
    from torch_port.train import pick_device
    device = pick_device(device_name)
    if device.type == "cpu":
        from torch_port.cpu_memory import keep_freed_memory
        keep_freed_memory()
    torch.manual_seed(0)
    g = Generator(ch=cfg["ch"], n_res=cfg["n_res"], img_size=cfg["img_size"], light=cfg["light"]).to(device).eval()
    x = torch.from_numpy(_input(cfg["img_size"]).transpose(0, 3, 1, 2).copy()).to(device)
    fns, info, fasts = {}, {}, {}
    for mode in modes:
        precision, compiled = mode.split("+")[0], mode.endswith("+compile")
        fast = fasts[mode] = optimize(g, precision, compile=compiled)

        def call(fast=fast):
            fast(x)
            _sync(device)
        if compiled:
            t = time.perf_counter()
            call()
            first = time.perf_counter() - t
            call()
            t = time.perf_counter()
            call()
            steady = time.perf_counter() - t
            info[mode] = {"first_call_s": first, "compile_s": first - steady, **{
                k: v for k, v in fast.compile_stats().items() if k != "first_call_seconds"}}
        else:
            call()
        fns[mode] = call
    info["flops"] = generator_flops(g, x)
    fns["probe"] = lambda: conv_rate(cfg, device)
    return fns, info, (fasts, x, device)


def tf_worker(cfg, threads=None):
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    g = tf.Graph()
    conf = tf.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads) if threads else None
    with g.as_default():
        mt = UGATITGraph(dict(cfg, phase="test")).build_test()
        sess = tf.Session(graph=g, config=conf)
        sess.run(tf.global_variables_initializer())
    a = _input(cfg["img_size"])
    sess.run(mt.test_fake_B, {mt.test_domain_A: a})
    return {"tf": lambda: sess.run(mt.test_fake_B, {mt.test_domain_A: a})}, {}, None


def profile(state, modes, rows=8) -> dict:
    """Top ops by self time for one call of each mode (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as prof
    fasts, x, device = state
    out = {}
    for mode in modes:
        fast = fasts[mode]
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with prof(activities=acts) as p:
            fast(x)
            _sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        out[mode] = p.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    return out


def generator_flops(g, x) -> int:
    """FLOPs of one generator forward (convolutions and matrix products, torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        g(x)
    return counter.get_total_flops()


def conv_rate(cfg, device) -> dict:
    """FLOP/s of the generator's commonest convolution (3x3, 4ch -> 4ch at img_size/4: the
    residual blocks'), NCHW as the port runs it, float32 and bfloat16, one call each (the parent
    asks once per round and keeps the best: a practical peak on a shared machine)."""
    import torch
    import torch.nn.functional as F
    c, s = cfg["ch"] * 4, cfg["img_size"] // 4
    flops = 2 * s * s * c * c * 9
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(1, c, s + 2, s + 2, dtype=dt, device=device)
        w = torch.randn(c, c, 3, 3, dtype=dt, device=device)
        F.conv2d(a, w)
        _sync(device)
        t = time.perf_counter()
        F.conv2d(a, w)
        _sync(device)
        out[str(dt).replace("torch.", "")] = flops / (time.perf_counter() - t)
    return out


def conv_fp16_probe(device_name="cpu") -> dict:
    """One 3x3 256->256 convolution at 64x64 (the residual blocks' at 256 px) in fp32, bf16, fp16,
    NCHW and channels_last: what fp16 costs on this CPU."""
    import torch
    import torch.nn.functional as F
    x, w = torch.randn(1, 256, 66, 66), torch.randn(256, 256, 3, 3)
    res = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for fmt in ("nchw", "channels_last"):
            a = x.to(dt)
            a = a.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else a
            b = w.to(dt)
            F.conv2d(a, b)
            t = time.perf_counter()
            F.conv2d(a, b)
            res[f"{str(dt).replace('torch.', '')} {fmt}"] = time.perf_counter() - t
    return res


def worker(name, cfg, device, modes, want_profile, threads=None):
    if name == "torch_port":
        fns, info, state = torch_worker(cfg, device, modes)
    else:
        fns, info, state = tf_worker(cfg, threads)
    reply({"ready": True, "info": info})
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what == "profile":
            reply({"profile": profile(state, modes) if want_profile else {}})
            continue
        if what == "probe":
            reply({"rates": fns["probe"]()})
            continue
        t = time.perf_counter()
        fns[what]()
        reply({"seconds": time.perf_counter() - t})
    return 0


def _Worker(name, args, env=None):
    return Worker(os.path.abspath(__file__), name, args, env)


def run_config(a, light: bool, modes: list[str]) -> dict:
    args = ["--img_size", str(a.img_size), "--ch", str(a.ch), "--n_dis", str(a.n_dis), "--light", str(light), "--device", a.device,
            "--modes", ",".join(modes)] + (["--profile"] if a.profile else []) + (
                ["--threads", str(a.threads)] if a.threads else [])
    env = dict(os.environ)
    cache = None
    if not a.warm_cache:
        cache = work_folder("bench_fast_inductor_")  # and those of killed runs removed (bench/work_folders.py)
        env["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    t0 = time.perf_counter()
    workers = [] if a.skip_tf else [_Worker("tf_reference", args)]
    tw = _Worker("torch_port", args, env)
    setup_s = time.perf_counter() - t0
    times = {m: [] for m in (["tf"] if not a.skip_tf else []) + modes}
    rates = {}
    try:
        for _ in range(a.iters):  # alternate: one call of each in turn
            for w in workers:
                times["tf"].append(w.ask("tf")["seconds"])
            for m in modes:
                times[m].append(tw.ask(m)["seconds"])
            for k, v in tw.ask("probe")["rates"].items():
                rates[k] = max(rates.get(k, 0.0), v)
        prof = tw.ask("profile")["profile"] if a.profile else {}
    finally:
        for w in workers + [tw]:
            w.close()
        if cache is not None:
            cache.cleanup()
    info = dict(tw.hello["info"])
    flops = info.pop("flops")
    return {"light": light, "times": times, "compile": info, "profile": prof, "setup_s": setup_s,
            "floor": {"flops": flops, "conv_rate": rates, "floor_s": {k: flops / v for k, v in rates.items()}}}


def report(res: dict, a) -> str:
    import torch
    lines = [f"\nlight={res['light']} img_size={a.img_size} ch={a.ch} batch=1 calls={a.iters} "
             f"threads={a.threads or f'default (torch {torch.get_num_threads()})'} load average {os.getloadavg()[0]:.2f}",
             "| path | s / image (median) | vs tf_reference | img/s | compile (first call - steady), s | all calls, s |",
             "|---|---|---|---|---|---|"]
    tf_med = statistics.median(res["times"]["tf"]) if "tf" in res["times"] else None
    for m, ts in res["times"].items():
        med = statistics.median(ts)
        ratio = f"{med / tf_med:.2f}x" if tf_med else "-"
        c = res["compile"].get(m)
        comp = (f"{c['compile_s']:.1f} (graphs {c.get('graphs_first_call')}, breaks {len(c.get('graph_breaks', {}))})"
                if c else "-")
        name = "tf_reference (fp32)" if m == "tf" else f"torch_port {m}"
        lines.append(f"| {name} | {med:.4f} | {ratio} | {1 / med:.2f} | {comp} | {' '.join(f'{t:.3f}' for t in ts)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--n_dis", type=int, default=6, help="only checked (the test graph has no discriminator)")
    p.add_argument("--light", type=opt.str2bool, default=None, help="only light (True) or full (False); default both")
    p.add_argument("--iters", type=int, default=None, help="timed calls per mode (default 5 on CPU, 20 on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--modes", default=None, help="comma-separated (default: fp32,fp32+compile,bf16,bf16+compile; "
                                                 "CUDA adds fp16,fp16+compile)")
    p.add_argument("--skip_tf", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the top ops of one call of each mode")
    p.add_argument("--warm_cache", action="store_true", help="reuse the inductor cache (compile time then is a cache hit)")
    p.add_argument("--json", default=None, type=opt.path_value, help="also write the results here")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of each framework (torch set_num_threads, "
                                                             "TF intra/inter-op); default: each framework's own")
    p.add_argument("--sections", default=None,
                   help="CUDA only: comma-separated sections of bench/infer_matrix.py (default: all: "
                        "light,compile,e2e,morph,fidelity,profile,full,morph_compile, in that order)")
    p.add_argument("--e2e_images", type=int, default=256, help="CUDA only: images of the end-to-end test phase run")
    p.add_argument("--e2e_batch", type=int, default=64, help="CUDA only: --batch of the end-to-end test phase run")
    p.add_argument("--batches", default=None, help="CUDA only: only these batch sizes of the matrix (e.g. 1,64)")
    p.add_argument("--matrix", action="store_true", help="run bench/infer_matrix.py's sections on this device "
                                                         "(the default on CUDA; on CPU a smoke run of the GPU bench)")
    p.add_argument("--worker", choices=["torch_port", "tf_reference"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        cfg = opt.validate(opt.config_from(light=a.light, img_size=a.img_size, ch=a.ch, n_dis=a.n_dis))
        if a.threads:
            import torch
            torch.set_num_threads(a.threads)
        return worker(a.worker, cfg, a.device, a.modes.split(","), a.profile, a.threads)
    for flag, least in (("iters", 1), ("threads", 1), ("e2e_images", 1), ("e2e_batch", 1)):  # one line, not a
        if getattr(a, flag) is not None and getattr(a, flag) < least:  # traceback (or the default, silently)
            p.error(f"--{flag}={getattr(a, flag)}: must be >= {least}")
    known = [p_ + c for p_ in ("fp32", "tf32", "bf16", "fp16") for c in ("", "+compile")]
    for m in (a.modes.split(",") if a.modes else []):  # checked before a worker starts (its traceback, then ours)
        if m not in known:
            p.error(f"--modes: unknown mode {m!r}: expected some of {', '.join(known)}")
    if a.json and check_json_out(a.json):  # before the work, not after it
        p.error(check_json_out(a.json))
    import torch
    from torch_port.train import pick_device
    try:
        device = pick_device(a.device)
    except opt.OptionError as e:
        print(f"bench_fast.py: error: {e}", file=sys.stderr)
        return 2
    a.iters = a.iters or (20 if device.type == "cuda" else 5)
    if (device.type == "cuda" and a.modes is None) or a.matrix:
        import infer_matrix  # bench/infer_matrix.py
        return infer_matrix.run(a, device)
    # the workers' config, checked before any of them starts (a bad one: one error line, exit 2)
    opt.validate(opt.config_from(light=a.light is not False, img_size=a.img_size, ch=a.ch, n_dis=a.n_dis))
    modes = a.modes.split(",") if a.modes else (CUDA_MODES if device.type == "cuda" else CPU_MODES)
    import warnings

    from torch_port.precision import check_supported
    for m in modes:  # tf32 on a CPU: one line here, not the worker's traceback and then ours
        try:
            with warnings.catch_warnings():  # (fp16 on a CPU: the worker that runs it says it is slow)
                warnings.simplefilter("ignore")
                check_supported(m.split("+")[0], device)
        except ValueError as e:
            p.error(f"--modes {m}: {e}")
    if device.type == "cuda":  # what "fp32" means there: cuDNN convolutions default to TF32 on Ampere+
        print(f"{torch.cuda.get_device_name(device)}: torch.backends.cudnn.allow_tf32="
              f"{torch.backends.cudnn.allow_tf32} (fp32 modes use TF32 convolutions when True)", flush=True)
    out = []
    for light in ([a.light] if a.light is not None else [True, False]):
        res = run_config(a, light, modes)
        out.append(res)
        print(report(res, a), flush=True)
        fl = res["floor"]
        tf_med = statistics.median(res["times"]["tf"]) if "tf" in res["times"] else None
        print(f"arithmetic floor: {fl['flops'] / 1e9:.1f} GFLOP per image at the best rate of its commonest conv "
              "(3x3, 4ch->4ch, NCHW, best of the rounds): "
              + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s -> {fl['floor_s'][k]:.3f} s"
                          + (f" = {fl['floor_s'][k] / tf_med:.2f}x of tf_reference" if tf_med else "")
                          for k, v in fl["conv_rate"].items()), flush=True)
        for m, table in res["profile"].items():
            print(f"\nprofile, light={light}, {m}:\n{table}")
    if device.type == "cpu":
        probe = conv_fp16_probe()
        print("\nfp16 on this CPU, one 3x3 256->256 conv at 64x64 (s): "
              + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()))
        out.append({"conv_probe": probe})
    if a.json:
        write_json(a.json, out, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except opt.OptionError as e:  # a bad flag: one line, exit 2 (any other error keeps its traceback:
        print(f"error: {e}", file=sys.stderr)  # on a lent GPU it is the diagnosis)
        sys.exit(2)

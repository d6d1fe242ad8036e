"""Generator forward (the test phase: one translation) in ONNX Runtime vs the eager port vs
tf_reference, same run, same weights, same input. Each runtime lives in its own worker process
(thread pools of two frameworks in one process spin against each other); the parent times them
alternately, round by round, so load from other processes falls on all alike, and reports
medians. The exported file is verified as `python -m torch_port export` does, and the outputs
of the three runtimes on the timed input are compared at the end.

    python bench/bench_onnx.py                                   # light, 256 px, ch 64, batch 1
    python bench/bench_onnx.py --img_size 64 --ch 8 --iters 5 --fp16 --skip_tf
    python bench/bench_onnx.py --provider cuda ...                # ONNX Runtime's CUDA provider, if it has one

`--provider cuda` runs the ONNX Runtime sessions on ONNX Runtime's CUDAExecutionProvider; an
onnxruntime without it (the CPU-only wheel, as on the reference GPU machine of issue 17) is said
in one `error:` line naming the providers it has, exit 2: nothing is run on the CPU in its place.
The export and its verification always run on the CPU (torch_port.export).
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
from workers import Worker, reply  # bench/workers.py (this folder is sys.path[0] when run as a script)

RUNTIMES = ("onnxruntime", "onnxruntime_fp16", "torch_port", "tf_reference")


def _input(cfg, batch):
    s = cfg["img_size"]
    return np.random.default_rng(0).uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)


def _generator(cfg):
    """generator_B of a model built from seed 0 (every worker builds the same weights)."""
    import torch

    from torch_port import build_ugatit
    torch.manual_seed(0)
    return build_ugatit(cfg).generator_B.eval()


ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def check_provider(provider: str) -> str:
    """The ONNX Runtime execution provider for --provider; SystemExit(2) with one line where this
    onnxruntime lacks it."""
    import onnxruntime as ort
    want = ORT_PROVIDERS[provider]
    have = ort.get_available_providers()
    if want not in have:
        print(f"bench_onnx.py: error: --provider {provider}: this onnxruntime ({ort.__version__}) has no {want} "
              f"(it has {', '.join(have)}); ONNX Runtime on {provider.upper()} is not measured", file=sys.stderr)
        raise SystemExit(2)
    return want


def runner(name: str, cfg: dict, batch: int, threads: int, model_dir: str, provider: str = "cpu"):
    """(forward, info): forward() runs one translation of the bench input and returns it (NCHW)."""
    import torch
    torch.set_num_threads(threads)
    x = _input(cfg, batch)
    gen = _generator(cfg)
    info = {}
    if name.startswith("onnxruntime"):
        import onnxruntime as ort

        from torch_port import export as tx
        precision = "fp16" if name.endswith("fp16") else "fp32"
        path = os.path.join(model_dir, f"g_{precision}.onnx")
        t = time.perf_counter()
        result = tx.export(gen, path, cfg, direction="a2b", source="bench (seed 0)", source_kind="torch_port", step=0,
                           precision=precision, batches=(batch,))
        info["export_s"] = time.perf_counter() - t
        info["verified"] = result["report"]["ok"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, so, providers=[ORT_PROVIDERS[provider]])
        info["providers"] = session.get_providers()
        if info["providers"][:1] != [ORT_PROVIDERS[provider]]:  # e.g. a CUDA provider that failed to load:
            print(f"bench_onnx.py: error: --provider {provider}: ONNX Runtime fell back to {info['providers']} "
                  f"(its {ORT_PROVIDERS[provider]} did not load); not timed as {provider}", file=sys.stderr)
            raise SystemExit(2)  # ORT runs the CPU in its place, with a warning only
        return (lambda: session.run(["translated"], {"image": x})[0]), info
    if name == "torch_port":
        xt = torch.from_numpy(x)

        def forward():
            with torch.no_grad():
                return gen(xt)[0].numpy()
        return forward, info
    from torch_port import export as tx
    run = tx.tf_generator_runner(cfg, gen.state_dict(), "generator_B", threads=threads)
    if run is None:
        raise RuntimeError("tf_reference (TensorFlow) is not importable")
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return (lambda: run(x_nhwc)["translated"]), info


def worker(name: str, cfg: dict, batch: int, threads: int, model_dir: str, provider: str = "cpu") -> int:
    forward, info = runner(name, cfg, batch, threads, model_dir, provider)
    reply({"ready": True, **info})
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what.startswith("dump "):
            np.save(what[5:], forward())
            reply({"dumped": True})
            continue
        t = time.perf_counter()
        forward()
        reply({"seconds": time.perf_counter() - t})
    return 0


def _Worker(name, args, env=None):
    return Worker(os.path.abspath(__file__), name, args, env)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--light", type=opt.str2bool, default=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each runtime (default: 2)")
    p.add_argument("--fp16", action="store_true", help="also time the fp16 export on ONNX Runtime CPU")
    p.add_argument("--skip_tf", action="store_true")
    p.add_argument("--provider", choices=sorted(ORT_PROVIDERS), default="cpu",
                   help="ONNX Runtime execution provider of the timed sessions (default cpu)")
    p.add_argument("--runtimes", default=None, help=f"comma-separated subset of {', '.join(RUNTIMES)} (default: "
                                                    f"onnxruntime, +onnxruntime_fp16 with --fp16, torch_port, "
                                                    f"tf_reference unless --skip_tf)")
    p.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", type=opt.path_value, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag, least in (("iters", 1), ("batch", 1), ("threads", 1), ("warmup", 0)):  # one line, not a traceback
        if getattr(a, flag) < least:
            p.error(f"--{flag}={getattr(a, flag)}: must be >= {least}")
    try:
        cfg = opt.validate(opt.config_from(light=a.light, img_size=a.img_size, ch=a.ch,
                                           n_dis=6 if a.img_size >= 128 else 4))
    except opt.OptionError as e:
        p.error(str(e))
    if a.worker:
        return worker(a.worker, cfg, a.batch, a.threads, a.model_dir, a.provider)
    check_provider(a.provider)
    names = ["onnxruntime"] + (["onnxruntime_fp16"] if a.fp16 else []) + ["torch_port"] + ([] if a.skip_tf else
                                                                                          ["tf_reference"])
    if a.runtimes:
        names = [n.strip() for n in a.runtimes.split(",") if n.strip()]
        bad = [n for n in names if n not in RUNTIMES]
        if bad or "torch_port" not in names:
            p.error(f"--runtimes: expected a subset of {', '.join(RUNTIMES)} holding torch_port (the reference), "
                    f"got {a.runtimes!r}")
    with work_folder("bench_onnx_") as tmp:  # those of killed runs removed first (bench/work_folders.py)
        passthrough = ["--img_size", str(a.img_size), "--ch", str(a.ch), "--light", str(a.light), "--batch",
                       str(a.batch), "--threads", str(a.threads), "--model_dir", tmp, "--provider", a.provider]
        workers = []
        try:
            for n in names:
                print(f" [*] starting {n} ...", flush=True)
                workers.append(_Worker(n, passthrough))
            times = {w.name: [] for w in workers}
            for r in range(a.warmup + a.iters):
                for w in workers:
                    s = w.ask("time")["seconds"]
                    if r >= a.warmup:
                        times[w.name].append(s)
            outs = {}
            for w in workers:
                w.ask(f"dump {os.path.join(tmp, w.name + '.npy')}")
                outs[w.name] = np.load(os.path.join(tmp, w.name + ".npy"))
        finally:
            for w in workers:
                w.close()
        info = {w.name: w.hello for w in workers}
    med = {n: statistics.median(v) for n, v in times.items()}
    base = "tf_reference" if "tf_reference" in med else "torch_port"
    print(f"\nlight={a.light} img_size={a.img_size} ch={a.ch} batch={a.batch}, {a.iters} timed rounds after "
          f"{a.warmup} warm-up, {a.threads} threads, ONNX Runtime provider {a.provider}; medians")
    vs = [base] + (["torch_port"] if base != "torch_port" else [])  # one column per reference present
    print("| runtime | s / forward | images / s | " + " | ".join(f"time vs {r}" for r in vs) + " |")
    print("|---|---|---|" + "---|" * len(vs))
    for n in names:
        print(f"| {n} | {med[n]:.4f} | {a.batch / med[n]:.2f} | " + " | ".join(f"{med[n] / med[r]:.2f}x" for r in vs)
              + " |")
    for n in names:
        if "export_s" in info[n]:
            print(f"{n}: export + verification {info[n]['export_s']:.1f} s, verified: {info[n]['verified']}")
    ref = outs["torch_port"]
    for n in names:
        if n != "torch_port":
            print(f"max |{n} - torch_port| on the timed input: {float(np.abs(outs[n] - ref).max()):.3g}")
    if "tf_reference" in outs and "onnxruntime" in outs:
        print(f"max |onnxruntime - tf_reference|: {float(np.abs(outs['onnxruntime'] - outs['tf_reference']).max()):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

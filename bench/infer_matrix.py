"""The test phase on CUDA, measured in one run (`python bench/bench_fast.py --device cuda`): the
generator forward of every fast path at batch 1, 16 and 64, the end-to-end test phase (read,
translate, write PNGs) at batch 64, Morph's generator and `interpolate`, the fidelity of the
fp32 / tf32 variants against the float64 truth, where the time goes, and the targets of issue 17
beside the measured values.

Variants: `<precision>[+compile][+graphs][+bench|+nobench]`: precision fp32 (the exact path:
TF32 off, cuDNN's heuristic algorithm choice), tf32, bf16, fp16; +compile torch.compile with
inductor freezing; +graphs the call replayed as a CUDA graph (torch_port.static_forward);
+bench / +nobench cuDNN's benchmark mode on / off (default: off for fp32, on for the others); +cl
channels-last weights and inputs (a copy of the module: measured here only, to see whether
cuDNN's NHWC kernels would pay in eager mode, where the norms return NCHW tensors).
Timing: each call is followed by torch.cuda.synchronize() and timed on the host clock, after 3
warm-up calls (the first of a compiled or graphed variant compiles / captures; its time is kept
as first_call_s); the median over `iters` calls (20; 10 at batch 64) is the latency, batch /
latency the throughput. Inputs rotate among 3 random batches (never zeros). Weights are random
(seed 0): speed does not depend on them; fidelity: parity_tests/test_fast_paths.py.

Every result goes into the --json file as soon as it is measured, so a run cut short by a
timeout keeps what it measured.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time

import torch

SECTIONS = ("light", "compile", "e2e", "morph", "fidelity", "profile", "full", "morph_compile")  # by importance
PEER = {1: 212, 16: 622, 64: 664}  # znxlwm/UGATIT-pytorch, light 256 px, img/s, H200 (issue 17; not run here)
TODAY = {"fp32": {1: 146, 16: 83, 64: 199}, "bf16": {1: 144, 16: 473, 64: 499}, "fp16": {1: 138, 16: 475, 64: 499},
         "bf16+compile": {1: 290}}  # the port before this work, same machine (issue 17)
TARGET_IMG_S_B64, TARGET_LATENCY_MS = 2000.0, 3.0

LIGHT = {"fp32": (1, 16, 64), "fp32+graphs": (1, 16), "fp32+bench": (1, 16), "fp32+cl": (16,), "bf16+cl": (64,),
         "tf32": (1, 64), "tf32+graphs": (1,),
         "bf16": (1, 16, 64), "bf16+graphs": (1, 16),
         "fp16": (1, 64), "fp16+graphs": (1,)}
COMPILED = {"bf16+compile": (64,), "bf16+compile+graphs": (1, 64)}  # one compile per batch size
FULL = {"fp32": (1, 16, 64), "bf16": (1, 16, 64), "bf16+graphs": (1, 64), "fp16": (1, 64)}
MORPH = {"fp32": (1, 16, 64), "fp32+graphs": (1, 16), "bf16": (1, 16, 64), "bf16+graphs": (1, 16, 64)}
MORPH_COMPILED = {"bf16+compile+graphs": (1, 64)}
E2E = ("fp32 serial", "fp32", "bf16", "bf16+graphs", "bf16+compile+graphs")


def parse_variant(name: str) -> dict:
    precision, *flags = name.split("+")
    bad = set(flags) - {"compile", "graphs", "bench", "nobench", "cl"}
    if bad or precision not in ("fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"unknown variant {name!r}: <fp32|tf32|bf16|fp16>[+compile][+graphs][+bench|+nobench][+cl]")
    bench = True if "bench" in flags else False if "nobench" in flags else None
    return {"precision": precision, "compile": "compile" in flags, "graphs": "graphs" in flags,
            "cudnn_benchmark": bench, "channels_last": "cl" in flags}


class Results:
    """The run's results, rewritten to `path` (atomically) after every addition."""

    def __init__(self, path: str | None, meta: dict):
        self.path = path
        self.data = {"meta": meta, "sections": {}, "errors": {}}
        self._write()

    def put(self, section: str, key: str, value) -> None:
        self.data["sections"].setdefault(section, {})[key] = value
        self._write()

    def error(self, section: str, text: str) -> None:
        self.data["errors"][section] = text
        self._write()

    def _write(self) -> None:
        if self.path:
            from workers import write_json  # bench/workers.py: a temp file of this process, then renamed
            write_json(self.path, self.data, indent=1, default=str)


def say(text: str) -> None:
    print(text, flush=True)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _inputs(batch: int, size: int, device, n: int = 3):
    g = torch.Generator(device="cpu").manual_seed(batch)
    return [(torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device) for _ in range(n)]


def measure(call, inputs, batch: int, iters: int, warmup: int = 3) -> dict:
    """Host-timed calls, each followed by a synchronisation; the first call's time is kept apart."""
    device = inputs[0].device
    t = time.perf_counter()
    call(inputs[0])
    sync(device)
    first = time.perf_counter() - t
    for i in range(warmup - 1):
        call(inputs[(i + 1) % len(inputs)])
    sync(device)
    n = iters if batch <= 16 else max(min(iters, 10), iters // 2)
    ts = []
    for i in range(n):
        x = inputs[i % len(inputs)]
        t = time.perf_counter()
        call(x)
        sync(device)
        ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    return {"batch": batch, "calls": n, "median_s": med, "min_s": min(ts), "max_s": max(ts),
            "latency_ms": med * 1e3, "img_per_s": batch / med, "first_call_s": first}


def _free():
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generator_matrix(res: Results, section: str, net, variants: dict, size: int, iters: int, kwargs_for=None,
                     keep: str | None = None, batches=None):
    """Every variant at its batch sizes; modules that differ only by +graphs share one object
    (`use_graphs` toggled), so a compiled variant compiles once per batch size. Returns the module
    of variant `keep` (e.g. for the end-to-end run), else None."""
    from torch_port.fast import optimize
    from torch_port.out_of_memory import is_out_of_memory
    groups = {}
    device = next(net.parameters()).device
    for name, bs in variants.items():
        v = parse_variant(name)
        key = (v["precision"], v["compile"], v["cudnn_benchmark"], v["channels_last"])
        groups.setdefault(key, []).append((name, v["graphs"], tuple(b for b in bs if batches is None or b in batches)))
    kept = None
    for (precision, compiled, bench, cl), members in groups.items():
        if device.type != "cuda":  # a CPU smoke run (--matrix): no graphs there
            for name, _, _ in (m for m in members if m[1]):
                res.put(section, name, {"skipped": "CUDA graphs need a CUDA device"})
            members = [m for m in members if not m[1]]
        wants_graphs = any(g for _, g, _ in members)
        if cl:
            import copy
            module = copy.deepcopy(net).to(memory_format=torch.channels_last)
        else:
            module = net
        try:
            fast = optimize(module, precision, compile=compiled, cuda_graphs=wants_graphs, cudnn_benchmark=bench,
                            log=say)
        except ValueError as e:
            for name, _, _ in members:
                res.put(section, name, {"skipped": str(e)})
            say(f"{section} {precision}: skipped ({e})")
            continue
        for batch in sorted({b for _, _, bs in members for b in bs}):
            inputs = _inputs(batch, size, device)
            if cl:
                inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
            for name, graphs, batches in members:
                if batch not in batches:
                    continue
                fast.use_graphs = graphs
                extra = kwargs_for(batch) if kwargs_for else {}
                try:
                    r = measure(lambda x: fast(x, **extra), inputs, batch, iters)
                except Exception as e:  # noqa: BLE001 - only out of memory costs just this row
                    if not is_out_of_memory(e):
                        raise
                    r = {"batch": batch, "error": f"out of memory: {str(e).splitlines()[0]}"}
                    _free()
                if graphs and fast.static is not None:
                    r["graph_notes"] = list(fast.static.notes)
                if compiled:
                    r["compile_stats"] = {k: v for k, v in fast.compile_stats().items() if k != "first_call_seconds"}
                res.put(section, f"{name}@{batch}", r)
                say(_row(section, name, r))
            del inputs
        kv = parse_variant(keep) if keep is not None else None
        if kv is not None and (kv["precision"], kv["compile"], kv["cudnn_benchmark"], kv["channels_last"]) == \
                (precision, compiled, bench, cl):  # the module of `keep` (with or without its graphs)
            kept = fast
        else:
            del fast
        del module
        if compiled and kept is None:
            torch._dynamo.reset()
        _free()
    return kept


def _row(section, name, r) -> str:
    if "error" in r:
        return f"| {section} | {name} | {r['batch']} | {r['error']} | | | |"
    return (f"| {section} | {name} | {r['batch']} | {r['latency_ms']:.2f} | {r['img_per_s']:.0f} | "
            f"{r['first_call_s']:.2f} | {r['calls']} |")


def fidelity(res: Results, net, size: int) -> None:
    """RMS / max error of each path's image against the float64 truth on one random batch of 2, and
    its ratio to the exact fp32 path's: what cuDNN's benchmark mode does to the fp32 path."""
    import copy
    from torch_port.fast import optimize
    device = next(net.parameters()).device
    x = _inputs(2, size, device, n=1)[0]
    with torch.no_grad():
        truth = copy.deepcopy(net).double()(x.double())[0]
    base = None
    names = ("fp32", "fp32+bench", "tf32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    for name in names:
        v = parse_variant(name)
        out = optimize(net, v["precision"], cudnn_benchmark=v["cudnn_benchmark"])(x)[0].double()
        d = out - truth
        rms, mx = float(d.square().mean().sqrt()), float(d.abs().max())
        base = rms if name == "fp32" else base
        r = {"rms": rms, "max": mx, "rms_vs_fp32": rms / base if base else None, "max_levels": mx * 127.5}
        res.put("fidelity", name, r)
        say(f"fidelity {name}: image vs float64 RMS {rms:.3g} ({r['rms_vs_fp32']:.2f}x fp32's), max {mx:.3g} "
            f"({r['max_levels']:.3f} 8-bit levels)")
    _free()


def profile(res: Results, net, size: int, cases=(("fp32", 1), ("fp32", 16), ("bf16", 64)), fast=None) -> None:
    """The top CUDA kernels of one call (torch.profiler): where the time goes. `fast`: profile this
    module (e.g. the compiled one, graphs off) for each case instead of a new eager one."""
    from torch.profiler import ProfilerActivity, profile as prof
    from torch_port.fast import optimize
    device = next(net.parameters()).device
    cuda = device.type == "cuda"
    given = fast
    for name, batch in cases:
        v = parse_variant(name)
        fast = given if given is not None else optimize(net, v["precision"], cudnn_benchmark=v["cudnn_benchmark"])
        x = _inputs(batch, size, device, n=1)[0]
        for _ in range(2):
            fast(x)
        sync(device)
        with prof(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as p:
            fast(x)
            sync(device)
        table = p.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                       row_limit=12, max_name_column_width=70)
        res.put("profile", f"{name}@{batch}", table)
        say(f"\nprofile {name} batch {batch}:\n{table}")
        del fast, x
        _free()


def _write_images(folder: str, n: int, size: int) -> list[str]:
    import cv2
    import numpy as np
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        img = cv2.resize(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8), (size, size),
                         interpolation=cv2.INTER_CUBIC)
        files.append(os.path.join(folder, f"p{i:05d}.png"))
        cv2.imwrite(files[-1], img)
    return files


def end_to_end(res: Results, net, cfg: dict, n_images: int, batch: int, compiled=None, modes=E2E) -> None:
    """The batched test phase (torch_port.batch_translate) over n_images PNG files: read, translate,
    write PNGs and the page; images / s of the whole, after one warm-up batch (compile, capture)."""
    from torch_port import build_ugatit
    from torch_port.batch_translate import translate_batches
    from torch_port.fast import optimize
    from ugatit_common.output_names import OutputNames
    from ugatit_common.results import ResultsPage
    from work_folders import work_folder  # bench/work_folders.py
    work = work_folder("bench_e2e_")  # those of killed runs removed first (bench/work_folders.py)
    tmp = work.name
    try:
        t = time.perf_counter()
        files = _write_images(os.path.join(tmp, "in"), n_images, cfg["img_size"])
        res.put("e2e", "setup", {"images": n_images, "batch": batch, "write_inputs_s": time.perf_counter() - t,
                                 "cpus": os.cpu_count()})
        device = next(net.parameters()).device
        model = build_ugatit(cfg).to(device).eval()
        for mode in modes:
            name, serial = mode.split(" ")[0], mode.endswith("serial")
            v = parse_variant(name)
            if name == "bf16+compile+graphs":
                if compiled is None:
                    continue
                g = compiled
                g.use_graphs = True
            elif v["precision"] == "fp32" and not v["graphs"]:
                g = net
            else:
                try:
                    g = optimize(net, v["precision"], cuda_graphs=v["graphs"], cudnn_benchmark=v["cudnn_benchmark"],
                                 log=say)
                except ValueError as e:
                    res.put("e2e", mode, {"skipped": str(e)})
                    continue
            model.generator_B = g
            pad = v["graphs"] or v["compile"]

            def run(fs, out):
                page = ResultsPage(out, cfg["img_size"])
                counts = {}
                translate_batches(model, fs, "a2b", cfg, device, out, page, counts, OutputNames(fs),
                                  batch, pad=pad, progress=False, overlap=not serial)
                page.close()
                return counts.get("a2b", 0)
            run(files[:batch], os.path.join(tmp, "warm"))
            sync(device)
            t = time.perf_counter()
            done = run(files, os.path.join(tmp, "out"))
            sync(device)
            wall = time.perf_counter() - t
            r = {"images": done, "seconds": wall, "img_per_s": done / wall, "overlap": not serial}
            res.put("e2e", mode, r)
            say(f"| e2e | {mode} | {batch} | {wall:.2f} s for {done} | {r['img_per_s']:.0f} | | |")
            shutil.rmtree(os.path.join(tmp, "out"), ignore_errors=True)
            shutil.rmtree(os.path.join(tmp, "warm"), ignore_errors=True)
            del g
            _free()
    finally:
        work.cleanup()


def morph_interpolate(res: Results, size: int, ch: int, device, variants=("fp32", "bf16+graphs")) -> None:
    """`morph.interpolate.interpolate_images` for 4 inputs (6 frames, 8 samples per w code, strip,
    GIF, smoothness JSON each), config C, random weights: seconds per input."""
    from morph.interpolate import interpolate_images
    from morph.model import MorphUGATIT
    from torch_port.fast import optimize_generators
    from ugatit_common import options as opt
    from work_folders import work_folder  # bench/work_folders.py
    work = work_folder("bench_interp_")
    tmp = work.name
    try:
        files = _write_images(os.path.join(tmp, "in"), 4, size)
        cfg = opt.validate(opt.config_from(light=True, img_size=size, ch=ch, n_dis=6 if size >= 128 else 4))
        cfg["morph_config"] = "C"
        for name in variants:
            v = parse_variant(name)
            torch.manual_seed(0)
            model = MorphUGATIT(cfg).to(device).eval()
            model.z_generator = torch.Generator().manual_seed(0)
            try:
                optimize_generators(model, v["precision"], v["compile"], cuda_graphs=v["graphs"],
                                    cudnn_benchmark=v["cudnn_benchmark"], log=say)
            except ValueError as e:
                res.put("morph_interpolate", name, {"skipped": str(e)})
                continue
            interpolate_images(model, files[:1], os.path.join(tmp, "warm"), log=None)  # capture / compile
            sync(device)
            t = time.perf_counter()
            interpolate_images(model, files, os.path.join(tmp, "out"), log=None)
            sync(device)
            wall = time.perf_counter() - t
            r = {"inputs": len(files), "seconds": wall, "s_per_input": wall / len(files), "frames": 6}
            res.put("morph_interpolate", name, r)
            say(f"| morph interpolate | {name} | 1 | {1e3 * wall / len(files):.1f} ms per input (6 frames + strip + "
                f"GIF) | | | |")
            del model
            _free()
    finally:
        work.cleanup()


def _best(entries: dict, prefix: str, batch: int, key: str, better):
    best = None
    for name, r in entries.items():
        if not isinstance(r, dict) or "@" not in name or "error" in r or "skipped" in r:
            continue
        variant, b = name.rsplit("@", 1)
        if int(b) == batch and variant.split("+")[0] == prefix and key in r:
            if best is None or better(r[key], best[1]):
                best = (variant, r[key])
    return best


def targets(res: Results) -> list[str]:
    """The issue's targets beside the measured values (and the peer's figures, not run here)."""
    from workers import targets_note
    s = res.data["sections"]
    gpu = res.data["meta"].get("gpu", "?")
    lines = ["", f"| target (issue 17, set on an H200, 256 px) | measured on {gpu} (best variant) | met | "
                 "peer (znxlwm, H200, as measured in the issue) | port before (H200) |", "|---|---|---|---|---|"]
    verdicts = {}
    for sec, label in (("light", "light generator"), ("morph", "Morph C generator")):
        e = s.get(sec, {})
        e = dict(e, **{k: v for k, v in s.get(sec + "_compile", {}).items()})
        b64 = _best(e, "bf16", 64, "img_per_s", lambda a, b: a > b)
        b1 = _best(e, "bf16", 1, "latency_ms", lambda a, b: a < b)
        ok64 = b64 is not None and b64[1] >= TARGET_IMG_S_B64
        ok1 = b1 is not None and b1[1] <= TARGET_LATENCY_MS
        lines.append(f"| {label}: bf16 batch 64 >= {TARGET_IMG_S_B64:.0f} img/s | "
                     + (f"{b64[1]:.0f} img/s ({b64[0]})" if b64 else "not measured")
                     + f" | {'yes' if ok64 else 'no' if b64 else '-'} | "
                     + (f"{PEER[64]} img/s | " if sec == "light" else "- | ")
                     + f"{TODAY['bf16'][64] if sec == 'light' else '-'} |")
        lines.append(f"| {label}: bf16 batch-1 latency <= {TARGET_LATENCY_MS:.0f} ms | "
                     + (f"{b1[1]:.2f} ms ({b1[0]})" if b1 else "not measured")
                     + f" | {'yes' if ok1 else 'no' if b1 else '-'} | {1e3 / PEER[1]:.2f} ms | "
                     f"{1e3 / TODAY['bf16'][1]:.2f} ms (bf16), {1e3 / TODAY['bf16+compile'][1]:.2f} ms (+compile) |"
                     if sec == "light" else
                     f"| {label}: bf16 batch-1 latency <= {TARGET_LATENCY_MS:.0f} ms | "
                     + (f"{b1[1]:.2f} ms ({b1[0]})" if b1 else "not measured")
                     + f" | {'yes' if ok1 else 'no' if b1 else '-'} | - | - |")
        verdicts[f"{sec}_bf16_b64"], verdicts[f"{sec}_bf16_latency"] = (b64, ok64), (b1, ok1)
        for variant in ("fp32", "fp32+graphs", "fp32+bench"):
            r1, r16 = e.get(f"{variant}@1"), e.get(f"{variant}@16")
            if not (r1 and r16 and "img_per_s" in r1 and "img_per_s" in r16):
                continue
            ok = r16["img_per_s"] >= r1["img_per_s"]
            verdicts[f"{sec}_{variant}_b16_vs_b1"] = ok
            lines.append(f"| {label}: {variant} batch 16 no slower per image than batch 1 | "
                         f"{r16['img_per_s']:.0f} vs {r1['img_per_s']:.0f} img/s | {'yes' if ok else 'no'} | "
                         + (f"{PEER[16]} vs {PEER[1]} | " if sec == "light" else "- | ")
                         + (f"{TODAY['fp32'][16]} vs {TODAY['fp32'][1]} |" if sec == "light" else "- |"))
    res.put("targets", "verdicts", {k: v for k, v in verdicts.items()})
    if targets_note(gpu):
        lines.append(f"({targets_note(gpu)})")
    return lines


def check(a) -> tuple[list[str], tuple[int, ...] | None, dict]:
    """(sections, batches, config) of bench_fast.py's flags for the matrix; a bad one: one
    `error:` line, exit 2 (SystemExit), before anything is measured."""
    from ugatit_common import options as opt
    sections = [s.strip() for s in (a.sections or ",".join(SECTIONS)).split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        print(f"bench_fast.py: error: --sections: unknown {sorted(unknown)}; expected {', '.join(SECTIONS)}",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        batches = tuple(int(b) for b in a.batches.split(",")) if getattr(a, "batches", None) else None
        if batches is not None and (not batches or min(batches) < 1):
            raise ValueError
    except ValueError:
        print(f"bench_fast.py: error: --batches={a.batches!r}: comma-separated batch sizes >= 1", file=sys.stderr)
        raise SystemExit(2)
    cfg = opt.validate(opt.config_from(light=True, img_size=a.img_size, ch=a.ch, n_dis=6 if a.img_size >= 128 else 4))
    return sections, batches, cfg


def run(a, device) -> int:
    """bench_fast.py --device cuda: the sections named by --sections, in order, each in its own try
    (on a CPU, --matrix: the same code as a smoke run; CUDA-only variants are skipped)."""
    from torch_port.networks import Generator
    device = torch.device(device)  # from torch_port.train.pick_device: TF32 off on CUDA, fp32 means float32
    cuda = device.type == "cuda"
    sections, batches, cfg = check(a)  # before anything is measured or written
    size, ch = a.img_size, a.ch
    from workers import measured_on
    gpu = measured_on(device)  # the GPU's own name: an H100 or an H200 may be lent
    meta = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu["gpu"],
            "capability": gpu.get("capability"), "memory_gib": gpu.get("memory_gib"),
            "cudnn": torch.backends.cudnn.version() if cuda else None, "img_size": size, "ch": ch, "iters": a.iters,
            "sections": sections, "cpus": os.cpu_count(), "batches": batches}
    res = Results(a.json, meta)
    say(f"{meta['gpu']}, torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}; {size} px, ch {ch}; "
        f"medians of {a.iters} calls (10 at batch 64) after 3 warm-up calls, synchronised")
    say("| section | variant | batch | latency ms (median) | img/s | first call s | calls |\n"
        "|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    light = Generator(ch=ch, n_res=4, img_size=size, light=True).to(device).eval()
    compiled = None
    t_all = time.perf_counter()
    for sec in sections:
        t = time.perf_counter()
        try:
            if sec == "light":
                generator_matrix(res, "light", light, LIGHT, size, a.iters, batches=batches)
            elif sec == "fidelity":
                fidelity(res, light, size)
            elif sec == "profile":
                profile(res, light, size)
            elif sec == "compile":
                variants = dict(COMPILED)
                eager = _best(res.data["sections"].get("light", {}), "bf16", 1, "latency_ms", lambda x, y: x < y)
                if eager is not None and eager[1] <= TARGET_LATENCY_MS and cuda:  # one compile less
                    variants = {k: tuple(b for b in v if b != 1) for k, v in variants.items()}
                    res.put("light_compile", "note", f"batch 1 not compiled: {eager[0]} already took {eager[1]:.2f} ms "
                                                     f"<= {TARGET_LATENCY_MS} ms")
                compiled = generator_matrix(res, "light_compile", light, variants, size, a.iters, batches=batches,
                                            keep="bf16+compile+graphs")
                if compiled is not None and (batches is None or 64 in batches):
                    compiled.use_graphs = False  # the kernels, not one graph launch
                    profile(res, light, size, cases=(("bf16+compile", 64),), fast=compiled)
                if "e2e" not in sections[sections.index(sec):] or not cuda:
                    del compiled
                    compiled = None
                    torch._dynamo.reset()
                    _free()
            elif sec == "e2e":
                end_to_end(res, light, cfg, a.e2e_images, a.e2e_batch, compiled)
                if compiled is not None:
                    del compiled
                    compiled = None
                    torch._dynamo.reset()
                    _free()
            elif sec in ("morph", "morph_compile"):
                from morph.networks import MorphGenerator
                torch.manual_seed(0)
                m = MorphGenerator(ch=ch, n_res=4, img_size=size).to(device).eval()
                with torch.no_grad():
                    ws = {b: m.w_from_z(m.make_z("a2b", b)) for b in (1, 16, 64)}
                generator_matrix(res, sec, m, MORPH if sec == "morph" else MORPH_COMPILED, size, a.iters,
                                 kwargs_for=lambda b: {"w": ws[b]}, batches=batches)
                if sec == "morph":
                    morph_interpolate(res, size, ch, device)
                del m, ws
                _free()
            elif sec == "full":
                torch.manual_seed(0)
                full = Generator(ch=ch, n_res=4, img_size=size, light=False).to(device).eval()
                generator_matrix(res, "full", full, FULL, size, a.iters, batches=batches)
                del full
                _free()
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
            import traceback
            traceback.print_exc()
            res.error(sec, f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
            say(f"section {sec}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            _free()
        res.put("timing", sec, time.perf_counter() - t)
        say(f"[section {sec}: {time.perf_counter() - t:.1f} s]")
    res.put("timing", "total", time.perf_counter() - t_all)
    for line in targets(res):
        say(line)
    say("ONNX Runtime on CUDA: see bench/bench_onnx.py --provider cuda (the reference GPU's onnxruntime has the CPU "
        "provider only)")
    return 0


if __name__ == "__main__":
    sys.exit("run through bench/bench_fast.py --device cuda")

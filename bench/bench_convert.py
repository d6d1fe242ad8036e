"""Convert a full (light=False) 256 px official training checkpoint with Adam slots: wall seconds
and peak RSS of `weights_convert.py tf2torch --with_optimizer` against a
`tf.train.load_checkpoint`-based conversion, in the same run, on the same files.

    python bench/bench_convert.py                       # cold and warm page cache, then clean up
    python bench/bench_convert.py --keep --out r.json   # keep /tmp/bench_convert/ for the next run
    python bench/bench_convert.py --work DIR            # another work folder (default /tmp/bench_convert)
    python bench/bench_convert.py --light True --img_size 32 --ch 4 --n_dis 4   # a small checkpoint (MBs) to try it

--light, --img_size, --ch and --n_dis (spelled as the trainers spell them; default the full 256 px
model with ch 64 and n_dis 6, about 8 GB) set the checkpoint's model; a kept checkpoint of another
model is refused, not rebuilt.

One run owns the work folder (ugatit_common.run_lock: a second run at once stops, naming the
first); it removes only what it made there (its outputs and logs, and the checkpoint unless
--keep): a checkpoint an earlier --keep run left (its manifest.json names it) is reused and left,
and no other file in the folder is touched. The names it works under (`checkpoint/`, `out/`,
`logs/`, `manifest.json`) must be free, or be an earlier --keep run's checkpoint and manifest:
a folder holding anything else by those names (your own `checkpoint/` folder, what a killed run
left) is refused before any work (one `error:` line, exit 2), never written into or removed.

The checkpoint has exactly the variables (names, shapes, dtypes) that `tf.train.Saver()` saves
for tf_reference's training graph: the graph is built (never initialised: the full model's MLP
kernels are 268 M weights each) and every variable is written with random values by
`BundleWriter`, one tensor at a time; TensorFlow's own reader then has to list the same names,
shapes and dtypes. The `checkpoint` state file makes it a folder either converter accepts.

Every measured command runs in a fresh child process; its peak RSS is the `ru_maxrss` that
`os.wait4` returns for it. On Linux a child's `ru_maxrss` starts at its parent's high-water mark
(it is carried over at exec), so this parent imports nothing beyond the standard library and
reports its own peak next to the results. "cold": the data file is evicted from the page cache
with posix_fadvise(DONTNEED) first (no root needed; a VM's host may still cache it); "warm": it
is read once with `cat` first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = "/tmp/bench_convert"
MiB = 1 << 20
STEP = 10000  # the checkpoint's step number (its name: UGATIT.model-10000)
LOCK_NAMES = (".bench-convert.lock", ".bench-convert.owner")  # this script's hold on its --work folder
DEFAULT_MODEL = {"light": False, "img_size": 256, "ch": 64, "n_dis": 6}  # the checkpoint measured by default (~8 GB)


# ====================================================================== child phases
def _reply(obj) -> None:
    """A phase's result line to the parent: strict JSON (bench/workers.reply; NaN / inf as null,
    named in `non_finite`)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from workers import reply
    reply(obj)


def phase_make(folder: str, manifest_path: str, seed: int, model: str = "{}") -> None:
    """Build tf_reference's training graph (default the full 256 px model; `model`: JSON of the
    light / img_size / ch flags), write its variables with BundleWriter, check TF reads back the
    same names/shapes/dtypes, write `checkpoint` and the manifest."""
    import numpy as np
    sys.path.insert(0, ROOT)
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    from torch_port.tf_bundle import BundleWriter, write_checkpoint_state
    from ugatit_common import options as opt

    cfg = opt.validate(opt.config_from(phase="train", **{**DEFAULT_MODEL, **json.loads(model)}))
    t = time.perf_counter()
    g = tf.Graph()
    with g.as_default():
        shape = [cfg["batch_size"], cfg["img_size"], cfg["img_size"], cfg["img_ch"]]
        UGATITGraph(cfg).build_train(tf.placeholder(tf.float32, shape), tf.placeholder(tf.float32, shape))
        variables = tf.global_variables()
        # what tf.train.Saver() (as tf_reference.train uses it) saves: every global variable by op name
        want = {v.op.name: (tuple(v.shape.as_list()), v.dtype.base_dtype.as_numpy_dtype().dtype.str)
                for v in variables}
        assert len(want) == len(variables), "duplicate variable op names"
    print(f"graph built: {len(want)} variables in {time.perf_counter() - t:.1f} s", flush=True)

    prefix = os.path.join(folder, f"{opt.model_name(cfg)}.model-{STEP}")
    rng = np.random.default_rng(seed)
    small = {}  # a few values to read back through TF
    t = time.perf_counter()
    with BundleWriter(prefix) as w:
        for name in sorted(want):
            shp, dstr = want[name]
            dt = np.dtype(dstr)
            if name in ("beta1_power", "beta1_power_1"):
                value = np.array(0.5 ** STEP, dt)
            elif name in ("beta2_power", "beta2_power_1"):
                value = np.array(0.999 ** STEP, dt)
            elif dt.kind == "f":
                value = rng.standard_normal(shp, dtype=np.float32).astype(dt, copy=False)
                value *= 0.02
                if name.endswith("/Adam_1"):
                    np.abs(value, out=value)
            elif dt.kind in "iu":
                value = rng.integers(0, 1000, shp).astype(dt)
            else:
                raise SystemExit(f"unexpected dtype {dt} for {name}")
            w.add(name, value)
            if value.size <= 64 and len(small) < 8:
                small[name] = value.copy()
            del value
    write_checkpoint_state(folder, os.path.basename(prefix))
    print(f"checkpoint written in {time.perf_counter() - t:.1f} s", flush=True)

    reader = tf.train.load_checkpoint(folder)  # a folder: resolved through its `checkpoint` file
    got_shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    got_dtypes = {k: v.as_numpy_dtype().dtype.str for k, v in reader.get_variable_to_dtype_map().items()}
    if got_shapes != {k: s for k, (s, _) in want.items()} or got_dtypes != {k: d for k, (_, d) in want.items()}:
        missing, extra = sorted(set(want) - set(got_shapes)), sorted(set(got_shapes) - set(want))
        raise SystemExit(f"TF reads a different variable set: missing {missing[:5]}, extra {extra[:5]}")
    for name, value in small.items():
        if not np.array_equal(np.asarray(reader.get_tensor(name)), value):
            raise SystemExit(f"TF reads different values for {name}")
    print(f"tf.train.load_checkpoint: same {len(got_shapes)} names/shapes/dtypes as the graph", flush=True)

    tensors = {n: {"shape": list(s), "dtype": d,
                   "nbytes": int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize} for n, (s, d) in want.items()}
    with open(manifest_path, "w") as f:
        json.dump({"prefix": prefix, "data": prefix + ".data-00000-of-00001", "step": STEP,
                   "config": {k: cfg[k] for k in opt.MODEL_KEYS}, "seed": seed, "tensors": tensors}, f)


def phase_naive(folder: str, out: str) -> None:
    """What a converter built on TF's reader does: read every tensor with get_tensor, rename,
    re-layout, hold them all, safetensors.torch.save_file. Then fsync (as weights_convert does)."""
    t0 = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, ROOT)
    from weights_convert import ConversionError, tf_to_torch_name, to_torch_layout
    t1 = time.perf_counter()
    reader = tf.train.load_checkpoint(folder)
    state = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        try:
            torch_name = tf_to_torch_name(name)
        except ConversionError:
            continue  # not a network variable (none in this checkpoint)
        # get_tensor gives numpy scalars for 0-d variables; np.asarray keeps them 0-d
        # (np.ascontiguousarray would make them shape [1])
        state[torch_name] = torch.from_numpy(to_torch_layout(name, np.asarray(reader.get_tensor(name)))).contiguous()
    t2 = time.perf_counter()
    save_file(state, out, metadata={"format": "pt"})
    t3 = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    t4 = time.perf_counter()
    _reply({"import_s": t1 - t0, "read_s": t2 - t1, "save_s": t3 - t2, "fsync_s": t4 - t3,
             "tensors": len(state)})


def phase_import_only(which: str) -> None:
    """Baseline RSS of a converter's imports alone."""
    if which == "tf_load_checkpoint":
        import tensorflow  # noqa: F401
        import torch  # noqa: F401
        import safetensors.torch  # noqa: F401
    else:
        sys.path.insert(0, ROOT)
        import tqdm  # noqa: F401
        import weights_convert  # noqa: F401


def phase_compare(a: str, b: str) -> None:
    """Same names, dtypes, shapes and bytes, one tensor at a time."""
    import numpy as np
    from safetensors import safe_open
    with safe_open(a, "np") as fa, safe_open(b, "np") as fb:
        ka, kb = set(fa.keys()), set(fb.keys())
        if ka != kb:
            _reply({"identical": False, "only_in_a": sorted(ka - kb)[:10], "only_in_b": sorted(kb - ka)[:10]})
            return
        diff, nbytes = [], 0
        for k in sorted(ka):
            x = fa.get_tensor(k)
            y = fb.get_tensor(k)
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
                    x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)):
                diff.append(k)
            nbytes += x.nbytes
            del x, y
    _reply({"identical": not diff, "tensors": len(ka), "bytes": nbytes, "different": diff[:10]})


# ====================================================================== parent (stdlib only)
def _phase_result(output: str) -> dict:
    """A child phase's result: its output's last line, strict JSON (`_reply`), NaN / inf put back."""
    from workers import strict_json
    return strict_json().restore(json.loads(output.strip().splitlines()[-1]))


def run_measured(cmd: list, log: str) -> dict:
    """Run `cmd` in a fresh child; wall seconds and the child's own peak RSS (os.wait4)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # stopped (Ctrl-C, SIGTERM): the child too, before the clean-up removes its files
            p.kill()
            p.wait()
            raise
        wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(log) as f:
        text = f.read()
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return {"wall_s": wall, "peak_rss_bytes": ru.ru_maxrss * 1024, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "output": text}


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: str) -> float | None:
    """Share of `path` in the page cache (util-linux fincore), None if unavailable."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", path],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]) / max(1, int(out[1]))
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def timed_cat(path: str) -> float:
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", path], stdout=null, check=True)
    return time.perf_counter() - t


def write_speed(folder: str, nbytes: int = 1 << 30) -> float:
    """Bytes/s of writing `nbytes` and fdatasync'ing them (weights_convert fsyncs its output)."""
    path = os.path.join(folder, "write_probe.bin")
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={nbytes // (16 * MiB)}",
                    "conv=fdatasync", "status=none"], check=True)
    dt = time.perf_counter() - t
    os.unlink(path)
    return nbytes / dt


def _model_text(model: dict) -> str:
    return ", ".join(f"{k}={model.get(k)}" for k in DEFAULT_MODEL)


def kept_model(manifest_path: str, ckpt_folder: str) -> dict | None:
    """{light, img_size, ch} of an earlier --keep run's checkpoint (its manifest's config), or None."""
    if not kept_manifest(manifest_path, ckpt_folder):
        return None
    with open(manifest_path) as f:
        config = json.load(f).get("config") or {}
    return {k: config.get(k) for k in DEFAULT_MODEL}


def ensure_checkpoint(folder: str, manifest_path: str, seed: int, logs: str, model: dict | None = None) -> dict:
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            m = json.load(f)
        total = sum(t["nbytes"] for t in m["tensors"].values())
        if (os.path.isfile(m["prefix"] + ".index") and os.path.isfile(os.path.join(folder, "checkpoint"))
                and os.path.getsize(m["data"]) == total):
            print(f"reusing {m['prefix']}", flush=True)
            m["made"] = None
            return m
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    model = dict(model or DEFAULT_MODEL)
    size = "~8 GB" if model == DEFAULT_MODEL else _model_text(model)
    print(f"making the checkpoint in {folder} (graph build + random values, {size}) ...", flush=True)
    r = run_measured([sys.executable, os.path.abspath(__file__), "--_phase", "make", folder, manifest_path,
                      str(seed), json.dumps(model)], os.path.join(logs, "make.log"))
    print(r["output"].rstrip(), flush=True)
    with open(manifest_path) as f:
        m = json.load(f)
    m["made"] = {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
    return m


def kept_manifest(manifest_path: str, ckpt_folder: str) -> bool:
    """Whether `manifest_path` is the manifest an earlier run of this script wrote (phase_make) for
    a checkpoint in `ckpt_folder`, i.e. an earlier --keep run's checkpoint this run may reuse."""
    try:
        with open(manifest_path) as f:
            m = json.load(f)
        return (isinstance(m, dict) and isinstance(m.get("tensors"), dict) and isinstance(m.get("prefix"), str)
                and isinstance(m.get("data"), str) and m.get("step") == STEP
                and os.path.dirname(os.path.abspath(m["prefix"])) == os.path.abspath(ckpt_folder))
    except (OSError, ValueError):
        return False


def foreign_names(work: str) -> list[str]:
    """The names this script works under in `work` that hold something it may not use: `out/`
    and `logs/` (each run makes and removes its own), `checkpoint/` and `manifest.json` unless
    they are an earlier --keep run's (its manifest names a checkpoint in checkpoint/UGATIT_bench)."""
    ckpt_folder = os.path.join(work, "checkpoint", "UGATIT_bench")
    kept = kept_manifest(os.path.join(work, "manifest.json"), ckpt_folder)
    bad = [n for n in ("out", "logs") if os.path.lexists(os.path.join(work, n))]
    if not kept:
        bad += [n for n in ("checkpoint", "manifest.json") if os.path.lexists(os.path.join(work, n))]
    return bad


def _size(n: float) -> str:
    """A checkpoint's size: GB for the default's, MB for a small one's."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def fmt_mib(n: float) -> str:
    return f"{n / MiB:,.0f}"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_phase":
        kind, rest = sys.argv[2], sys.argv[3:]
        {"make": lambda: phase_make(rest[0], rest[1], int(rest[2]), *rest[3:]),
         "naive": lambda: phase_naive(*rest), "imports": lambda: phase_import_only(*rest),
         "compare": lambda: phase_compare(*rest)}[kind]()
        return 0
    import signal

    def stopped(signum, frame):  # SIGTERM (timeout, kill, a scheduler): the clean-up runs, as on Ctrl-C
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stopped)
    sys.path.insert(0, ROOT)
    from ugatit_common.options import path_value
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", choices=["cold", "warm", "both"], default="both",
                   help="page-cache state of the checkpoint data before each conversion (default both)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint it makes for the next run")
    p.add_argument("--work", default=WORK, type=path_value, help=f"work folder, owned by this run while it runs (default {WORK})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=path_value, help="also write the results as JSON to this file")
    from ugatit_common import options as opt
    p.add_argument("--light", type=opt.str2bool, default=DEFAULT_MODEL["light"],
                   help="the checkpoint's model: light (True) or full (False, the default)")
    p.add_argument("--img_size", type=int, default=DEFAULT_MODEL["img_size"],
                   help=f"its image size (default {DEFAULT_MODEL['img_size']}; e.g. 32 with --ch 4 --n_dis 4 for a quick try)")
    p.add_argument("--ch", type=int, default=DEFAULT_MODEL["ch"], help=f"its base channels (default {DEFAULT_MODEL['ch']})")
    p.add_argument("--n_dis", type=int, default=DEFAULT_MODEL["n_dis"],
                   help=f"its discriminator layers (default {DEFAULT_MODEL['n_dis']}: 96 px at least; 4: 32 px)")
    a = p.parse_args(argv)
    model = {k: getattr(a, k) for k in DEFAULT_MODEL}
    try:  # the trainers' rules (a multiple of 4, the discriminators' least size, ch >= 1), before any work
        opt.validate(opt.config_from(phase="train", **model))
    except opt.OptionError as e:
        p.error(str(e))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/ (as when run as a script)
    from workers import check_json_out, write_json  # bench/workers.py: standard library only
    if a.out and check_json_out(a.out, "--out"):  # checked before minutes of work, not after
        p.error(check_json_out(a.out, "--out"))

    from ugatit_common import run_lock
    from ugatit_common.options import OptionError
    work = os.path.abspath(a.work)
    try:  # one run per work folder: another's checkpoint is never rebuilt or removed under it. Its own
        # lock names: a training's (run_lock's default) would make weights_convert refuse to write its
        # output into out/ ("a folder of a running training")
        lock = run_lock.acquire(work, "--work folder", lock_name=LOCK_NAMES[0], owner_name=LOCK_NAMES[1])
    except OptionError as e:
        p.error(str(e))
    training = run_lock.held_by(work)  # a training (or another command) holding the folder the usual way
    if training is not None:
        lock.release()
        run_lock.remove_created(lock)
        p.error(f"--work folder {work!r} is in use by another run ({training.describe()}); wait for it to end, "
                f"or give this run another folder")
    ckpt_folder = os.path.join(work, "checkpoint", "UGATIT_bench")
    manifest_path = os.path.join(work, "manifest.json")
    out_folder, logs = os.path.join(work, "out"), os.path.join(work, "logs")
    foreign = foreign_names(work)
    other = kept_model(manifest_path, ckpt_folder)
    if not foreign and other is not None and other != model:
        lock.release()
        run_lock.remove_created(lock)
        p.error(f"--work {a.work!r} holds a kept checkpoint of another model ({_model_text(other)}; this run: "
                f"{_model_text(model)}): give its flags, or another --work folder (it is never rebuilt)")
    if foreign:  # never written into, never removed at the end: not this script's
        lock.release()
        run_lock.remove_created(lock)
        p.error(f"--work {a.work!r} holds {', '.join(repr(n) for n in foreign)}, which this script did not leave "
                f"there (a checkpoint it keeps has its manifest.json; out/ and logs/ exist only while a run "
                f"runs): give --work an empty or new folder, or move them away")
    made = [out_folder, logs]  # all free (checked above): removed at the end
    kept_before = os.path.lexists(manifest_path)  # an earlier --keep run's checkpoint: reused, left
    for d in (out_folder, logs):
        os.makedirs(d, exist_ok=True)
    try:
        m = ensure_checkpoint(ckpt_folder, manifest_path, a.seed, logs, model)
        data = m["data"]
        tensors = m["tensors"]
        largest_name = max(tensors, key=lambda n: tensors[n]["nbytes"])
        largest = tensors[largest_name]["nbytes"]
        ckpt_bytes = os.path.getsize(data) + os.path.getsize(m["prefix"] + ".index")
        # the peak-RSS target is the default (full 256 px) model's: a small model's peak is the imports'
        target = 2 * largest + 300 * MiB if model == DEFAULT_MODEL else None

        disk = {}
        evict(data)
        disk["cached_before_cold_cat"] = cached_fraction(data)
        disk["cat_cold_s"] = timed_cat(data)
        disk["cat_warm_s"] = timed_cat(data)
        disk["read_cold_Bps"] = os.path.getsize(data) / disk["cat_cold_s"]
        disk["read_warm_Bps"] = os.path.getsize(data) / disk["cat_warm_s"]
        # a probe of the checkpoint's size (1 GiB at most: the default's; 16 MiB at least)
        probe = min(1 << 30, max(16 * MiB, -(-os.path.getsize(data) // (16 * MiB)) * 16 * MiB))
        disk["write_fdatasync_Bps"] = write_speed(out_folder, probe)

        outs = {"weights_convert": os.path.join(out_folder, "weights_convert.safetensors"),
                "tf_load_checkpoint": os.path.join(out_folder, "tf_load_checkpoint.safetensors")}
        cmds = {"weights_convert": [sys.executable, "weights_convert.py", "tf2torch", ckpt_folder,
                                    outs["weights_convert"], "--with_optimizer"],
                "tf_load_checkpoint": [sys.executable, os.path.abspath(__file__), "--_phase", "naive",
                                       ckpt_folder, outs["tf_load_checkpoint"]]}
        runs = []
        imports = {conv: run_measured([sys.executable, os.path.abspath(__file__), "--_phase", "imports", conv],
                                      os.path.join(logs, f"imports_{conv}.log")) for conv in cmds}
        modes = ["cold", "warm"] if a.cache == "both" else [a.cache]
        for mode in modes:
            for conv in ("weights_convert", "tf_load_checkpoint"):
                if os.path.exists(outs[conv]):
                    os.unlink(outs[conv])
                if mode == "cold":
                    evict(data)
                else:
                    timed_cat(data)
                cached = cached_fraction(data)
                print(f"[{mode}] {conv} ... (data file {'?' if cached is None else f'{cached:.0%}'} cached)",
                      flush=True)
                r = run_measured(cmds[conv], os.path.join(logs, f"{conv}_{mode}.log"))
                row = {"converter": conv, "cache": mode, "cached_fraction_before": cached,
                       "wall_s": r["wall_s"], "user_s": r["user_s"], "sys_s": r["sys_s"],
                       "peak_rss_bytes": r["peak_rss_bytes"], "out_bytes": os.path.getsize(outs[conv])}
                if conv == "tf_load_checkpoint":
                    row["phases_s"] = _phase_result(r["output"])
                runs.append(row)
                print(f"    {row['wall_s']:.1f} s, peak RSS {fmt_mib(row['peak_rss_bytes'])} MiB", flush=True)

        cmp_run = run_measured([sys.executable, os.path.abspath(__file__), "--_phase", "compare",
                                outs["weights_convert"], outs["tf_load_checkpoint"]], os.path.join(logs, "compare.log"))
        comparison = _phase_result(cmp_run["output"])
        parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        ours = [r for r in runs if r["converter"] == "weights_convert"]
        meets = None if target is None else all(r["peak_rss_bytes"] < target for r in ours)
        results = {
            "machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "python": sys.version.split()[0]},
            "checkpoint": {"prefix": m["prefix"], "config": m["config"], "tensors": len(tensors),
                           "bytes_on_disk": ckpt_bytes, "largest_tensor": largest_name,
                           "largest_tensor_bytes": largest, "made": m.get("made")},
            "target_peak_rss_bytes": target, "weights_convert_meets_target": meets,
            "disk": disk, "imports_only": {conv: {"wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
                                           for conv, r in imports.items()},
            "runs": runs, "outputs_identical": comparison, "parent_peak_rss_bytes": parent_rss,
        }
        print_table(results)
        if a.out:
            write_json(a.out, results, indent=2)
            print(f"wrote {a.out}")
        return 0 if comparison.get("identical") else 1
    finally:  # only what this run made: an earlier --keep run's checkpoint and any other file stay
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        if not a.keep and not kept_before:  # the checkpoint this run made (or began to make): checkpoint/
            shutil.rmtree(os.path.join(work, "checkpoint"), ignore_errors=True)  # was free (foreign_names)
            with contextlib.suppress(OSError):
                os.unlink(manifest_path)
        lock.release()
        run_lock.remove_created(lock)  # the work folder, when this run made it and nothing else is left in it


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def print_table(res: dict) -> None:
    c, d = res["checkpoint"], res["disk"]
    gb = 1e9
    cfg = c["config"]
    kind = "light" if cfg.get("light") else "full"
    print(f"\n{kind} {cfg.get('img_size')} px (ch {cfg.get('ch')}) training checkpoint with Adam slots: {c['tensors']} tensors, "
          f"{_size(c['bytes_on_disk'])} on disk; largest tensor {c['largest_tensor']} "
          f"{_size(c['largest_tensor_bytes'])}")
    print(f"machine: {res['machine']['cpus']} CPUs, {res['machine']['cpu']}")
    print(f"data file read with cat: cold {d['read_cold_Bps'] / gb:.2f} GB/s ({d['cat_cold_s']:.1f} s), "
          f"warm {d['read_warm_Bps'] / gb:.2f} GB/s ({d['cat_warm_s']:.1f} s); "
          f"write+fdatasync {d['write_fdatasync_Bps'] / gb:.2f} GB/s")
    if res["target_peak_rss_bytes"] is None:
        print("target peak RSS: none at this size (the target, 2 x largest + 300 MiB, is the default full "
              "256 px model's; a small model's peak is the imports')")
    else:
        print(f"target peak RSS: 2 x largest + 300 MiB = {fmt_mib(res['target_peak_rss_bytes'])} MiB")
    imp = res["imports_only"]
    print(f"peak RSS of the imports alone: weights_convert {fmt_mib(imp['weights_convert']['peak_rss_bytes'])} MiB, "
          f"tensorflow+torch+safetensors {fmt_mib(imp['tf_load_checkpoint']['peak_rss_bytes'])} MiB\n")
    print(f"{'converter':<20}{'cache':<7}{'wall s':>8}{'user s':>8}{'sys s':>7}{'peak RSS MiB':>14}"
          f"{'x largest':>10}{'GB/s':>7}  target")
    for r in res["runs"]:
        ok = ("-" if res["target_peak_rss_bytes"] is None else
              "met" if r["peak_rss_bytes"] < res["target_peak_rss_bytes"] else "NOT met")
        print(f"{r['converter']:<20}{r['cache']:<7}{r['wall_s']:>8.1f}{r['user_s']:>8.1f}{r['sys_s']:>7.1f}"
              f"{fmt_mib(r['peak_rss_bytes']):>14}{r['peak_rss_bytes'] / c['largest_tensor_bytes']:>10.2f}"
              f"{c['bytes_on_disk'] / r['wall_s'] / gb:>7.2f}  {ok}")
    for r in res["runs"]:
        if "phases_s" in r:
            ph = r["phases_s"]
            print(f"  tf_load_checkpoint ({r['cache']}): imports {ph['import_s']:.1f} s, read+relayout "
                  f"{ph['read_s']:.1f} s, save_file {ph['save_s']:.1f} s, fsync {ph['fsync_s']:.1f} s")
    for r in res["runs"]:
        if r["converter"] == "weights_convert":
            print(f"  weights_convert ({r['cache']}): {r['wall_s'] / d['cat_cold_s']:.1f}x the cold `cat` of the data "
                  f"file, {r['wall_s'] / d['cat_warm_s']:.0f}x the warm one; CPU user+sys {r['user_s'] + r['sys_s']:.1f} s")
    cmp = res["outputs_identical"]
    print(f"\noutputs identical: {cmp.get('identical')} ({cmp.get('tensors')} tensors, "
          f"{(cmp.get('bytes') or 0) / gb:.2f} GB compared)")
    print(f"(this script's own peak RSS, the floor of every child's ru_maxrss: {fmt_mib(res['parent_peak_rss_bytes'])} MiB)")


if __name__ == "__main__":
    sys.exit(main())

"""Time per training iteration (one D run + one G run) and test-phase images/second (one
generator forward at img_size) for torch_port vs tf_reference, in the same run on the same
machine. Each framework lives in its own worker process (in one process their thread pools
spin against each other and both slow down), and the parent times them alternately, iteration
by iteration, so load from other processes falls on both alike; medians are reported.

    python bench/bench_train.py                       # light, 256 px, batch 1, ch 64
    python bench/bench_train.py --img_size 64 --ch 8 --n_dis 4 --iters 3
"""
from __future__ import annotations

import argparse
import os
import json
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ugatit_common import options as opt  # noqa: E402

from workers import Worker  # bench/workers.py (this folder is sys.path[0] when run as a script)


def _inputs(s):
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32), rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32))


def torch_runner(cfg, device, init_from: str | None = None):
    """(train_iteration, translate) callables for torch_port; each returns when the work is done.
    init_from: a TF checkpoint folder whose weights (converted) the model starts from."""
    import torch
    from torch_port import build_ugatit
    torch.manual_seed(0)
    model = build_ugatit(cfg)
    if init_from:
        import weights_convert
        model.load_state_dict(weights_convert.tf_to_torch(init_from, overrides={"img_size": cfg["img_size"]})[1])
    model = model.to(device)
    model.make_optimizers(cfg["lr"])
    a, b = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device) for x in _inputs(cfg["img_size"]))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train():
        model.d_step(a, b, cfg["lr"])
        model.g_step(a, b, cfg["lr"])
        sync()

    def translate():
        with torch.no_grad():
            model.translate(a, "a2b")
        sync()
    return train, translate


def tf_runner(cfg, save_to: str | None = None):
    """(train_iteration, translate) callables for tf_reference (two graphs, two sessions).
    save_to: write the initial weights there (a checkpoint folder) and give the test graph the
    same weights, so both frameworks run the same model."""
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    s = cfg["img_size"]
    a, b = _inputs(s)
    g_train, g_test = tf.Graph(), tf.Graph()
    with g_train.as_default():
        pa, pb = tf.placeholder(tf.float32, [1, s, s, 3]), tf.placeholder(tf.float32, [1, s, s, 3])
        m = UGATITGraph(cfg).build_train(pa, pb)
        sess_train = tf.Session(graph=g_train)
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


def conv_throughput(device, ch: int = 256, size: int = 64, reps: int = 5) -> float:
    """FLOP/s of the port's commonest convolution (3x3, ch -> ch at size x size: a resblock of the
    256-px model), forward plus both backward products, best of `reps` (a practical peak)."""
    import torch
    import torch.nn.functional as F
    x = torch.randn(1, ch, size + 2, size + 2, device=device, requires_grad=True)
    w = torch.randn(ch, ch, 3, 3, device=device, requires_grad=True)
    flops = 3 * 2 * size * size * ch * ch * 9
    best = float("inf")
    for _ in range(reps + 1):
        t = time.perf_counter()
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


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(name: str, cfg: dict, device: str, weights: str | None) -> int:
    """Serve timing requests on stdin ("train" / "translate"), one JSON line of seconds each.
    `weights`: the TF worker writes its initial weights there, the torch worker loads them."""
    if name == "torch_port":
        from torch_port.cpu_memory import keep_freed_memory
        from torch_port.train import pick_device
        dev = pick_device(device)
        if dev.type == "cpu":
            keep_freed_memory()  # as `python -m torch_port` does on CPU
        train, translate = torch_runner(cfg, dev, weights)
        floor = lambda: {"flops": iteration_flops(train), "peak": conv_throughput(dev)}  # noqa: E731
    else:
        train, translate = tf_runner(cfg, weights)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            break
        if what == "floor":
            print(json.dumps(floor()), flush=True)
            continue
        print(json.dumps({"seconds": _timed(train if what == "train" else translate)}), flush=True)
    return 0


def _Worker(name, args, env=None):
    return Worker(os.path.abspath(__file__), name, args, env)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=64)
    p.add_argument("--n_dis", type=int, default=6)
    p.add_argument("--light", type=opt.str2bool, default=True)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip_tf", action="store_true")
    p.add_argument("--worker", choices=["torch_port", "tf_reference"], help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cfg = opt.validate(opt.config_from(light=a.light, img_size=a.img_size, ch=a.ch, n_dis=a.n_dis))
    if a.worker:
        return worker(a.worker, cfg, a.device, a.weights)
    passthrough = ["--img_size", str(a.img_size), "--ch", str(a.ch), "--n_dis", str(a.n_dis),
                   "--light", str(a.light), "--device", a.device]
    import tempfile
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
    if a.skip_tf:
        workers = [_Worker("torch_port", passthrough)]
    else:  # TF first: it writes its initial weights, which the torch worker then loads
        workers = [_Worker("tf_reference", passthrough + ["--weights", tmp.name])]
        workers.insert(0, _Worker("torch_port", passthrough + ["--weights", tmp.name]))
    times = {w.name: ([], []) for w in workers}
    try:
        for _ in range(a.warmup):
            for w in workers:
                w.time("train")
                w.time("translate")
        for _ in range(a.iters):  # alternate: one iteration of each in turn
            for w in workers:
                times[w.name][0].append(w.time("train"))
                times[w.name][1].append(w.time("translate"))
        floor = workers[0].ask("floor")  # the torch worker
    finally:
        for w in workers:
            w.close()
        tmp.cleanup()
    import torch
    from torch_port.train import pick_device
    device = pick_device(a.device)
    print(f"\nsame initial weights in both: {not a.skip_tf}")
    print(f"light={a.light} img_size={a.img_size} ch={a.ch} n_dis={a.n_dis} batch=1 iters={a.iters} "
          f"torch threads={torch.get_num_threads()} load average {os.getloadavg()[0]:.2f}")
    print(f"{'impl':<14}{'device':<8}{'s/iter (D+G)':>14}{'test img/s':>12}   per-iteration times")
    rows = {}
    for name, (tr, te) in times.items():
        it, ips = statistics.median(tr), 1.0 / statistics.median(te)
        rows[name] = (it, ips)
        dev = device.type if name == "torch_port" else "cpu"
        print(f"{name:<14}{dev:<8}{it:>14.4f}{ips:>12.2f}   {' '.join(f'{t:.2f}' for t in tr)}")
    if len(rows) == 2:
        (t_it, t_ips), (r_it, r_ips) = rows["torch_port"], rows["tf_reference"]
        print(f"ratio torch/tf: iteration time {t_it / r_it:.2f}x, test throughput {t_ips / r_ips:.2f}x")
    # what no implementation of the same arithmetic can beat on this machine: the iteration's
    # FLOPs at the best throughput measured for one of its own convolutions
    seconds = floor["flops"] / floor["peak"]
    print(f"arithmetic floor: {floor['flops'] / 1e12:.3f} TFLOP per iteration / {floor['peak'] / 1e9:.0f} GFLOP/s "
          f"(3x3 conv, forward + backward) = {seconds:.2f} s per iteration"
          + (f" = {seconds / rows['tf_reference'][0]:.2f}x of tf_reference's" if "tf_reference" in rows else "")
          + f"; torch_port takes {rows['torch_port'][0] / seconds:.2f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())

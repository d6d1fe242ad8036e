"""Time per training iteration (one D run + one G run) and test-phase images/second for
torch_port vs tf_reference, in the same process on the same machine.

    python bench/bench_train.py                       # light, 256 px, batch 1, ch 64
    python bench/bench_train.py --img_size 64 --ch 8 --iters 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ugatit_common import options as opt  # noqa: E402


def bench_torch(cfg, iters, warmup, device):
    import torch
    from torch_port import build_ugatit
    torch.manual_seed(0)
    model = build_ugatit(cfg).to(device)
    model.make_optimizers(cfg["lr"])
    s = cfg["img_size"]
    A = torch.rand(1, 3, s, s, device=device) * 2 - 1
    B = torch.rand(1, 3, s, s, device=device) * 2 - 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        model.d_step(A, B, cfg["lr"])
        model.g_step(A, B, cfg["lr"])
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        model.d_step(A, B, cfg["lr"])
        model.g_step(A, B, cfg["lr"])
    sync()
    it = (time.perf_counter() - t) / iters
    model.eval()
    with torch.no_grad():
        model.translate(A, "a2b")
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            model.translate(A, "a2b")
        sync()
    return it, iters / (time.perf_counter() - t)


def bench_tf(cfg, iters, warmup):
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    s = cfg["img_size"]
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, (1, s, s, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        pa, pb = tf.placeholder(tf.float32, [1, s, s, 3]), tf.placeholder(tf.float32, [1, s, s, 3])
        m = UGATITGraph(cfg).build_train(pa, pb)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            feed = {pa: a, pb: b, m.lr: cfg["lr"]}
            for _ in range(warmup):
                sess.run(m.D_optim, feed)
                sess.run(m.G_optim, feed)
            t = time.perf_counter()
            for _ in range(iters):
                sess.run(m.D_optim, feed)
                sess.run(m.G_optim, feed)
            it = (time.perf_counter() - t) / iters
    g = tf.Graph()
    with g.as_default():
        m = UGATITGraph(dict(cfg, phase="test")).build_test()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(m.test_fake_B, {m.test_domain_A: a})
            t = time.perf_counter()
            for _ in range(iters):
                sess.run(m.test_fake_B, {m.test_domain_A: a})
            ips = iters / (time.perf_counter() - t)
    return it, ips


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
    a = p.parse_args(argv)
    cfg = opt.validate(opt.config_from(light=a.light, img_size=a.img_size, ch=a.ch, n_dis=a.n_dis))
    import torch
    from torch_port.train import pick_device
    device = pick_device(a.device)
    rows = [("torch_port", device.type, *bench_torch(cfg, a.iters, a.warmup, device))]
    if not a.skip_tf:
        rows.append(("tf_reference", "cpu", *bench_tf(cfg, a.iters, a.warmup)))
    print(f"\nlight={a.light} img_size={a.img_size} ch={a.ch} n_dis={a.n_dis} batch=1 iters={a.iters} "
          f"torch threads={torch.get_num_threads()}")
    print(f"{'impl':<14}{'device':<8}{'s/iter (D+G)':>14}{'test img/s':>12}")
    for name, dev, it, ips in rows:
        print(f"{name:<14}{dev:<8}{it:>14.4f}{ips:>12.2f}")
    if len(rows) == 2:
        print(f"ratio torch/tf: iteration time {rows[0][2] / rows[1][2]:.2f}x, "
              f"test throughput {rows[0][3] / rows[1][3]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

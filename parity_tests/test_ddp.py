"""Data-parallel training (torch_port.distributed) equals single-process training on the
combined batch.

Two gloo processes, batch 1 each (different images), one d_step + g_step with the TF1Adam
steps wrapped by `average_gradients_before_step`, versus one process with both images as a
batch of 2. Why they agree: every official loss term is a mean over the batch (L1, GAN, CAM
terms), instance/layer norms and the MLP are per sample, so mean over ranks of the per-rank
gradients == gradient of the batch-2 mean. The L2 regularisation term depends only on the
weights, so every rank has the same gradient of it and averaging keeps it once - as in the
batch-2 run. lsgan is used: gradient-penalty terms would need the same per-sample alphas (and
dragan's noise scale uses the std over the whole batch, which does not decompose).
Spectral-norm `u` is updated from the weights only, so it is identical on all ranks.

Compared: the Adam first moments of both optimizers (m = (1-beta1) * averaged gradient) to
1e-4 of each tensor's largest entry, `u` buffers exactly-ish (1e-6), weights to 0.05 * lr
(the first Adam step is ~lr * sign(g): a float-noise gradient can flip its sign), skipping the
norm-fed conv biases whose exact gradient is zero (their noise gradients decide a full step).
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from parity_tests.golden import NORM_FED_BIAS

CFG = dict(light=True, img_size=32, ch=2, n_dis=4, n_res=4, sn=True, smoothing=True, gan_type="lsgan")
LR = 1e-4


def _images():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1)


def _run(model, A, B):
    model.d_step(A, B, LR)
    model.g_step(A, B, LR)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.update({f"{k}/G_m": v.clone() for k, v in model.G_optim.m.items()})
    out.update({f"{k}/D_m": v.clone() for k, v in model.D_optim.m.items()})
    return out


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch_port import build_ugatit
    from torch_port import distributed as ddp
    info = ddp.init("cpu")
    assert info.world_size == world and info.rank == rank
    torch.manual_seed(0)
    model = build_ugatit(CFG)
    G, D = model.make_optimizers(LR)
    ddp.average_gradients_before_step(G)
    ddp.average_gradients_before_step(D)
    ddp.broadcast_module_(model)
    A, B = _images()
    out = _run(model, A[rank:rank + 1], B[rank:rank + 1])
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    ddp.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process_batch_of_two(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    from torch_port import build_ugatit
    torch.manual_seed(0)
    model = build_ugatit(CFG)
    model.make_optimizers(LR)
    A, B = _images()
    ref = _run(model, A, B)
    for k in ref:  # every rank ends with identical weights, u and slots
        assert torch.equal(r0[k], r1[k]), k
    checked = 0
    for k, want in ref.items():
        got = r0[k]
        name = k.split("/")[0].replace(".", "/")
        if NORM_FED_BIAS.match(name.replace("/bias", "/conv2d/bias")):
            continue  # exact gradient zero: float noise decides (weights and slots alike)
        if k.endswith(("/G_m", "/D_m")):
            scale = float(want.abs().max()) or 1.0
            assert float((got - want).abs().max()) <= 1e-4 * scale, k
        elif k.endswith(".u"):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        else:
            assert float((got - want).abs().max()) <= 0.05 * LR, k
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("precision", ["fp32", pytest.param("fp16", marks=pytest.mark.slow)])
def test_torchrun_two_ranks_end_to_end(tmp_path, precision):
    """`torchrun --nproc_per_node 2 -m torch_port` (gloo on CPU): trains, rank 0 alone prints the
    per-iteration lines and writes the checkpoint; fp16: the trainer's order (loss scaling inside,
    gradient averaging outside) holds through the command line, the scales are checkpointed."""
    import re
    import shutil
    import subprocess
    import sys
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "torch_port", "--phase", "train",
                           "--dataset", "demo", "--epoch", "1", "--iteration", "3", "--img_size", "32", "--ch", "4",
                           "--n_dis", "4", "--print_freq", "1000", "--save_freq", "1000", "--device", "cpu",
                           "--precision", precision],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = re.findall(r"Epoch: \[ *0\] \[ *(\d+)/ *3\] time: \S+ d_loss: \S+ g_loss: \S+", proc.stdout)
    assert lines == ["0", "1", "2"], proc.stdout[-2000:]
    folder = tmp_path / "checkpoint" / "UGATIT_demo_lsgan_4resblock_4dis_1_1_10_10_1000_sn_smoothing"
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    from torch_port import checkpoint as ckpt
    _, _, state = ckpt.find_latest(str(folder))
    assert state["precision"] == precision and state["world_size"] == 2
    assert ("loss_scale" in state) == (precision == "fp16")
    if precision == "fp32":  # resumed by one process: the global batch changes, and the run says so
        args = proc.args[proc.args.index("-m"):]
        one = subprocess.run([sys.executable] + args, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert one.returncode == 0, one.stderr[-3000:]
        assert "warning: the checkpoint was written by 2 process(es), this run has 1" in one.stderr, one.stderr[-2000:]


def _fp16_worker(rank, world, port, out_dir):
    """fp16 with loss scaling under data parallelism: rank 1 alone overflows in the first D step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch_port import build_ugatit
    from torch_port import distributed as ddp
    from torch_port.train_precision import mixed_precision_steps
    ddp.init("cpu")
    torch.manual_seed(0)
    model = build_ugatit(CFG)
    G, D = model.make_optimizers(LR)
    d_step, g_step = mixed_precision_steps(model, model.d_step, model.g_step, "fp16", "cpu")
    for optim in (G, D):  # as the trainer does: the averaging wraps the scaler's step from outside
        optim.loss_scaler.scale = 16.0
        ddp.average_gradients_before_step(optim)
    ddp.broadcast_module_(model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if rank == 1:  # this rank's scaled loss overflows float16 in the backward pass, once
        original = model._optimizer_update

        def overflow_once(optim, total, lr):
            model._optimizer_update = original
            return original(optim, total * 2.0 ** 40, lr)
        model._optimizer_update = overflow_once
    A, B = _images()
    d_step(A[rank:rank + 1], B[rank:rank + 1], LR)
    after_skip = {k: v.detach().clone() for k, v in model.state_dict().items()}
    scale_after_skip = D.loss_scaler.scale
    d_step(A[rank:rank + 1], B[rank:rank + 1], LR)
    g_step(A[rank:rank + 1], B[rank:rank + 1], LR)
    torch.save({"start": start, "after_skip": after_skip, "scale_after_skip": scale_after_skip,
                "skipped": D.loss_scaler.skipped, "end": dict(model.state_dict()),
                "powers": [p.clone() for p in D.powers] + [p.clone() for p in G.powers]},
               os.path.join(out_dir, f"fp16_rank{rank}.pt"))
    ddp.shutdown()


def test_fp16_ranks_skip_an_overflowing_step_together(tmp_path):
    """An overflow on one rank is an inf in the averaged gradients of all: every rank skips the
    step (weights unchanged, Adam not advanced), halves its scale, and the ranks stay identical."""
    mp.spawn(_fp16_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"fp16_rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert r["scale_after_skip"] == 8.0 and r["skipped"] == 1
        d_weights = [k for k in r["start"] if k.startswith("discriminator") and not k.endswith(".u")]
        assert all(torch.equal(r["after_skip"][k], r["start"][k]) for k in d_weights)
        assert not all(torch.equal(r["end"][k], r["start"][k]) for k in d_weights)  # the next step updated
    assert all(torch.equal(r0["end"][k], r1["end"][k]) for k in r0["end"])
    assert all(torch.equal(a, b) for a, b in zip(r0["powers"], r1["powers"]))


# -- torchrun as a user runs it: errors and resume ---------------------------------------------------

TINY = ["--phase", "train", "--dataset", "demo", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--light", "True",
        "--device", "cpu", "--print_freq", "1000"]


def _cli_worker(rank, world, port, root, argv, fail_at):
    """One rank of `python -m torch_port ARGV` as torchrun starts it (its environment); rank 1 alone
    fails to read its `fail_at`-th batch of domain A (an image deleted mid-run that only it reads)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), TORCHELASTIC_RUN_ID="test",
                      OMP_NUM_THREADS="1")
    os.chdir(root)
    import sys
    torch.set_num_threads(1)
    from torch_port import train as tr
    if rank == 1 and fail_at is not None:
        original = tr._Feed.next

        def next_batch(self):
            if self.pos >= fail_at and self.seed_domain == "A":
                raise FileNotFoundError(2, "No such file or directory", "./dataset/demo/trainA/gone.png")
            return original(self)
        tr._Feed.next = next_batch
        original_init = tr._Feed.__init__

        def init(self, dataset, batch_size, seed, *a, **k):
            original_init(self, dataset, batch_size, seed, *a, **k)
            self.seed_domain = "A" if seed == 0 else "B"
        tr._Feed.__init__ = init
    from torch_port.__main__ import main
    with open(os.path.join(root, f"stderr{rank}.txt"), "w") as err:
        sys.stderr = err
        rc = main(list(argv))
        err.flush()
    with open(os.path.join(root, f"rc{rank}.txt"), "w") as fh:
        fh.write(str(rc))


def _spawn_cli(tmp_path, argv, fail_at=None):
    mp.spawn(_cli_worker, args=(2, _free_port(), str(tmp_path), argv, fail_at), nprocs=2, join=True)
    return ([int((tmp_path / f"rc{r}.txt").read_text()) for r in (0, 1)],
            [(tmp_path / f"stderr{r}.txt").read_text() for r in (0, 1)])


def test_one_rank_failing_mid_run_names_the_newest_checkpoint_and_the_other_rank_says_it_lost_it(tmp_path):
    """Rank 1 alone cannot read an image after checkpoints were written: its one line names the
    newest checkpoint in the folder (was 'last checkpoint: none': only rank 0 knew the folder); rank
    0, left in a collective, says in one line that another rank stopped (was 'internal error
    (RuntimeError: ... Connection closed by peer ... GLHF!)', exit 1); both exit 2."""
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    rcs, errs = _spawn_cli(tmp_path, TINY + ["--iteration", "12", "--epoch", "1", "--save_freq", "3"], fail_at=8)
    assert rcs == [2, 2], errs
    folder = tmp_path / "checkpoint" / "UGATIT_light_demo_lsgan_4resblock_4dis_1_1_10_10_1000_sn_smoothing"
    from ugatit_common.checkpoint_policy import inventory
    newest = os.path.basename(next(f.base for f in inventory(str(folder)) if f.complete))
    lines1 = [ln for ln in errs[1].splitlines() if ln.startswith("error:")]
    assert len(lines1) == 1 and "gone.png" in lines1[0], errs[1]
    assert f"last checkpoint: {newest}," in lines1[0], (newest, lines1)
    assert "resume with: torchrun --nproc_per_node 2 -m torch_port" in lines1[0]
    lines0 = [ln for ln in errs[0].splitlines() if ln.startswith("error:")]
    assert len(lines0) == 1 and "internal error" not in lines0[0], errs[0]
    assert "another rank stopped first" in lines0[0] and "Traceback" not in errs[0], errs[0]


def _torchrun(tmp_path, args, nproc=2, extra_env=None):
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "torch_port"] + args,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # four 2-process torchrun launches (~15 s); the morph variant below stays quick
def test_torchrun_errors_every_rank_meets_are_said_once(tmp_path):
    """Under `torchrun --nproc_per_node 2` an error every rank meets (a missing data set, --cuda_graphs
    True on a CPU, the run's folders held by another run, a NaN loss) is one `error:` line, not one
    per rank (was two identical lines; with the folders held, rank 1 added 'internal error
    (RuntimeError: ... Connection closed by peer ...)'); every rank exits 2 (3: NaN), no traceback
    of ours; a warning about the data set is said once too."""
    import re
    import types
    from ugatit_common import checkpoint_policy as policy
    from ugatit_common import options as opt
    from ugatit_common.demo_data import make_demo_dataset
    from torch_port.__main__ import EXTRA_KEYS, build_parser
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    (tmp_path / "dataset" / "demo" / "trainB" / "notes.txt").write_text("not an image")
    base = TINY + ["--iteration", "4", "--epoch", "1", "--save_freq", "2"]

    def check(args, rc, extra_env=None, what=""):
        proc = _torchrun(tmp_path, args, extra_env=extra_env)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, (what, proc.stderr[-3000:])
        assert what in errors[0], (what, errors)
        codes = re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)
        # every rank that failed: rc (torchrun stops the others with SIGTERM once one has exited)
        assert str(rc) in codes and set(codes) <= {str(rc), "-15"}, (what, proc.stderr[-3000:])
        assert not re.search(r'File ".*/(torch_port|ugatit_common|morph)/', proc.stderr), proc.stderr[-3000:]
        return proc

    check([a if a != "demo" else "nope" for a in base], 2, what="nope")
    check(base + ["--cuda_graphs", "True"], 2, what="--cuda_graphs")
    a = build_parser().parse_args(base)
    paths = opt.run_paths(opt.config_from({k: v for k, v in vars(a).items() if k not in EXTRA_KEYS}))
    held = policy.own_run(types.SimpleNamespace(**{k: str(tmp_path / getattr(paths, k))
                                                   for k in ("checkpoint", "sample", "log")}))
    try:
        check(base, 2, what="in use by another run")
    finally:
        held.release()
    proc = check(base, 3, extra_env={"UGATIT_TORCH_INJECT_NAN_AT": "4"}, what="is nan at step 4")
    assert proc.stderr.count("notes.txt") == 1, proc.stderr[-3000:]


def test_a_torchrun_checkpoint_resumed_by_one_process_continues_after_the_images_used(tmp_path):
    """A checkpoint of `torchrun --nproc_per_node 2` (loader positions counted in global batches
    of 2 images) resumed by one process continues with the images after those the two ranks used
    (was: at image k of the stream after k global batches - half of the images read again)."""
    import subprocess
    import sys
    from ugatit_common.demo_data import make_demo_dataset
    from torch_port import checkpoint as ckpt
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    args = TINY + ["--iteration", "2", "--save_freq", "1000"]
    proc = _torchrun(tmp_path, args + ["--epoch", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = str(tmp_path / "checkpoint" / "UGATIT_light_demo_lsgan_4resblock_4dis_1_1_10_10_1000_sn_smoothing")
    first = ckpt.find_latest(folder)[2]
    assert first["world_size"] == 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "torch_port"] + args + ["--epoch", "2"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    second = ckpt.find_latest(folder)[2]
    assert second["world_size"] == 1 and second["counter"] == first["counter"] + 2
    for key in ("loader_A", "loader_B"):  # images: 2 ranks x batch 1 per global batch, then 1 x 1
        used_before = first[key] * 2
        assert second[key] - 2 * 2 == used_before, (key, first[key], second[key])  # 2 iterations: D + G batches


def test_torchrun_morph_train_error_every_rank_meets_is_said_once(tmp_path):
    """`torchrun --nproc_per_node 2 -m morph train --dataset <missing>`: one error line (was one
    per rank), the ranks exit 2."""
    import re
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "morph", "train", "--config", "C",
                           "--dataset", "nope", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--iteration", "2",
                           "--epoch", "1", "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln and "nope" in ln]
    assert len(errors) == 1, proc.stderr[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]

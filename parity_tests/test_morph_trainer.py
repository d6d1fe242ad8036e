"""Morph-UGATIT trains through the port's trainer (`torch_port.train.Trainer`, `morph.train.MorphTrainer`):
torchrun data parallelism, TensorBoard events, the NaN stop (exit 3), --keep_checkpoints, --threads,
--num_workers, checkpoints of the earlier Morph loop, and config A equal to the port's training.

Tiny runs (light, 32 px, ch 2, n_dis 4, augmentation off, one CPU thread)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from morph.__main__ import main as morph_main
from morph.train import MorphTrainer, morph_paths
from parity_tests.test_ddp import _free_port
from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from torch_port import checkpoint as ckpt
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = dict(light=True, img_size=32, ch=2, n_dis=4, n_res=4, sn=True, smoothing=True)
FLAGS = ["--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
         "--augment_flag", "False", "--decay_flag", "False", "--print_freq", "1000", "--device", "cpu"]
# conv biases feeding a pure instance norm: exact gradient zero, float noise decides their Adam step
NORM_FED_BIAS = re.compile(r"^generator(_[AB])?\.(conv|conv_\d+|resblock_\d+\.res\d\.conv_0)\.bias$")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("morph_trainer_data"))
    make_demo_dataset(root, "demo", 32, n_train=4, n_test=1)
    return root


def _dirs(root):
    return ["--checkpoint_dir", os.path.join(root, "checkpoint"), "--result_dir", os.path.join(root, "results"),
            "--log_dir", os.path.join(root, "logs"), "--sample_dir", os.path.join(root, "samples")]


def _folder(root, config="C"):
    cfg = opt.config_from(dataset="demo", morph_config=config, checkpoint_dir=os.path.join(root, "checkpoint"),
                          result_dir="r", log_dir=os.path.join(root, "logs"), sample_dir="s", **NET)
    return morph_paths(cfg)


class _Float64Trainer(MorphTrainer):
    """The Morph trainer in float64 through its seams (the model factory and the step wrapper), so
    data-parallel and single-process runs can be compared far below float32 rounding."""

    def build_model(self):
        return super().build_model().double()

    def wrap_steps(self, d_step, g_step):
        return (lambda a, b, lr, draws=None: d_step(a.double(), b.double(), lr, draws),
                lambda a, b, lr: g_step(a.double(), b.double(), lr))


def _float64_cfg(data, root, batch_size):
    return opt.config_from(dataset="demo", epoch=1, iteration=1, batch_size=batch_size, print_freq=1000,
                           save_freq=1000, decay_flag=False, augment_flag=False, morph_config="C",
                           **dict(zip(["checkpoint_dir", "result_dir", "log_dir", "sample_dir"], _dirs(root)[1::2])),
                           **NET)


def _ddp_worker(rank, world, port, data, root, batch=1):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch_port import distributed as ddp
    info = ddp.init("cpu")
    assert info.world_size == world and info.rank == rank
    try:
        _Float64Trainer(_float64_cfg(data, root, batch), "cpu", seed=4, base=data, log=lambda m: None).run()
    finally:
        ddp.shutdown()


def _latest(root):
    step, weights, state = ckpt.find_latest(_folder(root).checkpoint)
    return step, weights, state


@pytest.mark.parametrize("batch", [1, 2])
def test_two_gloo_ranks_equal_one_process_on_the_combined_batch(data, tmp_path, batch):
    """Two gloo ranks of the Morph trainer with batch b each end where one process with batch 2b
    ends (config C, one iteration: a D and a G step, in float64), b = 1 and 2 (at b = 1 a rank
    keeping a contiguous slice of the global z draw takes the same rows as the interleaved rule
    the data follow; at b = 2 it pairs other codes with the images and fails). Every official and
    identity-preserving term is a mean over the batch, the latent MLP, PixelNorm and the norms are
    per sample, so the averaged gradients are the batch-2 gradients (as parity_tests/test_ddp.py
    argues for the port); each rank draws the global batch's z codes and keeps its own rows.
    Compared: Adam first moments (m = (1 - beta1) * gradient; TF1Adam keeps its slots in float32) to
    1e-6 of each tensor's largest entry (measured 5.6e-11), weights and `u` to 1e-9 (measured
    7.3e-12; norm-fed conv biases skipped: their exact gradient is zero, so float noise decides a
    full Adam step), the z generator's state and the loader positions exactly. Both a rank drawing
    only its own codes and every rank taking the global draw's first row fail this test. In float32
    the same comparison differs by up to 1e-4 relative (2e-3 for the CAM logit's bias, whose
    gradient is the difference of two 1000-weighted CAM terms) and by ~2 lr on near-zero-gradient
    weights of the latent MLP (a first Adam step is lr * sign(g)), hence float64."""
    import torch.multiprocessing as mp
    ddp_root, one_root = str(tmp_path / "ddp"), str(tmp_path / "one")
    mp.spawn(_ddp_worker, args=(2, _free_port(), data, ddp_root, batch), nprocs=2, join=True)
    _Float64Trainer(_float64_cfg(data, one_root, 2 * batch), "cpu", seed=4, base=data, log=lambda m: None).run()
    step_d, w_d, st_d = _latest(ddp_root)
    step_1, w_1, st_1 = _latest(one_root)
    assert step_d == step_1 == 2 and st_d["world_size"] == 2 and st_1["world_size"] == 1
    assert torch.equal(st_d["z_rng"], st_1["z_rng"])  # the ranks drew the global batch's codes
    # the loaders' positions count batches: one for the D run and one for the G run, at any batch size
    assert (st_d["loader_A"], st_d["loader_B"]) == (st_1["loader_A"], st_1["loader_B"]) == (2, 2)
    checked = 0
    for opt_name in ("G_optim", "D_optim"):
        for k, want in st_1[opt_name]["m"].items():
            if NORM_FED_BIAS.match(k):
                continue
            scale = float(want.abs().max()) or 1.0
            assert float((st_d[opt_name]["m"][k] - want).abs().max()) <= 1e-6 * scale, (opt_name, k)
            checked += 1
    for k, want in w_1.items():
        if not NORM_FED_BIAS.match(k):
            assert w_1[k].dtype == torch.float64, k
            assert float((w_d[k] - want).abs().max()) <= 1e-9, k
            checked += 1
    assert checked > 300


def test_torchrun_morph_train_end_to_end(data, tmp_path):
    """`torchrun --nproc_per_node 2 -m morph train` (gloo on CPU, batch 1 per rank): one training,
    rank 0 alone prints the progress lines and writes the checkpoint, which records both ranks'
    data positions and the global batch's z draws: those of one process with batch 2."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun is installed with torch"
    ddp_root, one_root = str(tmp_path / "ddp"), str(tmp_path / "one")
    common = ["train", "--config", "C", "--epoch", "1", "--iteration", "2", "--data_root", data] + FLAGS
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "morph", *common,
                           "--batch_size", "1", "--threads", "1", *_dirs(ddp_root)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = re.findall(r"Epoch: \[ *0\] \[ *(\d+)/ *2\]", proc.stdout)
    assert lines == ["0", "1"] and "(rank 0 of 2)" in proc.stdout, proc.stdout[-2000:]
    assert morph_main(common + ["--batch_size", "2", *_dirs(one_root)]) == 0
    step_d, w_d, st_d = _latest(ddp_root)
    step_1, w_1, st_1 = _latest(one_root)
    assert step_d == step_1 == 3 and st_d["world_size"] == 2
    assert torch.equal(st_d["z_rng"], st_1["z_rng"])
    assert (st_d["loader_A"], st_d["loader_B"]) == (st_1["loader_A"], st_1["loader_B"]) == (4, 4)
    assert w_d.keys() == w_1.keys()


def test_nan_stops_with_exit_3_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch, capsys):
    from torch_port.train import NAN_HOOK_ENV
    monkeypatch.setenv(NAN_HOOK_ENV, "3")
    root = str(tmp_path)
    rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "5", "--save_freq", "1",
                     "--data_root", data] + FLAGS + _dirs(root))
    err = capsys.readouterr().err
    assert rc == 3 and "Discriminator_loss" in err and "step 3" in err and "Traceback" not in err, err
    folder = _folder(root).checkpoint
    step, weights, state = ckpt.find_latest(folder)
    assert step == 3 and state["counter"] == 3 and state["kind"] == "morph"
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not glob.glob(os.path.join(folder, "*model-4*"))


def test_tensorboard_keep_checkpoints_threads_and_num_workers(data, tmp_path, monkeypatch, capsys):
    """TensorBoard scalars of every D / G term (the identity-preserving ones included) and rho
    histograms; --keep_checkpoints 2 keeps this run's newest two; --threads sets torch's CPU
    threads; --num_workers reaches the data loaders and leaves the data order (and so the weights)
    as with none."""
    import torch_port.train as tt
    real, seen = tt.resumable_loader, []

    def spy(*a, **k):
        seen.append(a[4] if len(a) > 4 else k.get("num_workers", 0))
        return real(*a, **k)
    monkeypatch.setattr(tt, "resumable_loader", spy)
    runs = {}
    for workers in ("1", "0"):
        root = str(tmp_path / f"w{workers}")
        torch.set_num_threads(2)
        rc = morph_main(["train", "--config", "C", "--epoch", "1", "--iteration", "4", "--save_freq", "1",
                         "--keep_checkpoints", "2", "--threads", "1", "--num_workers", workers, "--data_root", data]
                        + FLAGS + _dirs(root))
        out = capsys.readouterr().out
        assert rc == 0 and torch.get_num_threads() == 1 and "# device : cpu, 1 CPU threads" in out, out[-2000:]
        runs[workers] = root
    assert seen == [1, 1, 0, 0]
    folder = _folder(runs["1"]).checkpoint
    assert sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) == [
        "MorphUGATIT_C.model-4.safetensors", "MorphUGATIT_C.model-5.safetensors"]
    _, w1, _ = ckpt.find_latest(folder)
    _, w0, _ = ckpt.find_latest(_folder(runs["0"]).checkpoint)
    for k in w0:
        assert torch.equal(w1[k], w0[k]), k
    log_dir = _folder(runs["1"]).log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    [events] = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    acc = EventAccumulator(events, size_guidance={"scalars": 0, "histograms": 0}).Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"Generator_loss", "Discriminator_loss", "D_A_loss", "D_B_loss"}
    for d in "AB":
        want |= {f"G_{d}_{t}" for t in ("loss", "gan", "cycle", "identity", "cam", "idp")}
    assert want <= tags, want - tags
    assert [e.step for e in acc.Scalars("G_A_idp")] == [1, 2, 3, 4]
    assert any(t.endswith("rho_mean") for t in tags) and acc.Tags()["histograms"]
    with open(os.path.join(log_dir, "losses.jsonl")) as fh:
        assert [json.loads(line)["counter"] for line in fh] == [1, 2, 3, 4]


def _old_loop_state(state: dict) -> dict:
    """A state file as the earlier Morph loop wrote it: its keys only (no world_size or run id, no seed in
    the config)."""
    keys = ("kind", "morph_config", "config", "counter", "epoch", "batch_id", "loader_A", "loader_B",
            "past_g_loss", "G_optim", "D_optim", "rng", "z_rng", "format", "step")
    old = {k: state[k] for k in keys}
    old["config"] = {k: v for k, v in state["config"].items() if k != "seed"}
    return old


def test_checkpoint_of_the_earlier_morph_loop_resumes_exactly(data, tmp_path):
    """A run resumed from a state file with the earlier loop's keys equals an uninterrupted run,
    bit for bit (the data order continues from the stored loader positions, as before)."""
    from morph.train import train
    full_root, part_root = str(tmp_path / "full"), str(tmp_path / "part")

    def cfg(root, epoch):
        return opt.config_from(dataset="demo", epoch=epoch, iteration=2, print_freq=1000, save_freq=1000,
                               decay_flag=False, augment_flag=False, morph_config="C",
                               **dict(zip(["checkpoint_dir", "result_dir", "log_dir", "sample_dir"], _dirs(root)[1::2])),
                               **NET)
    full = train(cfg(full_root, 2), seed=5, base=data, log=lambda m: None)
    train(cfg(part_root, 1), seed=5, base=data, log=lambda m: None)
    folder = _folder(part_root).checkpoint
    step, _, state = ckpt.find_latest(folder)
    path = os.path.join(folder, f"MorphUGATIT_C.model-{step}.state.pt")
    torch.save(_old_loop_state(state), path)
    assert "world_size" not in ckpt.load_state_file(path)
    msgs = []
    resumed = train(cfg(part_root, 2), seed=5, base=data, log=msgs.append)
    assert any("Success to read MorphUGATIT_C.model-3" in m for m in msgs), msgs
    assert [r["counter"] for r in resumed["history"]] == [3, 4]
    assert resumed["history"] == full["history"][2:]
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k


def test_config_A_trains_as_the_port(data, tmp_path, monkeypatch):
    """Config A through MorphTrainer = the port's train() with the same flags and seed: the same
    weights, bit for bit, after 3 iterations (and the same losses on the way)."""
    from morph.train import train as morph_train
    from torch_port.train import train as port_train
    monkeypatch.chdir(data)  # the port reads dataset/<name>/ from the working directory
    base = dict(dataset="demo", epoch=1, iteration=3, print_freq=1000, save_freq=1000, decay_flag=False,
                augment_flag=False, **NET)
    dirs = {k: str(tmp_path / k) for k in ("checkpoint_dir", "result_dir", "log_dir", "sample_dir")}
    port = port_train(opt.config_from(base, **dirs), torch.device("cpu"), seed=2)
    morph = morph_train(opt.config_from(base, morph_config="A", **dirs), seed=2, log=lambda m: None)
    assert [(r["d_loss"], r["g_loss"]) for r in port["steps"]] == [(r["d_loss"], r["g_loss"]) for r in morph["history"]]
    ps, ms = port["model"].state_dict(), morph["model"].state_dict()
    assert ps.keys() == ms.keys()
    for k in ps:
        assert torch.equal(ps[k], ms[k]), k


def test_loss_log_has_one_line_per_step_after_a_kill(data, tmp_path):
    """losses.jsonl after a run killed past its last checkpoint (here: the newest checkpoint
    removed, and a line cut mid-write appended): the resumed run cuts the log back to the
    checkpoint's steps and writes the rest once, so the counters run 1..N without a gap or a
    repeat; a save flushes the log first (the lines of every saved step are on disk). TensorBoard
    too shows each step once (the resumed run's events replace the killed run's)."""
    from morph.train import train
    root = str(tmp_path / "run")

    def cfg(epoch):
        return opt.config_from(dataset="demo", epoch=epoch, iteration=2, print_freq=1000, save_freq=1000,
                               decay_flag=False, augment_flag=False, morph_config="C",
                               **dict(zip(["checkpoint_dir", "result_dir", "log_dir", "sample_dir"], _dirs(root)[1::2])),
                               **NET)
    train(cfg(2), seed=5, base=data, log=lambda m: None)  # checkpoints at counters 3 and 5
    folder, log = _folder(root).checkpoint, os.path.join(_folder(root).log, "losses.jsonl")
    for f in glob.glob(os.path.join(folder, "MorphUGATIT_C.model-5.*")):
        os.remove(f)  # as if killed after step 4, before its checkpoint
    with open(log, "a") as fh:
        fh.write('{"counter": 5, "d_lo')  # a line cut mid-write
    train(cfg(2), seed=5, base=data, log=lambda m: None)  # resumes at counter 3
    with open(log) as fh:
        assert [json.loads(line)["counter"] for line in fh] == [1, 2, 3, 4]
    # and TensorBoard shows each step once: the resumed run's event file hides the killed run's steps >= 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(_folder(root).log, size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("Discriminator_loss")] == [1, 2, 3, 4]

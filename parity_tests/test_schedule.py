"""The port's training schedule against the official `UGATIT.train` loop, for a seeded random
table of (epoch, iteration, decay_flag, decay_epoch, n_critic, save_freq, print_freq, resume
point): the learning rate of every D / G run, the counter, the (epoch, idx) of each progress line,
the sample names, the checkpoint counters saved and the checkpoints left (tf.train.Saver's
max_to_keep 5), fresh and resumed from an official TF checkpoint at any counter.

`official_loop` is the official loop written out here from UGATIT.train (OFFICIAL_SEMANTICS.md):
its quirks are the truth - the counter starts at 1, so a resume at counter c starts at epoch
int(c / iteration), batch c - epoch * iteration (one batch after the one the checkpoint's run did
last); a save at `idx + 1 == iteration` and the epoch-end save write the same checkpoint twice.
The one documented difference: a resumed run whose first steps are D-only (n_critic > 1) has no
batch for a sample due before its first G step (the official loop stops on a NameError; the port
skips that sample, README "Command lines").

The port's D and G steps are replaced by recording stubs (the schedule, not the model, is under
test: the networks' steps have their own parity tests), so a case takes about a second."""
from __future__ import annotations

import os
import random
import re
import shutil

import pytest
import torch

import weights_convert as wc
from ugatit_common import options as opt

MAX_TO_KEEP = 5  # tf.train.Saver's default, which the official code keeps (and the port's --keep_checkpoints)
BASE = dict(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False, lr=3e-4)


def official_loop(cfg: dict, checkpoint_counter: int | None = None) -> dict:
    """The events of the official UGATIT.train for `cfg`, fresh or restored at `checkpoint_counter`:
    "steps" [(D|G, counter, lr)], "lines" [(epoch, idx)], "samples" [file names], "saves"
    [counters, in order, a repeated one once], "kept" (the counters whose files max_to_keep leaves)."""
    E, I = cfg["epoch"], cfg["iteration"]
    if checkpoint_counter is not None:  # the official `load` succeeded
        start_epoch = int(checkpoint_counter / I)
        start_batch_id = checkpoint_counter - start_epoch * I
        counter = checkpoint_counter
    else:
        start_epoch, start_batch_id, counter = 0, 0, 1
    steps, lines, samples, saves = [], [], [], []
    lr = cfg["lr"]
    had_g = False
    for epoch in range(start_epoch, E):
        if cfg["decay_flag"]:
            lr = cfg["lr"] if epoch < cfg["decay_epoch"] else cfg["lr"] * (E - epoch) / (E - cfg["decay_epoch"])
        for idx in range(start_batch_id, I):
            steps.append(("D", counter, lr))
            if (counter - 1) % cfg["n_critic"] == 0:
                steps.append(("G", counter, lr))
                had_g = True
            counter += 1
            lines.append((epoch, idx))
            if (idx + 1) % cfg["print_freq"] == 0 and had_g:  # (no G run yet: the official NameError)
                samples += [f"real_A_{epoch:03d}_{idx + 1:05d}.png", f"fake_B_{epoch:03d}_{idx + 1:05d}.png"]
            if (idx + 1) % cfg["save_freq"] == 0:
                saves.append(counter)
        start_batch_id = 0
        saves.append(counter)
    distinct = []  # Saver.save of a path it saved before moves it to the end of its list, once
    for c in saves:
        if c in distinct:
            distinct.remove(c)
        distinct.append(c)
    return {"steps": steps, "lines": lines, "samples": samples, "saves": list(dict.fromkeys(saves)),
            "kept": sorted(distinct[-MAX_TO_KEEP:])}


def _case(rng: random.Random) -> tuple[dict, int | None]:
    epoch, iteration = rng.randint(1, 4), rng.randint(1, 5)
    total = epoch * iteration
    cfg = dict(epoch=epoch, iteration=iteration, decay_flag=rng.random() < 0.7,
               decay_epoch=rng.randint(0, epoch + 1), n_critic=rng.choice([1, 1, 2, 3]),
               save_freq=rng.randint(1, 7), print_freq=rng.randint(1, 7))
    resume = None if rng.random() < 0.3 else rng.randint(1, total + 2)
    return cfg, resume


CASES = [_case(random.Random(seed)) for seed in range(24)]
CASES += [  # the corners: the epoch-end save coinciding with save_freq; decay from epoch 0; a resume at
    # the last counter (nothing to train) and one past it; n_critic 3 resumed mid-cycle with a sample due at once
    (dict(epoch=3, iteration=2, decay_flag=True, decay_epoch=0, n_critic=1, save_freq=2, print_freq=1), None),
    (dict(epoch=2, iteration=3, decay_flag=True, decay_epoch=1, n_critic=1, save_freq=1, print_freq=2), 7),
    (dict(epoch=2, iteration=3, decay_flag=True, decay_epoch=1, n_critic=1, save_freq=1, print_freq=2), 9),
    (dict(epoch=3, iteration=4, decay_flag=True, decay_epoch=2, n_critic=3, save_freq=5, print_freq=1), 6),
]


def _ids(case):
    cfg, resume = case
    return "-".join(f"{k}{v}" for k, v in cfg.items()) + f"-resume{resume}"


@pytest.fixture(scope="module")
def tf_checkpoint(tmp_path_factory):
    """An official-format TF checkpoint (weights, Adam slots and powers) of the BASE model:
    `python weights_convert.py torch2tf` of a port checkpoint (no .meta: as without TensorFlow).
    Each case copies its .index / .data under the counter it resumes at (the official `load`
    reads the counter from the file name)."""
    from torch_port import checkpoint as ck
    from torch_port.model import build_ugatit
    root = tmp_path_factory.mktemp("schedule_tf")
    cfg = opt.config_from(BASE)
    model = build_ugatit(cfg)
    model.make_optimizers(cfg["lr"])
    state = {"counter": 1, "epoch": 0, "batch_id": 0, "loader_A": 0, "loader_B": 0, "past_g_loss": -1.0,
             "G_optim": model.G_optim.state_dict(), "D_optim": model.D_optim.state_dict(), "rng": ck.rng_state(),
             "config": ck.plain_config(cfg), "world_size": 1, "run": "schedule"}
    ck.save(str(root / "port"), "UGATIT_light", 1, model, state)
    with pytest.MonkeyPatch.context() as mp:  # (module scope: before conftest's per-test patch of the same)
        mp.setattr(wc, "_meta_builder", lambda: (None, "TensorFlow not installed"))
        assert wc.main(["torch2tf", str(root / "port"), str(root / "tf" / "UGATIT_light.model-1")]) == 0
    return str(root / "tf")


def _place_tf_checkpoint(src: str, folder: str, counter: int) -> None:
    os.makedirs(folder)
    for ext in (".index", ".data-00000-of-00001"):
        shutil.copy(os.path.join(src, "UGATIT_light.model-1" + ext), os.path.join(folder, f"UGATIT_light.model-{counter}{ext}"))
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "UGATIT_light.model-{counter}"\n')


def port_loop(cfg: dict, root: str, monkeypatch) -> dict:
    """The port's Trainer on `cfg` with recording D / G steps: the same events as official_loop."""
    from torch_port import checkpoint as ck
    from torch_port import train as tr
    steps, lines, samples, saves = [], [], [], []

    def save(folder, prefix, step, model, state, keep=5):
        saves.append(step)
        return real_save(folder, prefix, step, model, state, keep)

    real_save = ck.save
    monkeypatch.setattr(ck, "save", save)
    monkeypatch.setattr(tr, "save_grid", lambda arrays, path, ncols=1: samples.append(os.path.basename(path)))

    class Recording(tr.Trainer):
        def wrap_steps(self, d_step, g_step):
            def d(a, b, lr, draws=None):
                steps.append(("D", lr))
                return {"Discriminator_loss": torch.tensor(0.25)}

            def g(a, b, lr):
                steps.append(("G", lr))
                return {"Generator_loss": torch.tensor(0.5), "fake_A": b, "fake_B": a}
            return d, g

    def log(msg, *a, **k):
        m = re.match(r"Epoch: \[ *(\d+)\] \[ *(\d+)/ *(\d+)\]", str(msg))
        if m:
            lines.append((int(m.group(1)), int(m.group(2))))

    out = Recording(cfg, "cpu", seed=1, base=root, log=log, cuda_graphs=False).run()
    # the counters of the steps: each D step is one iteration, counted from the run's first counter
    first = out["counter"] - len([s for s in steps if s[0] == "D"])
    numbered, c = [], first - 1
    for kind, lr in steps:
        c += kind == "D"
        numbered.append((kind, c, lr))
    folder = opt.run_paths(cfg).checkpoint
    kept = sorted(int(m.group(1)) for n in os.listdir(folder)
                  for m in [re.fullmatch(r"UGATIT_light\.model-(\d+)\.safetensors", n)] if m)
    return {"steps": numbered, "lines": lines, "samples": [s for s in samples if not s.startswith("sample_")],
            "saves": saves, "kept": kept, "counter": out["counter"]}


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_the_ports_schedule_is_the_official_loops(case, tmp_path, monkeypatch, tf_checkpoint):
    from ugatit_common.demo_data import make_demo_dataset
    flags, resume = case
    make_demo_dataset(str(tmp_path), "t", 32, n_train=3, n_test=1)
    cfg = opt.validate(opt.config_from(BASE, **flags, checkpoint_dir=str(tmp_path / "ck"),
                                       result_dir=str(tmp_path / "res"), log_dir=str(tmp_path / "logs"),
                                       sample_dir=str(tmp_path / "samples")))
    if resume is not None:
        _place_tf_checkpoint(tf_checkpoint, opt.run_paths(cfg).checkpoint, resume)
    want = official_loop(cfg, resume)
    got = port_loop(cfg, str(tmp_path), monkeypatch)
    assert got["steps"] == want["steps"]
    assert got["lines"] == want["lines"]
    assert got["samples"] == want["samples"]
    assert got["saves"] == want["saves"]
    # the files left: the newest MAX_TO_KEEP of this run (the TF checkpoint resumed from is not this run's)
    assert got["kept"] == want["kept"]
    if resume is not None:
        assert os.path.isfile(os.path.join(opt.run_paths(cfg).checkpoint, f"UGATIT_light.model-{resume}.index"))


def test_official_loop_is_the_official_code_on_known_cases():
    """The transcription itself, on cases worked out by hand from UGATIT.train: a fresh run of 2
    epochs x 3 iterations saves at counters 4 and 7 (epoch ends; save_freq 1000), a resume at
    counter 4 (the end of epoch 0) starts at epoch 1, batch 1, and decay from epoch 1 of 2 halves... 
    no: lr * (2 - 1) / (2 - 1) = lr."""
    cfg = opt.config_from(BASE, epoch=2, iteration=3, decay_flag=True, decay_epoch=1, n_critic=2, save_freq=1000,
                          print_freq=2)
    fresh = official_loop(cfg)
    assert fresh["saves"] == [4, 7] and fresh["lines"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [s[:2] for s in fresh["steps"] if s[0] == "G"] == [("G", 1), ("G", 3), ("G", 5)]
    assert fresh["samples"] == ["real_A_000_00002.png", "fake_B_000_00002.png",
                                "real_A_001_00002.png", "fake_B_001_00002.png"]
    resumed = official_loop(cfg, 4)
    assert resumed["lines"] == [(1, 1), (1, 2)] and resumed["saves"] == [6]
    assert [s[:2] for s in resumed["steps"]] == [("D", 4), ("D", 5), ("G", 5)]
    assert resumed["samples"] == []  # idx 1 of epoch 1 is due, but no G run yet (the official NameError)
    cfg3 = opt.config_from(BASE, epoch=4, iteration=1, decay_flag=True, decay_epoch=2, n_critic=1, save_freq=1,
                           print_freq=1000, lr=1.0)
    assert [s[2] for s in official_loop(cfg3)["steps"] if s[0] == "D"] == [1.0, 1.0, 1.0, 0.5]


@pytest.mark.tf
@pytest.mark.slow  # a TF train graph (1-4 minutes on 2 cores)
def test_tf_references_schedule_is_the_official_loops(tmp_path, monkeypatch, capsys, tf_checkpoint):
    """tf_reference's own loop (its TF session, not the port's) on one case: n_critic 2, a save
    every 2 batches and a sample every batch over 2 epochs of 3; resumed at counter 2 (epoch 0,
    batch 2, a D-only first step with a sample due: skipped where the official loop stops on a
    NameError)."""
    from tf_reference import train as phases
    from ugatit_common.demo_data import make_demo_dataset
    resume = 2
    make_demo_dataset(str(tmp_path), "t", 32, n_train=3, n_test=1)
    monkeypatch.chdir(tmp_path)
    cfg = opt.validate(opt.config_from(BASE, epoch=2, iteration=3, decay_flag=True, decay_epoch=1, n_critic=2,
                                       save_freq=2, print_freq=1, checkpoint_dir="ck", result_dir="res",
                                       log_dir="logs", sample_dir="samples"))
    paths = opt.run_paths(cfg)
    _place_tf_checkpoint(tf_checkpoint, paths.checkpoint, resume)
    saves = []
    real_save = phases.save

    def save(sess, saver, cfg_, folder, step, owner):
        saves.append(step)
        return real_save(sess, saver, cfg_, folder, step, owner)
    monkeypatch.setattr(phases, "save", save)
    capsys.readouterr()
    phases.train(cfg)
    out = capsys.readouterr().out
    want = official_loop(cfg, resume)
    lines = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"Epoch: \[ *(\d+)\] \[ *(\d+)/ *\d+\]", out)]
    assert lines == want["lines"]
    assert sorted(os.listdir(paths.sample)) == sorted(want["samples"])
    assert list(dict.fromkeys(saves)) == want["saves"]
    kept = sorted(int(m.group(1)) for n in os.listdir(paths.checkpoint)
                  for m in [re.fullmatch(r"UGATIT_light\.model-(\d+)\.index", n)] if m)
    assert kept == sorted(set(want["kept"]) | {resume})

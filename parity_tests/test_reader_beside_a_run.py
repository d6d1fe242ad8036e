"""A reader of a checkpoint folder that a training run is writing (README "Checkpoint policy": the
test phase only reads and needs no lock): the run may save a newer checkpoint and prune the one the
reader listed between the reader's listing and its load. The reader then looks again and uses the
newer one - it never calls the folder "holds checkpoints but none can be used", nor names the
pruned checkpoint unreadable.

The race is reproduced deterministically: the reader's own load is wrapped so that, right before
it opens the listed checkpoint, the "training run" publishes the next one and removes the listed
one (what a save with `--keep_checkpoints 1` does); no sleeps. Tiny models (light, 32 px, ch 2)."""
from __future__ import annotations

import os
import shutil

import pytest

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from parity_tests.test_nothing_lost import PREFIX, TINY, ckdir, make_data, port, train_args
from torch_port import checkpoint as ckpt
from ugatit_common import checkpoint_policy as policy


def _fake_torch_checkpoint(folder, step, text):
    for suffix in (".safetensors", ".state.pt"):
        with open(os.path.join(folder, f"{PREFIX}.model-{step}{suffix}"), "w") as fh:
            fh.write(text)


def _read(f):
    with open(f.base + ".safetensors") as fh:
        text = fh.read()
    if text == "damaged":
        raise ValueError("not a safetensors file")
    return text


def _saving_then_pruning(folder, listed, newer, text):
    """A load for policy.choose that, before it reads the checkpoint `listed`, lets the "training
    run" save checkpoint `newer` and prune `listed` (once), then reads as `_read` does."""
    calls = []

    def load(f):
        calls.append(f.step)
        if f.step == listed and calls.count(listed) == 1:
            _fake_torch_checkpoint(folder, newer, text)
            for suffix in (".state.pt", ".safetensors"):  # the prune's order (policy.prune)
                os.remove(os.path.join(folder, f"{PREFIX}.model-{listed}{suffix}"))
        return _read(f)
    return load, calls


@pytest.mark.parametrize("need", ["weights", "train"])
def test_choose_looks_again_when_the_listed_checkpoint_is_pruned_while_read(tmp_path, need):
    folder = str(tmp_path)
    _fake_torch_checkpoint(folder, 5, "five")
    load, calls = _saving_then_pruning(folder, 5, 6, "six")
    said = []
    found, content = policy.choose(folder, load, need, log=said.append)
    assert (found.step, content) == (6, "six"), (found, content, said)
    assert said == [], said  # the pruned checkpoint is not "unusable"
    assert calls == [5, 6]


def test_a_damaged_checkpoint_is_still_named_and_a_folder_that_keeps_vanishing_does_not_hang(tmp_path):
    folder = str(tmp_path)
    _fake_torch_checkpoint(folder, 4, "four")
    _fake_torch_checkpoint(folder, 5, "damaged")  # present but unreadable: not a race, said as before
    said = []
    found, content = policy.choose(folder, lambda f: _read(f), "weights", log=said.append)
    assert (found.step, content) == (4, "four")
    assert len(said) == 2 and "model-5" in said[0] and "unusable" in said[0], said

    # every load finds its checkpoint pruned and a newer one saved: the retries are bounded, then
    # the folder's state at the last look is said (exit 2), never an endless loop
    step = [10]

    def always_pruned(f):
        os.remove(f.base + ".safetensors")
        step[0] += 1
        _fake_torch_checkpoint(folder, step[0], "x")
        raise FileNotFoundError(f.base + ".safetensors")
    for p in os.listdir(folder):
        os.remove(os.path.join(folder, p))
    _fake_torch_checkpoint(folder, 10, "x")
    with pytest.raises(policy.NoUsableCheckpoint):
        policy.choose(folder, always_pruned, "weights", log=lambda line: None)
    assert step[0] == 10 + policy.VANISHED_TRIES


@pytest.fixture
def two_checkpoints(tmp_path, monkeypatch, capsys):
    """A port run folder holding checkpoint 2, and checkpoint 3 of the same run kept aside (the
    save still to come): (folder, aside)."""
    make_data(tmp_path)
    assert port(train_args(2), monkeypatch, tmp_path, capsys)[0] == 0
    folder = ckdir(tmp_path)
    aside = tmp_path / "aside"
    aside.mkdir()
    for suffix in (".safetensors", ".state.pt"):
        shutil.move(os.path.join(folder, f"{PREFIX}.model-3{suffix}"), str(aside))
    return folder, str(aside)


def _save_3_prune_2(folder, aside):
    for suffix in (".safetensors", ".state.pt"):
        shutil.move(os.path.join(aside, f"{PREFIX}.model-3{suffix}"), folder)
    for suffix in (".state.pt", ".safetensors"):
        os.remove(os.path.join(folder, f"{PREFIX}.model-2{suffix}"))


def test_the_test_phase_reads_the_newer_checkpoint_when_its_listed_one_is_pruned(two_checkpoints, tmp_path,
                                                                                monkeypatch, capsys):
    folder, aside = two_checkpoints
    real, loaded = ckpt.load_weights_file, []

    def racing(path):
        if not loaded:
            _save_3_prune_2(folder, aside)
        loaded.append(os.path.basename(path))
        return real(path)
    monkeypatch.setattr(ckpt, "load_weights_file", racing)
    rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)
    assert rc == 0, out + err
    assert loaded[-1] == f"{PREFIX}.model-3.safetensors", loaded
    assert "[!]" not in out + err and "error:" not in out + err, out + err


def test_load_any_of_a_folder_reads_the_newer_checkpoint_when_its_listed_one_is_pruned(two_checkpoints, capsys,
                                                                                      monkeypatch):
    """The exports' reader of a port folder (weights, then the state that records the config)."""
    folder, aside = two_checkpoints
    real, read = ckpt.load_state_file, []

    def racing(path, *a, **k):
        if not read:
            _save_3_prune_2(folder, aside)
        read.append(os.path.basename(path))
        return real(path, *a, **k)
    monkeypatch.setattr(ckpt, "load_state_file", racing)
    capsys.readouterr()
    loaded = ckpt.load_any(folder)
    out = capsys.readouterr()
    assert loaded["step"] == 3 and loaded["kind"] == "torch_port", loaded["step"]
    assert read[-1] == f"{PREFIX}.model-3.state.pt", read
    assert out.out + out.err == "", out  # no "[!] skipping unreadable checkpoint", no "holds no complete checkpoint"


def test_load_any_of_a_folder_looks_again_when_it_meets_a_prune_half_way(two_checkpoints, capsys, monkeypatch):
    """A prune removes a checkpoint's state first, then its weights: met between the two (its
    weights still there, its state gone), the checkpoint is being pruned all the same - looked at
    again, not said to be an unreadable checkpoint."""
    folder, aside = two_checkpoints
    real, read = ckpt.load_state_file, []

    def racing(path, *a, **k):
        if not read:
            for suffix in (".safetensors", ".state.pt"):
                shutil.move(os.path.join(aside, f"{PREFIX}.model-3{suffix}"), folder)
            os.remove(os.path.join(folder, f"{PREFIX}.model-2.state.pt"))  # its weights not yet
        read.append(os.path.basename(path))
        return real(path, *a, **k)
    monkeypatch.setattr(ckpt, "load_state_file", racing)
    capsys.readouterr()
    loaded = ckpt.load_any(folder)
    out = capsys.readouterr()
    assert loaded["step"] == 3 and read[-1] == f"{PREFIX}.model-3.state.pt", (loaded["step"], read)
    assert out.out + out.err == "", out


def test_morph_interpolate_never_reads_the_metadata_of_a_checkpoint_pruned_after_its_weights(tmp_path, monkeypatch,
                                                                                              capsys):
    """Morph's reader took the config from the weights file's metadata after the policy had chosen
    and loaded it: pruned in between, it fell back to the (gone) state file and stopped with
    `error: cannot read state ...`. The metadata now comes with the weights."""
    import morph.train as mt
    from morph.__main__ import main as morph_main
    from parity_tests.test_nothing_lost import MORPH_TINY
    make_data(tmp_path, n_test=1)
    monkeypatch.chdir(tmp_path)
    assert morph_main(["train", "--config", "C"] + MORPH_TINY + ["--iteration", "1", "--epoch", "1"]) == 0
    real, chosen = mt.ckpt.resume_point, []

    def chosen_then_pruned(folder, *a, **k):
        found = real(folder, *a, **k)
        chosen.append(found["step"])
        base = found["found"].base  # the run saves the next checkpoint, then prunes this one
        for suffix in (".safetensors", ".state.pt"):
            shutil.copy(base + suffix, base.replace(f".model-{found['step']}", f".model-{found['step'] + 1}") + suffix)
        for suffix in (".state.pt", ".safetensors"):
            os.remove(base + suffix)
        return found
    monkeypatch.setattr(mt.ckpt, "resume_point", chosen_then_pruned)
    capsys.readouterr()
    rc = morph_main(["interpolate", "--config", "C"] + MORPH_TINY + ["--input", "dataset/t/testA", "--steps", "2",
                                                                      "--result_dir", "out"])
    out = capsys.readouterr()
    assert rc == 0 and len(chosen) == 1, out.out + out.err
    assert "error:" not in out.err and list((tmp_path / "out").rglob("*_strip.png")), out.out + out.err


# -- a reader's recovery of killed writes, beside a live write (atomic.publish_together) ---------------
# Every reader of a folder (inventory: the test phase, the exports, a conversion) first rolls back the
# writes a killed process left half done (atomic.recover_interrupted_writes). It must never take a
# live writer's journal or backups for a dead one's: the save in progress would fail, or lose what
# it puts back on an error.

def test_a_readers_recovery_between_a_writers_journal_open_and_its_lock_leaves_the_write_whole(tmp_path,
                                                                                              monkeypatch):
    """The writer made its journal (`.journal-part`) and was about to flock it when another
    command's recovery found the lock free and removed the file as a dead writer's: the save
    failed with `cannot write None: No such file or directory`."""
    import types

    from ugatit_common import atomic
    folder = str(tmp_path)
    for n in ("a", "b"):
        (tmp_path / n).write_text("old " + n)
    real, recovered = atomic.fcntl, []

    def flock(fd, op):
        if not recovered:  # the writer's first lock: its journal's; another command recovers right now
            recovered.append("recovering")
            recovered.append(atomic.recover_interrupted_writes(folder, log=recovered.append))
        return real.flock(fd, op)
    monkeypatch.setattr(atomic, "fcntl", types.SimpleNamespace(
        flock=flock, LOCK_EX=real.LOCK_EX, LOCK_NB=real.LOCK_NB, LOCK_SH=real.LOCK_SH, LOCK_UN=real.LOCK_UN))
    atomic.write_files_atomic({os.path.join(folder, "a"): b"new a", os.path.join(folder, "b"): b"new b"})
    assert recovered == ["recovering", []]
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"
    assert sorted(os.listdir(folder)) == ["a", "b"]


def test_a_journal_that_cannot_take_its_name_leaves_no_file(tmp_path, monkeypatch):
    """The journal is made as `-new` and renamed to `-part` once locked: a rename that fails (a
    full disk, a quota) is the write's error, with nothing left in the folder - not a `-new`
    file no recovery ever looks at."""
    import errno

    from ugatit_common import atomic
    (tmp_path / "a").write_text("old a")
    real = os.rename

    def rename(src, dst, *a, **k):
        if str(dst).endswith(atomic.JOURNAL + "-part"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        atomic.write_files_atomic({str(tmp_path / "a"): b"new a"})
    assert os.listdir(tmp_path) == ["a"] and (tmp_path / "a").read_text() == "old a"


def test_a_readers_recovery_never_removes_the_backups_of_a_write_that_starts_meanwhile(tmp_path, monkeypatch):
    """Recovery ends by removing backups no live journal is there for. It listed the journals,
    then the backups: a write that made its journal and backup in between lost the backup, so an
    error or kill before its commit could not put the old file back."""
    from ugatit_common import atomic
    folder = str(tmp_path)
    (tmp_path / "a").write_text("old a")
    real, calls, writer = os.listdir, [], {}

    def listdir(path):
        calls.append(path)
        names = real(path)
        if len(calls) == 2:  # between the recovery's listings, a write starts: journal, then backup
            writer["journal"] = atomic._Journal(folder)
            writer["backup"] = f".tmp-{os.getpid()}-{os.urandom(6).hex()}.keep"
            os.link(os.path.join(folder, "a"), os.path.join(folder, writer["backup"]))
        return names
    monkeypatch.setattr(os, "listdir", listdir)
    try:
        atomic.recover_interrupted_writes(folder)
        monkeypatch.setattr(os, "listdir", real)
        assert len(calls) == 3, calls
        assert os.path.exists(os.path.join(folder, writer["backup"])), "the live write's backup was removed"
    finally:
        writer["journal"].close()


def test_torch2tf_of_a_folder_never_converts_half_of_a_checkpoint_being_pruned(two_checkpoints, tmp_path,
                                                                              monkeypatch, capsys):
    """torch2tf read the newest weights, then looked for their .state.pt: a prune in between (state
    first) made it write a weights-only TF checkpoint of the pruned step ('no optimizer state
    written ... TF training cannot resume from it') while a complete newer one was there."""
    import torch_port.to_tf as to_tf
    import weights_convert as wc
    folder, aside = two_checkpoints
    real, read = to_tf.load_weights, []

    def racing(path):
        got = real(path)
        read.append(os.path.basename(path))
        if len(read) == 1:  # the run saves checkpoint 3 and starts pruning 2: its state goes first
            for suffix in (".safetensors", ".state.pt"):
                shutil.move(os.path.join(aside, f"{PREFIX}.model-3{suffix}"), folder)
            os.remove(os.path.join(folder, f"{PREFIX}.model-2.state.pt"))
        return got
    monkeypatch.setattr(to_tf, "load_weights", racing)
    capsys.readouterr()
    out_dir = tmp_path / "tf"
    assert wc.main(["torch2tf", folder, str(out_dir / f"{PREFIX}.model-3")]) == 0
    out = capsys.readouterr()
    assert read == [f"{PREFIX}.model-2.safetensors", f"{PREFIX}.model-3.safetensors"], read
    assert "no optimizer state written" not in out.out + out.err, out.out + out.err
    from ugatit_common.tf_checkpoint.bundle import tensor_info
    written = tensor_info(str(out_dir / f"{PREFIX}.model-3"))
    assert any(k.endswith("/Adam") for k in written), sorted(written)[:5]  # TF training can resume from it


def test_torch2tf_of_a_folder_reads_the_newer_checkpoint_when_its_listed_one_is_pruned(two_checkpoints, tmp_path,
                                                                                      monkeypatch, capsys):
    """The listed checkpoint pruned whole before its weights file is opened (the run saved 3 and
    pruned 2 between torch2tf's look at the folder and its read): the folder is looked at again
    and checkpoint 3 converted - not the OSError of the open, nor "no such file"."""
    import torch_port.to_tf as to_tf
    import weights_convert as wc
    folder, aside = two_checkpoints
    real, read = to_tf.load_weights, []

    def racing(path):
        read.append(os.path.basename(path))
        if len(read) == 1:
            _save_3_prune_2(folder, aside)
        return real(path)  # checkpoint 2's weights file is gone: the open fails (FileNotFoundError)
    monkeypatch.setattr(to_tf, "load_weights", racing)
    capsys.readouterr()
    out_dir = tmp_path / "tf"
    rc = wc.main(["torch2tf", folder, str(out_dir / f"{PREFIX}.model-3")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert read == [f"{PREFIX}.model-2.safetensors", f"{PREFIX}.model-3.safetensors"], read
    from ugatit_common.tf_checkpoint.bundle import tensor_info
    assert any(k.endswith("/Adam") for k in tensor_info(str(out_dir / f"{PREFIX}.model-3")))


def _fake_tf_checkpoint(folder, step, text):
    for suffix in (".index", ".data-00000-of-00001", ".meta"):
        with open(os.path.join(folder, f"{PREFIX}.model-{step}{suffix}"), "w") as fh:
            fh.write(text)


def _name_in_state_file(folder, step):
    with open(os.path.join(folder, "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{PREFIX}.model-{step}"\n')


def test_a_test_phase_looks_again_when_the_checkpoint_its_state_file_names_is_pruned(tmp_path):
    """A test phase restores the TF checkpoint the folder's `checkpoint` file names (older than the
    newest). A TF training in that folder saves a newer one, names it there and prunes the named
    one while the reader loads it: the reader looks again (the file now names the newest) instead
    of calling the named checkpoint unusable and falling back to an older one."""
    folder = str(tmp_path)
    _fake_tf_checkpoint(folder, 3, "three")
    _fake_tf_checkpoint(folder, 5, "five")
    _name_in_state_file(folder, 3)
    calls = []

    def load(f):
        calls.append(f.step)
        if f.step == 3 and calls.count(3) == 1:  # the run saves step 6, names it, prunes step 3
            _fake_tf_checkpoint(folder, 6, "six")
            _name_in_state_file(folder, 6)
            for suffix in (".index", ".data-00000-of-00001", ".meta"):
                os.remove(os.path.join(folder, f"{PREFIX}.model-3{suffix}"))
        with open(f.base + ".index") as fh:
            return fh.read()
    said = []
    found, content = policy.choose(folder, load, "weights", log=said.append)
    assert (found.step, content) == (6, "six") and said == [], (found, content, said)
    assert calls == [3, 6]


def test_choose_keeps_up_with_several_prunes_in_a_row(tmp_path):
    """A run saving often with --keep_checkpoints 1 may prune the listed checkpoint on each of
    several looks in a row: the reader looks again each time (VANISHED_TRIES bounds it, well above
    a handful) and reads the newest."""
    folder = str(tmp_path)
    _fake_torch_checkpoint(folder, 10, "x")
    step = [10]

    def pruned_five_times(f):
        if step[0] < 15:
            for suffix in (".state.pt", ".safetensors"):
                os.remove(f.base + suffix)
            step[0] += 1
            _fake_torch_checkpoint(folder, step[0], "x")
            raise FileNotFoundError(f.base + ".safetensors")
        return _read(f)
    said = []
    found, content = policy.choose(folder, pruned_five_times, "weights", log=said.append)
    assert (found.step, content) == (15, "x") and said == [], (found, said)


def test_a_half_pruned_checkpoint_gone_before_its_turn_is_not_called_unusable(tmp_path, monkeypatch):
    """The listing catches a prune half way (its .state.pt removed, its weights not yet): that
    checkpoint is incomplete, but by its turn its weights are gone too. It is looked at again, not
    named an unusable checkpoint (nor set aside by a training run) for a file missing only then."""
    folder = str(tmp_path)
    _fake_torch_checkpoint(folder, 4, "four")
    _fake_torch_checkpoint(folder, 5, "five")
    os.remove(os.path.join(folder, f"{PREFIX}.model-5.state.pt"))
    real = policy.inventory
    looks = []

    def listing_then_prune_ends(*args, **kw):
        found = real(*args, **kw)
        looks.append([f.step for f in found])
        half = os.path.join(folder, f"{PREFIX}.model-5.safetensors")
        if os.path.exists(half):
            os.remove(half)
        return found
    monkeypatch.setattr(policy, "inventory", listing_then_prune_ends)
    said = []
    found, content = policy.choose(folder, _read, "train", log=said.append)
    assert (found.step, content) == (4, "four") and said == [], (found, said)
    assert looks == [[5, 4], [4]]


def test_a_test_phases_weights_and_their_metadata_come_from_one_checkpoint(tmp_path, monkeypatch):
    """resume_point (need="weights") reads a port checkpoint's weights, then their metadata (the
    config and kind its callers use). Pruned between the two reads, the metadata is gone ({}): the
    folder is looked at again and the newer checkpoint's weights come with its own metadata, never
    the pruned one's weights with none."""
    import numpy as np
    from safetensors.numpy import save_file
    folder = str(tmp_path)

    def save(step, text):
        base = os.path.join(folder, f"{PREFIX}.model-{step}")
        save_file({"w": np.full(1, step, np.float32)}, base + ".safetensors", metadata={"config": text})
        with open(base + ".state.pt", "wb") as fh:
            fh.write(b"x")
    save(5, "five")
    real, calls = policy.safetensors_metadata, []

    def pruned_between(path):
        calls.append(os.path.basename(path))
        if calls == [f"{PREFIX}.model-5.safetensors"]:  # the run saves step 6 and prunes step 5
            save(6, "six")
            for suffix in (".state.pt", ".safetensors"):
                os.remove(os.path.join(folder, f"{PREFIX}.model-5{suffix}"))
        return real(path)
    monkeypatch.setattr(policy, "safetensors_metadata", pruned_between)
    got = ckpt.resume_point(folder, None, "weights", log=lambda line: None)
    assert got["step"] == 6 and got["meta"] == {"config": "six"}, (got["step"], got["meta"], calls)
    assert float(got["weights"]["w"][0]) == 6.0


def test_a_named_checkpoint_that_keeps_vanishing_ends_in_the_newest_usable(tmp_path, monkeypatch):
    """The checkpoint the state file names vanishes while read on every look (retries bounded by
    VANISHED_TRIES): the last look says it is unusable and uses the newest usable checkpoint -
    never an internal Vanished escaping choose."""
    folder = str(tmp_path)
    _fake_tf_checkpoint(folder, 5, "five")
    _name_in_state_file(folder, 3)
    real, looks = policy.inventory, []

    def listing(*args, **kw):  # step 3 is back at each look (saved again)
        looks.append(1)
        _fake_tf_checkpoint(folder, 3, "three")
        return real(*args, **kw)

    def load(f):
        if f.step == 3:
            for suffix in (".index", ".data-00000-of-00001", ".meta"):
                os.remove(os.path.join(folder, f"{PREFIX}.model-3{suffix}"))
            raise FileNotFoundError(f.base + ".index")
        with open(f.base + ".index") as fh:
            return fh.read()
    monkeypatch.setattr(policy, "inventory", listing)
    said = []
    found, content = policy.choose(folder, load, "weights", log=said.append)
    assert (found.step, content) == (5, "five") and len(looks) == policy.VANISHED_TRIES, (found, len(looks))
    assert len(said) == 1 and "which its `checkpoint` file names, is unusable" in said[0], said

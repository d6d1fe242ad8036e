"""Issue 11: nothing lost, nothing silent. Checkpoints, resumes and outputs under the mistakes a
careless user makes (README "Checkpoint policy"): --resume False over an older run, damaged and
mixed checkpoints, colliding outputs, bad images, a full disk, a read-only folder, Ctrl-C, kills
at random moments, nonsense converter input. Tiny models (light, 32 px, ch 2, n_dis 4)."""
from __future__ import annotations

import builtins
import contextlib
import errno
import glob
import hashlib
import importlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pytest
import torch

from parity_tests.conftest import ROOT
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset

TINY = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4",
        "--augment_flag", "False", "--device", "cpu", "--threads", "1"]
CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)
PREFIX = "UGATIT_light"


from parity_tests.test_morph import _one_thread  # noqa: E402,F401 - autouse: one CPU thread per test


def make_data(root, n_train=2, n_test=1):
    make_demo_dataset(str(root), "t", size=32, n_train=n_train, n_test=n_test)
    return os.path.join(str(root), "dataset", "t")


def ckdir(root, cfg=CFG):
    return os.path.join(str(root), "checkpoint", opt.model_dir(cfg))


def resdir(root, cfg=CFG):
    return os.path.join(str(root), "results", opt.model_dir(cfg))


def port(args, monkeypatch, cwd, capsys=None):
    """python -m torch_port in-process: (rc, stdout, stderr)."""
    from torch_port.__main__ import main
    monkeypatch.chdir(cwd)
    if capsys is not None:
        capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr() if capsys is not None else None
    return rc, (out.out if out else ""), (out.err if out else "")


def train_args(it, epoch=1, save_freq=1, *extra):
    return TINY + ["--iteration", str(it), "--epoch", str(epoch), "--save_freq", str(save_freq),
                   "--print_freq", "1000"] + list(extra)


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def digest_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def steps(folder, fw="torch"):
    return sorted(f.step for f in policy.inventory(folder) if f.framework == fw)


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.startswith(("error:", "python -m morph"))]
    assert lines, err
    assert "Traceback" not in err, err
    return lines[-1]


# -- 1. --resume False never deletes or shadows an older run ------------------------------------------

def test_resume_false_moves_the_older_run_aside(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    assert port(train_args(3), monkeypatch, tmp_path, capsys)[0] == 0           # model-2, 3, 4
    for old, new in ((4, 31), (3, 30), (2, 29)):                                 # an "older run" at 29-31
        for sfx in (".safetensors", ".state.pt"):
            os.replace(os.path.join(folder, f"{PREFIX}.model-{old}{sfx}"), os.path.join(folder, f"{PREFIX}.model-{new}{sfx}"))
    old_digests = {n: digest(os.path.join(folder, n)) for n in os.listdir(folder)}
    [events] = glob.glob(os.path.join(str(tmp_path), "logs", "*", "events.out.tfevents.*"))
    old_events = digest(events)
    rc, out, err = port(train_args(4, 1, 1, "--resume", "False", "--keep_checkpoints", "3"), monkeypatch, tmp_path,
                        capsys)
    assert rc == 0, err
    assert "moved to" in out and "previous-run-" in out
    [prev] = glob.glob(os.path.join(folder, "previous-run-*"))
    assert {n: digest(os.path.join(prev, n)) for n in os.listdir(prev)} == old_digests  # nothing lost
    # its TensorBoard events too (the loss log of the port): a run of their own in TensorBoard, not
    # hidden behind the new run's purge marker
    moved = os.path.join(os.path.dirname(events), os.path.basename(prev), os.path.basename(events))
    assert not os.path.exists(events) and digest(moved) == old_events
    assert steps(folder) == [3, 4, 5]                    # the new run's own, pruned to --keep_checkpoints 3
    assert policy.pointer_target(folder) == f"{PREFIX}.model-5.safetensors"
    rc, out, _ = port(train_args(4, 2, 100), monkeypatch, tmp_path, capsys)   # a plain run continues the NEW run
    assert rc == 0 and f"{PREFIX}.model-5" in out and steps(folder)[-1] == 9


def test_pruning_deletes_only_this_runs_older_checkpoints(tmp_path):
    from torch_port import checkpoint as ck
    m = torch.nn.Linear(2, 2)
    folder = str(tmp_path)
    ck.save(folder, PREFIX, 40, m, {"run": "other"}, keep=1)         # another run's, newer than ours
    for s in range(1, 6):
        ck.save(folder, PREFIX, s, m, {"run": "mine"}, keep=2)
    assert steps(folder) == [4, 5, 40]
    # `latest` names model-5: never pruned even with keep=1 and a newer own checkpoint absent
    ck.prune(folder, PREFIX, 1, run="mine")
    assert 5 in steps(folder) and 40 in steps(folder)
    ck.save(folder, PREFIX, 6, m, {"run": "mine"}, keep=1)
    assert steps(folder) == [6, 40]
    ck.save(folder, PREFIX, 7, m, {}, keep=1)                          # no run id: prunes nothing
    assert steps(folder) == [6, 7, 40]


def test_checkpoints_in_a_folder_named_with_glob_characters_are_found_and_pruned(tmp_path):
    """A --checkpoint_dir like 'runs [2020]': its checkpoints are listed (the folder went to glob
    as a pattern: none found, so none pruned and no fallback past a damaged newest)."""
    from torch_port import checkpoint as ck
    m = torch.nn.Linear(2, 2)
    folder = str(tmp_path / "runs [2020]")
    os.makedirs(folder)
    for s in range(1, 5):
        ck.save(folder, PREFIX, s, m, {"run": "mine"}, keep=2)
    assert [s for s, _, _ in ck.complete_checkpoints(folder)] == [3, 4] == steps(folder)


# -- 2. an unreadable checkpoint: fall back and say so, or stop; never from scratch ------------------

def test_damaged_state_test_phase_uses_weights_training_falls_back(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    assert port(train_args(2), monkeypatch, tmp_path, capsys)[0] == 0            # model-2, model-3
    state3 = os.path.join(folder, f"{PREFIX}.model-3.state.pt")
    with open(state3, "r+b") as fh:
        fh.truncate(100)
    w3 = digest(os.path.join(folder, f"{PREFIX}.model-3.safetensors"))
    rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)  # weights only
    assert rc == 0 and f"{PREFIX}.model-3" in out, err
    rc, out, err = port(train_args(2, 2, 100), monkeypatch, tmp_path, capsys)
    assert rc == 0, err
    assert f"{PREFIX}.model-3 (PyTorch)" in out and "unusable" in out and f"{PREFIX}.model-2" in out
    moved = os.path.join(folder, policy.UNUSABLE, f"{PREFIX}.model-3.safetensors")
    assert digest(moved) == w3                                                   # set aside, intact
    assert steps(folder)[-1] == 5 and "Load failed" not in out


def test_only_checkpoint_damaged_stops_with_exit_2(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    assert port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0   # model-2 only
    with open(os.path.join(folder, f"{PREFIX}.model-2.state.pt"), "r+b") as fh:
        fh.truncate(50)
    before = {n: digest(os.path.join(folder, n)) for n in os.listdir(folder)}
    rc, out, err = port(train_args(1, 2, 100), monkeypatch, tmp_path, capsys)
    assert rc == 2 and "none can be used" in one_error_line(err) and "--resume False" in err
    assert {n: digest(os.path.join(folder, n)) for n in os.listdir(folder)} == before  # untouched
    # weights truncated too: the test phase cannot translate either, and says so
    with open(os.path.join(folder, f"{PREFIX}.model-2.safetensors"), "r+b") as fh:
        fh.truncate(50)
    rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)
    assert rc == 2 and "none can be used" in one_error_line(err)
    # no checkpoint at all: the test phase refuses instead of translating with untrained weights
    shutil.rmtree(folder)
    rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)
    assert rc == 2 and "no checkpoint" in one_error_line(err)
    assert not os.path.exists(resdir(tmp_path))


def test_morph_train_falls_back_and_interpolate_reads_weights_only(tmp_path, capsys):
    from morph.train import load_morph, morph_paths, train
    make_data(tmp_path)
    cfg = opt.config_from(dataset="t", epoch=1, iteration=2, print_freq=1000, save_freq=1, decay_flag=False,
                          img_size=32, ch=2, n_dis=4, light=True, augment_flag=False, morph_config="C",
                          checkpoint_dir=str(tmp_path / "ck"), result_dir=str(tmp_path / "res"),
                          log_dir=str(tmp_path / "logs"), sample_dir=str(tmp_path / "samples"))
    train(cfg, base=str(tmp_path), log=lambda m: None)
    folder = morph_paths(opt.config_from(cfg, morph_config="C")).checkpoint
    with open(os.path.join(folder, "MorphUGATIT_C.model-3.state.pt"), "r+b") as fh:
        fh.truncate(64)
    model, state = load_morph(folder)                       # weights + config from the weights file
    assert state["morph_config"] == "C"
    msgs = []
    out = train(dict(cfg, epoch=2), base=str(tmp_path), log=msgs.append)
    text = "\n".join(msgs)
    assert "MorphUGATIT_C.model-3 (PyTorch)" in text and "unusable" in text and out["counter"] == 5


# -- 3. mixed folders: the newest checkpoint wins, whichever framework wrote it ----------------------

def test_mixed_folder_newest_wins_and_missing_index_falls_back(tmp_path, monkeypatch, capsys):
    import weights_convert as wc
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    assert port(train_args(2, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0   # torch model-3
    # a TF checkpoint at step 8 in the same folder (TF format, with its Adam state)
    assert wc.main(["torch2tf", os.path.join(folder, f"{PREFIX}.model-3.safetensors"),
                    os.path.join(folder, f"{PREFIX}.model-8"), "--continue_run"]) == 0
    rc, out, err = port(train_args(2, 5, 100), monkeypatch, tmp_path, capsys)
    assert rc == 0, err
    assert "TensorFlow checkpoint UGATIT_light.model-8" in out and steps(folder)[-1] == 10  # 8 + 2
    # torch model-10 is now newest: a plain run resumes it, not the TF one
    rc, out, _ = port(train_args(2, 6, 100), monkeypatch, tmp_path, capsys)
    assert rc == 0 and f"{PREFIX}.model-10 (torch)" in out
    # a newest TF checkpoint without its .index: named, set aside, the next newest is used
    assert wc.main(["torch2tf", os.path.join(folder, f"{PREFIX}.model-12.safetensors"),
                    os.path.join(folder, f"{PREFIX}.model-20"), "--continue_run"]) == 0
    os.remove(os.path.join(folder, f"{PREFIX}.model-20.index"))
    rc, out, err = port(train_args(2, 7, 100), monkeypatch, tmp_path, capsys)
    assert rc == 0 and "model-20 (TensorFlow)" in out and "unusable" in out and f"{PREFIX}.model-12" in out
    assert os.path.isfile(os.path.join(folder, policy.UNUSABLE, f"{PREFIX}.model-20.data-00000-of-00001"))


def test_corrupt_tf_checkpoint_is_one_error_line(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    os.makedirs(folder)
    for name in (f"{PREFIX}.model-5.index", f"{PREFIX}.model-5.data-00000-of-00001"):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(b"garbage" * 10)
    with open(os.path.join(folder, "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{PREFIX}.model-5"\n')
    for phase in ("train", "test"):
        rc, out, err = port(train_args(1) + ["--phase", phase], monkeypatch, tmp_path, capsys)
        assert rc == 2 and "model-5 (TensorFlow)" in one_error_line(err), err


# -- 4. outputs: no collisions, never over an input, a failed run keeps the page -------------------

def test_outputs_never_collide_or_overwrite_inputs_and_failed_run_keeps_page(tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path)
    shutil.copy(os.path.join(data, "testA", "A_test_0000.png"), os.path.join(data, "testB", "same.png"))
    shutil.copy(os.path.join(data, "testA", "A_test_0000.png"), os.path.join(data, "testA", "same.png"))
    assert port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0
    rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)
    assert rc == 0, err
    res = resdir(tmp_path)
    assert os.path.isfile(os.path.join(res, "a2b", "same.png")) and os.path.isfile(os.path.join(res, "b2a", "same.png"))
    page = digest_bytes(os.path.join(res, "index.html")).decode()
    assert page.count("<tr><td>") == 4 and "a2b/same.png" in page and "b2a/same.png" in page
    # an --input inside the results folder is never overwritten
    inp = os.path.join(res, "a2b", "same.png")
    before = digest(inp)
    rc, out, err = port(TINY + ["--phase", "test", "--input", os.path.join(res, "a2b"), "--direction", "a2b"],
                        monkeypatch, tmp_path, capsys)
    assert rc == 0 and digest(inp) == before
    assert os.path.isfile(os.path.join(res, "a2b", "same_1.png"))
    # a failed run (no readable image) leaves the previous page as it was
    page_before = digest(os.path.join(res, "index.html"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rc, out, err = port(TINY + ["--phase", "test", "--input", str(bad)], monkeypatch, tmp_path, capsys)
    assert rc == 2 and digest(os.path.join(res, "index.html")) == page_before


def test_temp_files_of_killed_saves_are_swept(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    os.makedirs(folder)
    for n in (".tmp-abc123.safetensors", ".tmp-x.pt", "checkpoint.tempstate123"):
        (open(os.path.join(folder, n), "wb")).close()
    rc, out, _ = port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)
    assert rc == 0 and "temp file" in out
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-") or "tempstate" in n]


# -- 6. bad images: the same rule everywhere; batches as TF's ---------------------------------------

def _truncated_jpeg(path):
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    with open(path, "wb") as fh:
        fh.write(buf.tobytes()[: len(buf) // 2])


def test_train_image_rule_is_shared(tmp_path):
    from torch_port import data as tdata
    from ugatit_common.images import readable_train_images
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    bmp = tmp_path / "x.bmp"
    cv2.imwrite(str(bmp), np.zeros((8, 8, 3), np.uint8))
    trunc = tmp_path / "t.jpg"
    _truncated_jpeg(trunc)
    warned = []
    files = [str(good), str(bmp), str(trunc)]
    assert readable_train_images(files, warned.append) == [str(good)]
    assert len(warned) == 2 and "x.bmp" in warned[0] and "t.jpg" in warned[1]
    with pytest.warns(RuntimeWarning) as record:
        assert tdata.ImageFolderDataset(files, 8, False).files == [str(good)]
    said = [str(w.message) for w in record]  # one warning per skipped file, the same files as above
    assert len(said) == 2 and "x.bmp" in said[0] and "t.jpg" in said[1]


def test_the_start_up_check_on_several_threads_equals_the_check_file_by_file(tmp_path, monkeypatch, capfd):
    """A run checks its whole data set on several threads (ugatit_common.images.train_image_reasons):
    the same reason for every file, in the files' order, as check_train_image one by one; no
    OpenCV log line for the damaged files; OpenCV's log level and the warnings filters as before."""
    import warnings
    from ugatit_common import images
    rng = np.random.default_rng(1)
    files = []
    for i in range(24):  # pictures, damaged JPEGs, files of other formats and empty ones, interleaved
        path = tmp_path / f"f{i:02d}"
        kind = i % 4
        if kind == 0:
            path = path.with_suffix(".png")
            cv2.imwrite(str(path), rng.integers(0, 256, (30 + i, 20, 3), dtype=np.uint8))
        elif kind == 1:
            path = path.with_suffix(".jpg")
            _truncated_jpeg(path)
        elif kind == 2:
            path = path.with_suffix(".bmp")
            cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
        else:
            path = path.with_suffix(".jpg")
            path.write_bytes(b"")
        files.append(str(path))

    def one_by_one():
        out = []
        for f in files:
            try:
                images.check_train_image(f)
                out.append(None)
            except images.ImageReadError as e:
                out.append(e.reason)
        return out
    expected = one_by_one()
    assert expected.count(None) == 6 and len(set(expected)) == 4
    monkeypatch.setattr(images, "CHECK_THREADS", 4)
    monkeypatch.setattr(images, "usable_cores", lambda: 4)
    level, filters = cv2.utils.logging.getLogLevel(), list(warnings.filters)
    capfd.readouterr()
    for _ in range(3):
        assert images.train_image_reasons(files) == expected
    assert capfd.readouterr().err == ""
    assert cv2.utils.logging.getLogLevel() == level and warnings.filters == filters


def test_decoder_threads_follow_the_cores_this_process_may_use(monkeypatch):
    """The training-image check and `--batch`'s decoders size their threads by the process's CPU
    affinity (a container's cpuset, `taskset`), not by the machine's cores: one allowed core of 64
    means no thread pool at all."""
    import concurrent.futures
    from torch_port import batch_translate
    from ugatit_common import cores, images
    monkeypatch.setattr(cores, "PROC_CGROUP", "/no-such-proc/cgroup")  # no CPU quota here
    monkeypatch.setattr(cores.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert cores.usable_cores() == 1 and batch_translate._threads() == 1

    def no_pool(*a, **k):
        raise AssertionError("a thread pool on one allowed core")
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", no_pool)
    missing = ["no-such-a.png", "no-such-b.png"]
    assert images.train_image_reasons(missing) == [images._reason(f) for f in missing] and None not in \
        images.train_image_reasons(missing)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 7}, raising=False)
    assert cores.usable_cores() == 4 and batch_translate._threads() == 4
    monkeypatch.delattr(cores.os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert cores.usable_cores() == 64 and batch_translate._threads() == 8


def _cgroups(tmp_path, proc, files):
    """A fake /proc/self/cgroup and cgroup mount: {relative path: text}."""
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    return str(tmp_path / "fs"), str(tmp_path / "proc")


@pytest.mark.parametrize("proc, files, quota", [
    # cgroup v2 with a cgroup namespace: the container's own limit at the mount's root
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),                        # --cpus 1.5: 2 threads
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # v2 without a namespace: the tightest of the process's cgroup and its ancestors
    ("0::/k8s/pod/ctr\n", {"k8s/cpu.max": "800000 100000", "k8s/pod/cpu.max": "300000 100000",
                          "k8s/pod/ctr/cpu.max": "max 100000"}, 3),
    # v2 path not mounted here (a container seeing its own cgroup at the root)
    ("0::/docker/abc\n", {"cpu.max": "100000 100000"}, 1),
    # cgroup v1, the cpu controller joined with cpuacct, and alone
    ("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000",
                                                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 4),
    ("1:cpu:/\n2:cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("1:cpu:/a\n", {"cpu/a/cpu.cfs_quota_us": "50000", "cpu/a/cpu.cfs_period_us": "100000"}, 1),
    # a controller named like cpu (cpuset) is not the cpu controller; unreadable values are no limit
    ("3:cpuset:/\n", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("0::/\n", {"cpu.max": "garbage"}, None),
    ("0::/\n", {"cpu.max": "0 100000"}, None),
    ("", {}, None),
    # a line not of the form id:controllers:path is passed over, not the end of the reading
    ("garbage\n0::/\n", {"cpu.max": "100000 100000"}, 1),
])
def test_a_cpu_quota_without_a_cpuset_is_seen(tmp_path, proc, files, quota):
    """`docker --cpus` / a Kubernetes CPU limit sets a cgroup quota, not an affinity: the decoder
    threads follow the tightest quota on the process's cgroup path, rounded up to whole cores."""
    from ugatit_common import cores
    assert cores.cgroup_cpu_quota(*_cgroups(tmp_path, proc, files)) == quota


def test_decoder_threads_follow_the_lower_of_affinity_and_quota(monkeypatch, tmp_path):
    """The quota lowers the affinity's count, never raises it; no cgroup file at all (macOS,
    Windows) leaves the affinity's count."""
    from torch_port import batch_translate
    from ugatit_common import cores
    root, proc = _cgroups(tmp_path, "0::/\n", {"cpu.max": "200000 100000"})
    monkeypatch.setattr(cores, "CGROUP_ROOT", root)
    monkeypatch.setattr(cores, "PROC_CGROUP", proc)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert cores.usable_cores() == 2 and batch_translate._threads() == 2
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert cores.usable_cores() == 1
    monkeypatch.setattr(cores, "PROC_CGROUP", str(tmp_path / "missing"))
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert cores.usable_cores() == 6


@pytest.mark.parametrize("env, shown", [({}, True), ({"WORLD_SIZE": "2", "RANK": "0"}, True),
                                         ({"WORLD_SIZE": "2", "RANK": "1"}, False)])
def test_the_image_checks_progress_bar_is_rank_0s_alone_under_torchrun(monkeypatch, tmp_path, env, shown):
    """Every torchrun rank checks the same data set; on a terminal only rank 0 shows the check's
    progress bar (as it alone prints the warnings and the training bar), not one bar per process."""
    import tqdm as tqdm_module
    from ugatit_common import images
    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(images, "CHECK_THREADS", 2)
    monkeypatch.setattr(images, "usable_cores", lambda: 2)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bars = []
    real = tqdm_module.tqdm

    def recorded(*a, **k):
        bars.append(not k.get("disable"))
        return real(*a, **{**k, "file": io.StringIO()})
    monkeypatch.setattr(tqdm_module, "tqdm", recorded)
    files = [str(tmp_path / f"missing{i}.png") for i in range(3)]
    assert None not in images.train_image_reasons(files)
    assert bars == [shown]


def test_ctrl_c_during_the_threaded_check_puts_the_settings_back_after_the_threads(monkeypatch):
    """Ctrl-C while the data set is checked on several threads: the KeyboardInterrupt reaches the
    caller, files not yet started are dropped, and the warnings filters and OpenCV's log level are
    as before. A check still in flight ends after the Ctrl-C and, like gif_frames, restores the
    filters it found on entering (those train_image_reasons set): they must be put back after the
    threads have ended, not before (a per-file catch_warnings stands in for gif_frames' one)."""
    import _thread
    import warnings
    from ugatit_common import images
    monkeypatch.setattr(images, "CHECK_THREADS", 2)
    monkeypatch.setattr(images, "usable_cores", lambda: 2)
    started = []

    def reason(path):
        started.append(path)
        if path == "first":
            time.sleep(0.2)  # the other thread is inside its catch_warnings by now
            _thread.interrupt_main()  # Ctrl-C, as the main thread waits for this file's result
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            time.sleep(1.0)  # still running when the main thread stops
        return None
    monkeypatch.setattr(images, "_reason", reason)
    level, filters = cv2.utils.logging.getLogLevel(), list(warnings.filters)
    files = ["first"] + [f"f{i}" for i in range(20)]
    # Python's own Ctrl-C handler for the test: interrupt_main() runs whatever SIGINT handler the
    # process has, and an earlier test in the same pytest worker may have left another one (CI: none raised)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            images.train_image_reasons(files)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert len(started) < len(files)  # the files not started were dropped
    assert cv2.utils.logging.getLogLevel() == level
    assert warnings.filters == filters, [f for f in warnings.filters if f not in filters]


def test_decoding_on_several_threads_keeps_opencv_silent_and_puts_its_level_back(monkeypatch):
    """OpenCV's log level is one for the process; the test phase's --batch decodes on a pool of
    threads. A thread that put back the level it found while another still decoded let that one's
    OpenCV log lines (a damaged file's `[ WARN:0@...]`) through, and the later one then put back
    the silent level it had found: OpenCV silent for the rest of the process. Two overlapping
    decodes here (cv2.imdecode stubbed to take its time): each decodes silently, and the level is
    the caller's afterwards."""
    import threading
    from ugatit_common import images
    silent = cv2.utils.logging.LOG_LEVEL_SILENT
    seen = []

    def slow_decode(buf, flags):
        time.sleep(0.3)  # the other thread starts, or ends, meanwhile
        seen.append(cv2.utils.logging.getLogLevel())  # what a damaged file's log line would meet
        return None
    monkeypatch.setattr(images.cv2, "imdecode", slow_decode)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
    try:
        buf = np.zeros(4, np.uint8)
        first = threading.Thread(target=images._imdecode, args=(buf, 0, "first"))
        first.start()
        time.sleep(0.1)
        second = threading.Thread(target=images._imdecode, args=(buf, 0, "second"))
        second.start()
        first.join()
        second.join()
        after = cv2.utils.logging.getLogLevel()
    finally:
        cv2.utils.logging.setLogLevel(level)
    assert seen == [silent, silent] and after == cv2.utils.logging.LOG_LEVEL_WARNING, (seen, after)


def test_batches_span_passes_like_tf(tmp_path):
    from torch_port import data as tdata

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def item(self, i, p):
            return torch.tensor([100 * p + i])

    it = tdata.infinite_loader(Items(), 3, seed=7)
    got = [int(v) for _ in range(5) for v in next(it)]
    stream = [100 * p + int(i) for p in range(3) for i in np.random.default_rng([7, p]).permutation(5)]
    assert got == stream[:15]                       # nothing dropped: batch 2 spans passes 0 and 1
    late = tdata.infinite_loader(Items(), 3, seed=7, start=3)
    assert [int(v) for v in next(late)] == stream[9:12]
    big = tdata.infinite_loader(Items(), 7, seed=7)  # --batch_size > image count, as TF allows
    assert [int(v) for v in next(big)] == stream[:7]


def test_batch_size_over_image_count_and_bad_image_train(tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path)
    _truncated_jpeg(os.path.join(data, "trainA", "broken.jpg"))
    rc, out, err = port(train_args(1, 1, 100, "--batch_size", "3"), monkeypatch, tmp_path, capsys)
    assert rc == 0, err
    assert "skipping unreadable image" in err and "broken.jpg" in err


def test_morph_interpolate_skips_bad_images_and_writes_index(tmp_path, capsys):
    from morph.__main__ import main as morph_main
    from morph.train import train
    data = make_data(tmp_path)
    cfg = opt.config_from(dataset="t", epoch=1, iteration=1, print_freq=1000, save_freq=1000, decay_flag=False,
                          img_size=32, ch=2, n_dis=4, light=True, augment_flag=False, morph_config="C",
                          checkpoint_dir=str(tmp_path / "ck"), result_dir=str(tmp_path / "res"),
                          log_dir=str(tmp_path / "logs"), sample_dir=str(tmp_path / "samples"))
    train(cfg, base=str(tmp_path), log=lambda m: None)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(os.path.join(data, "testA", "A_test_0000.png"), inputs / "a.png")
    shutil.copy(os.path.join(data, "testA", "A_test_0000.png"), inputs / "a.jpg")   # same stem
    (inputs / "b_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out_dir = tmp_path / "out"
    rc = morph_main(["interpolate", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True",
                     "--dataset", "t", "--checkpoint_dir", str(tmp_path / "ck"), "--input", str(inputs),
                     "--steps", "3", "--samples", "1", "--result_dir", str(out_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "b_bad.png" in err
    [res] = glob.glob(str(out_dir / "*"))
    names = sorted(os.listdir(res))
    assert "index.html" in names and "a_strip.png" in names and "a_1_strip.png" in names


# -- 7. one error path: exit 2, one line; full disk; read-only folder; Ctrl-C -----------------------

def test_disk_full_during_save_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    from torch_port import checkpoint as ck
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    real = ck.torch.save
    calls = [0]

    def full_disk(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)
    monkeypatch.setattr(ck.torch, "save", full_disk)
    rc, out, err = port(train_args(3), monkeypatch, tmp_path, capsys)
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line and "stopped at step 2" in line
    assert "last checkpoint: UGATIT_light.model-2" in line and "resume with: python -m torch_port" in line
    assert steps(folder) == [2] and not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    monkeypatch.setattr(ck.torch, "save", real)
    assert port(train_args(3), monkeypatch, tmp_path, capsys)[0] == 0 and steps(folder)[-1] == 4


@pytest.mark.parametrize("where", ["state", "weights", "events", "sample"])
def test_disk_full_line_names_the_file_that_failed(tmp_path, monkeypatch, capsys, where):
    """A full disk during a training run's write said only `error: [Errno 28] No space left on
    device`: a write's OSError carries no file name, so the line named none, with three folders
    (checkpoints, samples, logs) that may lie on three disks. Each write now names its file; a
    checkpoint's (weights: safetensors' own error, not an OSError) included."""
    from safetensors import SafetensorError

    from torch_port import checkpoint as ck
    from tensorboard.summary.writer import record_writer
    make_data(tmp_path)
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() raises it: no file name

    def fail(*a, **k):
        raise enospc
    if where == "state":
        monkeypatch.setattr(ck.torch, "save", fail)
    elif where == "weights":
        import safetensors.torch

        def weights(*a, **k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(safetensors.torch, "save_file", weights)
    elif where == "events":
        monkeypatch.setattr(record_writer.RecordWriter, "flush", fail)
    else:
        real_open = builtins.open

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                raise enospc

        def opener(file, mode="r", *a, **k):
            fh = real_open(file, mode, *a, **k)
            return Full(fh) if "w" in mode and str(file).endswith(".png") else fh
        monkeypatch.setattr(builtins, "open", opener)
    rc, out, err = port(train_args(2, 1, 1, "--print_freq", "1"), monkeypatch, tmp_path, capsys)
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line, line
    named = {"state": ".state.pt", "weights": ".safetensors", "events": "events.out.tfevents.",
             "sample": ".png"}[where]
    assert "cannot write '" in line and named in line.split("cannot write '")[1].split("'")[0], line



@pytest.mark.parametrize("fails", ["write", "flush", "close"])
def test_an_event_file_that_fills_the_disk_later_is_named(fails, tmp_path, monkeypatch):
    """EventWriter names its file in an OSError from any write after it opened (an event, a flush -
    with `sync` before each checkpoint - or the close), not only from its header's (the disk-full
    run above): `[Errno 28] No space left on device` alone names none of a run's three folders."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    from torch_port.events import EventWriter

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    writer = EventWriter(str(tmp_path))
    call = {"write": lambda: writer.add_scalar("loss", 1.0, 1), "flush": lambda: writer.flush(sync=True),
            "close": writer.close}[fails]
    with monkeypatch.context() as m:
        m.setattr(RecordWriter, fails, full)
        with pytest.raises(OSError, match=r"^\[Errno 28\] cannot write '(.*)': No space left on device$") as e:
            call()
    assert e.value.errno == errno.ENOSPC and e.value.path == writer.path
    if fails == "close":
        writer._handle.close()  # (the failed close left the file open)
    else:
        writer.close()

def test_disk_full_inside_torch_save_is_bad_input_not_an_internal_error(tmp_path, monkeypatch, capsys):
    """A disk that fills up while torch.save writes the `.state.pt`: torch's zip writer, closing
    after the failed write, raises `RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos ...` over the OSError, and the run ended `error: internal error (RuntimeError:
    ...)`, exit 1. It is a full disk: one line naming the file, exit 2, resumable. The disk fills
    here after the state file's first 64 KiB (a file object whose writes then fail)."""
    from torch_port import checkpoint as ck
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    real = ck.torch.save

    class FillsUp(io.RawIOBase):
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def writable(self):
            return True

        def write(self, data):
            self.n += len(data)
            if self.n > 65536:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

    calls = [0]

    def save(obj, f, *a, **k):
        calls[0] += 1
        return real(obj, FillsUp(f) if calls[0] == 2 else f, *a, **k)
    monkeypatch.setattr(ck.torch, "save", save)
    rc, out, err = port(train_args(3), monkeypatch, tmp_path, capsys)
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line and "internal error" not in line, line
    assert "cannot write '" in line and ".state.pt'" in line and "last checkpoint: UGATIT_light.model-2" in line, line
    assert steps(folder) == [2] and not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    monkeypatch.setattr(ck.torch, "save", real)
    assert port(train_args(3), monkeypatch, tmp_path, capsys)[0] == 0 and steps(folder)[-1] == 4



def test_a_save_error_that_is_no_full_disk_stays_what_it_is(tmp_path, monkeypatch):
    """checkpoint.save turns torch.save's zip-writer RuntimeError into the OSError under it (a full
    disk, above); a RuntimeError with no OSError under it (a bug, not bad input) is raised as it
    is - not as something else - and the save leaves no temp file."""
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck

    def broken(*a, **k):
        raise RuntimeError("serializer broke")
    monkeypatch.setattr(ck.torch, "save", broken)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="^serializer broke$"):
        ck.save(str(tmp_path), PREFIX, 1, build_ugatit(CFG), {"config": ck.plain_config(CFG), "run": "r1",
                                                               "counter": 1, "G_optim": {}, "D_optim": {}})
    assert os.listdir(tmp_path) == []

def _deny_writes_under(monkeypatch, folder):
    """A read-only folder: chmod, and (root ignores modes) an injected PermissionError."""
    os.chmod(folder, 0o555)
    folder = os.path.realpath(folder)

    def denied(path):
        return os.path.realpath(str(path)).startswith(folder + os.sep)
    real_mkstemp, real_open = tempfile.mkstemp, builtins.open

    def mkstemp(*a, dir=None, **k):
        if dir is not None and denied(os.path.join(dir, "x")):
            raise PermissionError(errno.EACCES, "Permission denied", dir)
        return real_mkstemp(*a, dir=dir, **k)

    def opener(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and isinstance(file, (str, bytes, os.PathLike)) and denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *a, **k)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(builtins, "open", opener)


def test_read_only_folders_are_one_error_line(tmp_path, monkeypatch, capsys):
    make_data(tmp_path)
    assert port(train_args(1, 1, 100), monkeypatch, tmp_path, capsys)[0] == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_under(monkeypatch, str(ro))
    try:
        rc, out, err = port(train_args(1, 1, 100, "--checkpoint_dir", str(ro)), monkeypatch, tmp_path, capsys)
        assert rc == 2 and "--checkpoint_dir" in one_error_line(err) and "not writable" in err
        rc, out, err = port(TINY + ["--phase", "test", "--result_dir", str(ro)], monkeypatch, tmp_path, capsys)
        assert rc == 2 and "--result_dir" in one_error_line(err)
        from ugatit_common.demo import main as demo_main
        assert demo_main([str(ro / "demo")]) == 2
        assert "not writable" in one_error_line(capsys.readouterr().err)
    finally:
        os.chmod(ro, 0o755)


def test_ctrl_c_exit_130_with_step_and_resume_command(tmp_path, monkeypatch, capsys):
    import torch_port.train as tt
    make_data(tmp_path)
    real = tt._check_finite

    def interrupt(values, what, counter, *args, **kwargs):
        if counter == 3:
            raise KeyboardInterrupt
        return real(values, what, counter, *args, **kwargs)
    monkeypatch.setattr(tt, "_check_finite", interrupt)
    rc, out, err = port(train_args(5, 1, 1, "--resume", "False"), monkeypatch, tmp_path, capsys)
    assert rc == 130 and "Traceback" not in err
    assert "stopped at step 2 (last checkpoint: UGATIT_light.model-3)" in err
    assert "resume with: python -m torch_port" in err and "--resume" not in err.split("resume with:")[1]
    monkeypatch.setattr(tt, "_check_finite", real)
    rc, out, err = port(train_args(5, 1, 1), monkeypatch, tmp_path, capsys)
    assert rc == 0 and f"{PREFIX}.model-3" in out
    # --debug shows the traceback
    monkeypatch.setattr(tt, "_check_finite", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    rc, out, err = port(train_args(5, 2, 1, "--debug"), monkeypatch, tmp_path, capsys)
    assert rc == 1 and "Traceback" in err and "internal error (RuntimeError: boom)" in err


@pytest.mark.parametrize("typed", [["--resum", "False"], ["--resum=False"], ["--resume", "f"]])
def test_the_resume_command_drops_resume_false_as_argparse_read_it(typed):
    """argparse takes an unambiguous prefix of a flag: `--resum False` is `--resume False`. The stop
    line's `resume with:` command kept it, and that command moved the run's checkpoints aside and
    started over instead of resuming. Every spelling argparse reads as --resume is dropped."""
    from ugatit_common import cli_errors
    cmd = cli_errors.resume_command("python -m torch_port", ["--dataset", "t"] + typed + ["--epoch", "2"])
    assert cmd == "python -m torch_port --dataset t --epoch 2", cmd


def test_ctrl_c_rewrapped_by_a_library_is_still_an_interrupt(capsys):
    """A SIGINT landing inside library code that re-raises it as its own error (chained) is still
    Ctrl-C: exit 130 with the resume line, not an internal error."""
    from ugatit_common import cli_errors

    def wrapped(argv):
        cli_errors.note_step(4)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("stopped in C++") from e

    assert cli_errors.run(wrapped, ["--iteration", "9"], prog="python -m torch_port", training=lambda a: True) == 130
    assert "stopped at step 4" in capsys.readouterr().err
    assert cli_errors.run(lambda argv: 1 / 0, [], prog="p") == 1  # a plain bug stays an internal error


def test_warnings_are_one_plain_line_each_and_library_notices_are_not_shown(tmp_path):
    """A command's warnings (`cli_errors.run`): `warning: <message>`, one line, once per message
    (the fp16-on-CPU note came once per generator, as `path:277: RuntimeWarning:`), and no
    library deprecation notice (`--compile True` printed torch's `torch.jit.script_method is
    deprecated` with its source line); under torchrun rank 0 alone says them; Python's own -W
    setting still decides. Outside the command the warning settings are as before.
    In a real process: the test phase of a trained run with fp16 on a CPU."""
    import warnings
    from unittest import mock

    from ugatit_common import cli_errors
    make_data(tmp_path)
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run_port(*args):
        p = subprocess.run([sys.executable, "-m", "torch_port", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        return p.returncode, p.stdout, p.stderr
    rc, out, err = run_port(*train_args(1))
    assert rc == 0, err
    rc, out, err = run_port("--phase", "test", *TINY, "--precision", "fp16")
    assert rc == 0, err
    assert err.count("warning: precision fp16 on CPU") == 1 and "RuntimeWarning" not in err and ".py:" not in err, err

    def noisy(argv):
        for _ in range(2):
            warnings.warn("a note for the user", RuntimeWarning)
            warnings.warn("this API is deprecated", DeprecationWarning)
            warnings.warn("will change", FutureWarning)
    before = (list(warnings.filters), warnings.showwarning)
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert cli_errors.run(noisy, [], prog="p") == 0
    assert buf.getvalue() == "warning: a note for the user\n"
    assert (list(warnings.filters), warnings.showwarning) == before
    with warnings.catch_warnings(), mock.patch.object(sys, "warnoptions", ["error"]):  # python -W error
        warnings.simplefilter("error")
        assert cli_errors.run(noisy, [], prog="p") == 1  # the user's setting decides: the warning is an error
    buf = io.StringIO()  # under torchrun, rank 1 of 2: rank 0 says it
    with contextlib.redirect_stderr(buf), mock.patch.dict(os.environ, {"WORLD_SIZE": "2", "RANK": "1"}):
        assert cli_errors.run(noisy, [], prog="p") == 0
    assert buf.getvalue() == ""


def _signalled_after_its_first_checkpoint(tmp_path, sig):
    """A training process (200 iterations) sent `sig` once its first checkpoint is there: (process, stderr)."""
    # SIGINT back to its default in the child: a shell's background job (`cmd &`, nohup) starts with
    # SIGINT ignored, which the child would inherit, and Python then installs no KeyboardInterrupt
    # handler (the run finished with exit 0 and the signal ignored, when pytest ran in the background)
    p = subprocess.Popen([sys.executable, "-m", "torch_port"] + train_args(200), cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not steps(ckdir(tmp_path)):
        time.sleep(0.3)
    p.send_signal(sig)
    return p, p.communicate(timeout=120)[1]


def test_ctrl_c_in_a_real_process(tmp_path):
    make_data(tmp_path)
    p, err = _signalled_after_its_first_checkpoint(tmp_path, signal.SIGINT)
    assert p.returncode == 130, err[-2000:]
    assert "stopped at step" in err and "resume with: python -m torch_port" in err and "Traceback" not in err


def test_sigterm_stops_as_ctrl_c_does(tmp_path):
    """SIGTERM (`kill`, a scheduler preempting the job, `docker stop`) ended a training run at once:
    no line saying where it stopped, exit -15, a save in progress not rolled back. It now stops as
    Ctrl-C does - the same clean-up, one line naming SIGTERM with the step, the last checkpoint and
    the resume command - with exit 143 (128 + 15)."""
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    p, err = _signalled_after_its_first_checkpoint(tmp_path, signal.SIGTERM)
    assert p.returncode == 143, (p.returncode, err[-2000:])
    line = err.strip().splitlines()[-1]
    assert line.startswith("SIGTERM: stopped at step") and "last checkpoint: " in line, line
    assert "resume with: python -m torch_port" in line and "Traceback" not in err, err
    found = policy.inventory(folder)  # nothing half written; the line names the newest checkpoint
    assert found and all(f.complete for f in found) and not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    assert f"{found[0].name.split(' ')[0]}" in line, (line, found[0].name)


def _signal_in_the_teardown(tmp_path, prog, sig, wait):
    """A 1-iteration port run by the Python program `prog`, sent `sig` `wait` s after its
    " [*] Training finished!" line (its teardown then begins); checks that it ended within 20 s
    with the run's code 0 and no traceback. Returns its stderr."""
    make_data(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", prog] + train_args(1), cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = ""
    for line in p.stdout:
        out += line
        if "Training finished" in line:
            break
    time.sleep(wait)
    t0 = time.time()
    p.send_signal(sig)
    rest, err = p.communicate(timeout=60 + wait)
    assert "Training finished" in out, (out, err[-2000:])
    assert time.time() - t0 < 20, "the signal did not end the teardown"
    assert p.returncode == 0, (p.returncode, err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    return err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_after_the_run_ended_exits_at_once_with_its_code(tmp_path, sig):
    """A signal in the process's last moments, after " [*] Training finished!" (interpreter
    teardown: atexit callbacks, library clean-up), ended a finished run with -2 (a traceback from
    the interrupted clean-up) or -15 and no line. It now exits at once with the run's own code and
    one note: nothing was interrupted. The teardown is held open here by an atexit sleep, as a
    slow library clean-up would."""
    err = _signal_in_the_teardown(tmp_path, "import atexit, sys, time; atexit.register(time.sleep, 60); "
                                            "from torch_port.__main__ import main; sys.exit(main())", sig, 0.5)
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert err.strip().splitlines()[-1] == f"note: {name} after the run had ended: nothing was interrupted", err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_after_the_atexit_callbacks_still_exits_with_the_runs_code(tmp_path, sig):
    """The teardown goes on after the atexit callbacks: Python then disables its signal handlers
    (SIGINT / SIGTERM back to their default action) and finalizes the modules - torch's took about
    0.7 s of a finished 32 px run's 1 s teardown. A signal there still ended the finished run with
    -2 or -15 and no line. Held open here by a module global whose __del__ sleeps (run by the
    module finalization, after the signal handlers are gone)."""
    _signal_in_the_teardown(tmp_path, "import sys, time\n"
                                      "class Slow:\n    def __del__(self, sleep=time.sleep): sleep(60)\n"
                                      "slow = Slow()\n"
                                      "from torch_port.__main__ import main\nsys.exit(main())",
                            sig, 2.0)  # 2 s: past the atexit callbacks, into the module finalization


def test_files_written_together_are_on_disk_before_they_are_published(tmp_path, monkeypatch):
    """write_files_atomic (and the TF `checkpoint` state file, through write_temp_beside): each
    file's data is fsynced, as a regular file, before the renames publish it - else a power cut
    after the rename can leave the new name holding nothing."""
    import stat

    from ugatit_common import atomic
    from ugatit_common.tf_checkpoint import bundle
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            events.append(("fsync", os.fstat(fd).st_size))
        return real_fsync(fd)

    def replace(a, b, *args, **kw):
        events.append(("replace", os.path.basename(str(b))))
        return real_replace(a, b, *args, **kw)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_files_atomic({str(tmp_path / "a.bin"): b"12345", str(tmp_path / "b.bin"): b"123"})
    files = [e for e in events if e[0] == "fsync"]
    assert ("fsync", 5) in files and ("fsync", 3) in files, events
    first_publish = next(i for i, e in enumerate(events) if e == ("replace", "a.bin") or e == ("replace", "b.bin"))
    assert events.index(("fsync", 5)) < first_publish and events.index(("fsync", 3)) < first_publish, events
    events.clear()
    bundle.write_checkpoint_state(str(tmp_path), "UGATIT.model-1")
    assert events and events[0][0] == "fsync" and events[0][1] > 0 and ("replace", "checkpoint") in events, events


LATE_SIGNAL = """
import atexit, sys, time
def hold():
    print("teardown", flush=True)
    time.sleep(60)
atexit.register(hold)
from ugatit_common import cli_errors
def command(argv):
    if argv[0] == "exit":
        raise SystemExit(2)  # argparse's usage error
    return 2  # a refused command's code
sys.exit(cli_errors.run(command, prog="x"))
"""


@pytest.mark.parametrize("how", ["return", "exit"])
def test_a_late_signal_keeps_a_failed_commands_code(tmp_path, how):
    """The late-signal exit (above) keeps the command's own code when it is not 0: a command that
    returned 2, or whose argparse exited 2, still ends with 2 (and the note) on Ctrl-C in its
    teardown - never 0, which would pass a refused command off as a success."""
    p = subprocess.Popen([sys.executable, "-c", LATE_SIGNAL, how], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "teardown"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 2, (p.returncode, err)
    assert err.strip().splitlines()[-1] == "note: Ctrl-C after the run had ended: nothing was interrupted", err


SECOND_CTRL_C = """
import os, signal, sys
from ugatit_common import cli_errors
def command(argv):
    cli_errors.note_step(4)
    raise KeyboardInterrupt  # the first Ctrl-C, in the training
if sys.argv[1] == "line":  # the second while the first one's line is being made
    made, pressed = cli_errors.interrupted_line, []
    def line(*a, **k):
        if not pressed:  # once: the user pressed twice
            pressed.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return made(*a, **k)
    cli_errors.interrupted_line = line
elif sys.argv[1] == "handler":  # the second as the late-signal handler is being set, before it is
    setting = cli_errors.exit_at_once_on_late_signals
    def before_handler(rc):
        os.kill(os.getpid(), signal.SIGINT)
        setting(rc)
    cli_errors.exit_at_once_on_late_signals = before_handler
else:  # the second right after the command's handling of the first, before the late-signal handler
    handled = cli_errors._run
    def after(*a, **k):
        rc = handled(*a, **k)
        os.kill(os.getpid(), signal.SIGINT)
        return rc
    cli_errors._run = after
sys.exit(cli_errors.run(command, prog="python -m torch_port", training=lambda argv: True))
"""


@pytest.mark.parametrize("when", ["line", "after", "handler"])
def test_a_second_ctrl_c_while_the_first_is_handled_ends_with_its_code_and_line(tmp_path, when):
    """An impatient user presses Ctrl-C twice: the second, landing while the first one's `stopped
    at step N ...; resume with` line was being made, or just after (before the late-signal handler
    was set), ended the process with a traceback and -2. It now ends as the first one does: exit
    130, the stop line once, no traceback."""
    p = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, when], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("stopped at step 4") == 1 and "resume with: python -m torch_port" in p.stderr, p.stderr
    if when == "handler":
        assert p.stderr.strip().splitlines()[-1] == "note: Ctrl-C after the run had ended: nothing was interrupted"


def test_a_second_sigterm_while_the_first_is_handled_keeps_143_and_the_resume_command(monkeypatch, capsys):
    """A SIGTERM that lands while `_run` handles the first stop (before its stop line) ends the
    command as SIGTERM does (143, not Ctrl-C's 130), with the stop line once; the resume command
    drops --debug as the first one's would."""
    from ugatit_common import cli_errors

    def second(*a, **k):
        cli_errors.reset()
        cli_errors.note_step(4)
        raise cli_errors.Terminated()
    monkeypatch.setattr(cli_errors, "_run", second)
    rc = cli_errors.run(lambda argv: 0, ["--debug", "--epoch", "2"], prog="python -m torch_port",
                        training=lambda argv: True)
    err = capsys.readouterr().err
    assert rc == 143, (rc, err)
    assert err.count("stopped at step 4") == 1 and "resume with: python -m torch_port --epoch 2" in err, err
    assert "--debug" not in err, err


# -- kill -9 at random moments: resume reproduces the uninterrupted run ------------------------------

@pytest.mark.slow
def test_kill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    args = [sys.executable, "-m", "torch_port"] + train_args(6, 1, 1, "--keep_checkpoints", "2")
    ref, work = tmp_path / "ref", tmp_path / "work"
    for d in (ref, work):
        make_data(d)
    subprocess.run(args, cwd=ref, env=env, check=True, capture_output=True, timeout=600)
    rng = random.Random(11)
    for _ in range(3):   # bounded: three kills at random moments
        p = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = f"{PREFIX}.model-7.safetensors"
    from safetensors.torch import load_file
    a, b = load_file(os.path.join(ckdir(ref), final)), load_file(os.path.join(ckdir(work), final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [n for n in os.listdir(ckdir(work)) if n.startswith(".tmp-")]


# -- 5 / 8. the converter ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def port_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("port_ckpt")
    make_data(root)
    from torch_port.__main__ import main
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(train_args(2, 1, 100)) == 0
    finally:
        os.chdir(cwd)
    return os.path.join(ckdir(root), f"{PREFIX}.model-3.safetensors")


def convert(argv, capsys):
    import weights_convert as wc
    capsys.readouterr()
    rc = wc.main(argv)
    return rc, capsys.readouterr()


def test_torch2tf_validates_against_the_configured_model(port_ckpt, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    w = load_file(port_ckpt)
    cases = {"missing": {k: v for k, v in w.items() if k != "generator_B.conv.weight"},
             "shape": dict(w, **{"generator_B.conv.weight": torch.zeros(1, 1, 1, 1)}),
             "extra": dict(w, **{"generator_B.surplus": torch.zeros(2)})}
    meta = {"config": json.dumps(opt.config_from(CFG))}
    for name, st in cases.items():
        path = str(tmp_path / f"{name}.safetensors")
        save_file(st, path, metadata=meta)
        rc, out = convert(["torch2tf", path, str(tmp_path / name / "m")], capsys)
        assert rc == 2, (name, out)
        assert "does not match the configured model" in one_error_line(out.err)
        assert not os.path.exists(tmp_path / name)
    for blob, name in ((b"garbage", "g.pt"), (b"PK\x03\x04trunc", "t.pt"), (digest_bytes(port_ckpt)[:300], "t.safetensors")):
        (tmp_path / name).write_bytes(blob)
        rc, out = convert(["torch2tf", str(tmp_path / name), str(tmp_path / "o" / "m")], capsys)
        assert rc == 2 and "weights_only=False" not in out.err and name in one_error_line(out.err)
    import pickle
    with open(tmp_path / "pickle.pt", "wb") as fh:   # a pickle of arbitrary Python objects
        pickle.dump({"x": 1.5j, "f": os.path.join}, fh)
    rc, out = convert(["torch2tf", str(tmp_path / "pickle.pt"), str(tmp_path / "o" / "m")], capsys)
    assert rc == 2 and "weights_only=False" not in out.err


def test_torch2tf_carries_the_exact_adam_state(port_ckpt, tmp_path, capsys):
    import weights_convert as wc
    rc, out = convert(["torch2tf", port_ckpt, str(tmp_path / "tf" / f"{PREFIX}.model")], capsys)
    assert rc == 0, out.err
    prefix = str(tmp_path / "tf" / f"{PREFIX}.model-3")
    st = wc.read_tf_training_state(prefix, quiet=True)
    state = torch.load(port_ckpt.replace(".safetensors", ".state.pt"), weights_only=True)
    g = state["G_optim"]
    assert torch.equal(st["G_powers"][0].reshape(()), g["beta1_power"].reshape(()))
    assert all(torch.equal(st["G_slots"][f"{n}/Adam"], t) for n, t in g["m"].items())
    assert all(torch.equal(st["D_slots"][f"{n}/Adam_1"], t) for n, t in state["D_optim"]["v"].items())
    assert st["step"] == 3


def test_tf2torch_rejects_bad_img_size_and_errors_start_their_own_line(port_ckpt, tmp_path, capsys):
    prefix = str(tmp_path / "tf" / f"{PREFIX}.model")
    assert convert(["torch2tf", port_ckpt, prefix], capsys)[0] == 0
    for size in ("0", "63"):
        rc, out = convert(["tf2torch", str(tmp_path / "tf"), str(tmp_path / "o.safetensors"), "--img_size", size],
                          capsys)
        assert rc == 2 and "--img_size" in one_error_line(out.err)
    assert not os.path.exists(tmp_path / "o.safetensors")
    data = glob.glob(str(tmp_path / "tf" / "*.data-*"))[0]
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(data, "wb").write(bytes(raw))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "weights_convert.py"), "tf2torch", str(tmp_path / "tf"),
                           str(tmp_path / "o.safetensors"), "--img_size", "32"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert any(ln.startswith("error:") for ln in proc.stderr.splitlines()), proc.stderr


# -- tf_reference under the same policy (TensorFlow) -----------------------------------------------

@pytest.mark.slow
@pytest.mark.tf
def test_tf_reference_follows_the_policy(tmp_path, monkeypatch, capsys):
    from tf_reference.__main__ import main as tf_main
    tf_args = [a for a in TINY if a not in ("--device", "cpu", "--threads", "1")]
    data = make_data(tmp_path)
    _truncated_jpeg(os.path.join(data, "trainA", "broken.jpg"))           # the header alone looks fine
    cv2.imwrite(os.path.join(data, "trainB", "x.bmp"), np.zeros((8, 8, 3), np.uint8))
    folder = ckdir(tmp_path)
    monkeypatch.chdir(tmp_path)

    def tf_run(*extra):
        capsys.readouterr()
        rc = tf_main(tf_args + ["--print_freq", "1000"] + list(extra))
        out = capsys.readouterr()
        return rc, out.out, out.err
    rc, out, err = tf_run("--iteration", "2", "--epoch", "1", "--save_freq", "1")   # TF model-2, model-3
    assert rc == 0, err
    assert "broken.jpg" in err and "x.bmp" in err and "skipping unreadable image" in err  # as torch_port
    # the port continues the TF run; its model-4 is now the newest
    rc, pout, perr = port(train_args(2, 2, 1), monkeypatch, tmp_path, capsys)
    assert rc == 0 and "TensorFlow checkpoint UGATIT_light.model-3" in pout, perr
    rc, out, err = tf_run("--iteration", "2", "--epoch", "3", "--save_freq", "1")
    line = one_error_line(err)
    assert rc == 2 and "UGATIT_light.model-4 (PyTorch)" in line and "torch2tf" in line
    # convert as the message says: the Adam state comes along, so TF resumes training from it
    import weights_convert as wc
    capsys.readouterr()
    printed = line.split("convert it first: python -m weights_convert ")[1].split(" (or continue")[0].split()
    command = list(printed)
    command[1:3] = [os.path.join(str(tmp_path), p) for p in command[1:3]]  # as printed: relative to tf_run's cwd
    assert command == ["torch2tf", os.path.join(folder, f"{PREFIX}.model-4.safetensors"),
                       os.path.join(folder, f"{PREFIX}.model"), "--continue_run"], line
    # run as printed, from the user's folder (not the repository's)
    proc = subprocess.run([sys.executable, "-m", "weights_convert", *printed], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rc, out, err = tf_run("--iteration", "2", "--epoch", "3", "--save_freq", "1")
    assert rc == 0 and "Success to read UGATIT_light.model-4" in out, err
    assert 6 in steps(folder, "tf")
    rc, out, err = tf_run("--phase", "test")
    assert rc == 0, err
    assert sorted(os.listdir(resdir(tmp_path))) == ["a2b", "b2a", "index.html"]
    # a damaged newest checkpoint: named, and the next newest is used (weights only)
    data6 = glob.glob(os.path.join(folder, f"{PREFIX}.model-6.data-*"))[0]
    with open(data6, "r+b") as fh:
        fh.truncate(100)
    rc, out, err = tf_run("--phase", "test")
    assert rc == 0 and "model-6 (TensorFlow)" in out and "UGATIT_light.model-5" in out, err
    # the reason is TF's cause, not the Python stack TF attaches to its errors
    assert "Read less bytes than requested" in out and "most recent call last" not in out, out
    # a weights-only conversion serves the test phase; training from it says why it cannot
    ck2 = os.path.join(str(tmp_path), "ck2", opt.model_dir(CFG))
    assert wc.main(["torch2tf", os.path.join(folder, f"{PREFIX}.model-4.safetensors"),
                    os.path.join(ck2, f"{PREFIX}.model"), "--weights_only"]) == 0
    rc, out, err = tf_run("--iteration", "2", "--epoch", "3", "--checkpoint_dir", os.path.join(str(tmp_path), "ck2"))
    assert rc == 2 and "without the optimizer state" in one_error_line(err)


# -- morph, the report and the converter under the same rules ----------------------------------------

MORPH_TINY = ["--img_size", "32", "--ch", "2", "--n_dis", "4", "--light", "True", "--dataset", "t",
              "--augment_flag", "False", "--device", "cpu", "--decay_flag", "False", "--print_freq", "1000"]


def test_morph_resume_false_ctrl_c_and_read_only(tmp_path, monkeypatch, capsys):
    import morph.model as mm
    from morph.__main__ import main as morph_main
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["train"] + MORPH_TINY + ["--iteration", "2", "--epoch", "1", "--save_freq", "1"]
    assert morph_main(args) == 0
    [folder] = glob.glob(str(tmp_path / "checkpoint" / "*morphC"))
    before = sorted(os.listdir(folder))
    capsys.readouterr()
    assert morph_main(args + ["--resume", "False"]) == 0
    assert "previous-run-" in capsys.readouterr().out
    [prev] = glob.glob(os.path.join(folder, "previous-run-*"))
    assert sorted(os.listdir(prev)) == before
    # Ctrl-C: exit 130, the step, the resume command
    real = mm.MorphUGATIT.d_step
    seen = [0]

    def d_step(self, *a, **k):
        seen[0] += 1
        if seen[0] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(mm.MorphUGATIT, "d_step", d_step)
    capsys.readouterr()
    rc = morph_main(["train"] + MORPH_TINY + ["--iteration", "3", "--epoch", "2", "--save_freq", "1"])
    err = capsys.readouterr().err
    assert rc == 130 and "stopped at step 3" in err and "resume with: python -m morph train" in err
    assert "Traceback" not in err
    monkeypatch.setattr(mm.MorphUGATIT, "d_step", real)
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_under(monkeypatch, str(ro))
    try:
        rc = morph_main(args + ["--checkpoint_dir", str(ro)])
        assert rc == 2 and "--checkpoint_dir" in one_error_line(capsys.readouterr().err)
    finally:
        os.chmod(ro, 0o755)


@pytest.mark.parametrize("where", ["tensorboard.summary.writer.record_writer.RecordWriter",
                                   "torch_port.train.cut_loss_log", "tqdm.tqdm"])
def test_ctrl_c_right_after_the_log_files_open_leaves_none_open(where, tmp_path, monkeypatch, capsys):
    """The trainer opened its TensorBoard event file and its loss log (Morph's losses.jsonl) well
    before the loop whose `finally` closes them, and EventWriter its file before the `try` that
    cleans it up: a Ctrl-C landing in between (here: in the event file's record writer, in the
    loss log's cut, in the progress bar's start) printed `warning: unclosed file ...` before the
    stop line and left an empty event file. Now every file opened is closed, and no warning."""
    import warnings
    from morph.__main__ import main as morph_main
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    home, name = where.rsplit(".", 1)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib.import_module(home), name, ctrl_c)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as later:  # a file finalized after the command returned
        warnings.simplefilter("always")
        rc = morph_main(["train"] + MORPH_TINY + ["--iteration", "2", "--epoch", "1", "--save_freq", "1"])
        import gc
        gc.collect()
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err, err
    assert "unclosed" not in err and not [w for w in later if issubclass(w.category, ResourceWarning)], \
        (err, [str(w.message) for w in later])
    # the log folder, unless the stopped run left it empty (then it went: test_refused_run_folders)
    for logs in glob.glob(str(tmp_path / "logs" / "*morphC")):
        for n in os.listdir(logs):  # an event file holds at least its header (an empty one: its start cut off)
            assert os.path.getsize(os.path.join(logs, n)) > 0 or not n.startswith("events."), n


@pytest.mark.parametrize("fails", ["write", "flush"])
def test_a_full_disk_under_the_loss_log_names_it(fails, tmp_path, monkeypatch, capsys):
    """Morph's loss log (losses.jsonl, one line per step, flushed and synced before each
    checkpoint): a full disk writing or flushing it is one line naming that file, as the other
    files of a run (test_disk_full_line_names_the_file_that_failed)."""
    from morph.__main__ import main as morph_main
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh, self.name = fh, fh.name

        def __getattr__(self, attr):  # fileno, close, ...
            return getattr(self.fh, attr)

        def write(self, data):
            if fails == "write":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

        def flush(self):
            if fails == "flush":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.flush()

    def opener(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return Full(fh) if mode == "a" and str(file).endswith("losses.jsonl") else fh
    monkeypatch.setattr(builtins, "open", opener)
    capsys.readouterr()
    rc = morph_main(["train"] + MORPH_TINY + ["--iteration", "2", "--epoch", "1", "--save_freq", "1"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "No space left on device" in line, line
    assert "cannot write '" in line and line.split("cannot write '")[1].split("'")[0].endswith("losses.jsonl"), line


def test_the_loss_log_is_closed_when_the_event_files_close_fails(tmp_path, monkeypatch, capsys):
    """The end of a run closes the event file, then the loss log (Morph's losses.jsonl): an event
    file whose close fails (a full disk: its buffered events cannot be flushed) still lets the loss
    log close - no `unclosed file` warning - and the run's line is that failure's."""
    import gc
    import warnings
    from morph.__main__ import main as morph_main
    from torch_port.events import EventWriter
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    real_close = EventWriter.close

    def full(self):
        with contextlib.suppress(OSError):
            real_close(self)  # (its file closed: only the loss log's close is what this test looks at)
        raise OSError(errno.ENOSPC, f"cannot write {self.path!r}: No space left on device")
    monkeypatch.setattr(EventWriter, "close", full)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        rc = morph_main(["train"] + MORPH_TINY + ["--iteration", "1", "--epoch", "1"])
        gc.collect()
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in one_error_line(err), err
    unclosed = [str(w.message) for w in later if issubclass(w.category, ResourceWarning)]
    assert not unclosed and "unclosed" not in err, (unclosed, err)


def test_report_bad_checkpoint_and_read_only_folder_are_one_line(port_ckpt, tmp_path, monkeypatch, capsys):
    from parity_tests.report import main as report_main
    tf_dir = tmp_path / "tf"
    assert convert(["torch2tf", port_ckpt, str(tf_dir / f"{PREFIX}.model")], capsys)[0] == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    _deny_writes_under(monkeypatch, str(ro))
    try:
        capsys.readouterr()
        assert report_main([str(tf_dir), str(ro / "out"), "--img_size", "32"]) == 2
        assert "OUT_DIR" in one_error_line(capsys.readouterr().err)
    finally:
        os.chmod(ro, 0o755)
    index = glob.glob(str(tf_dir / "*.index"))[0]
    with open(index, "r+b") as fh:
        fh.truncate(20)
    assert report_main([str(tf_dir), str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err)


def test_tf2torch_never_writes_over_its_input(port_ckpt, tmp_path, capsys):
    tf_dir = tmp_path / "tf"
    assert convert(["torch2tf", port_ckpt, str(tf_dir / f"{PREFIX}.model")], capsys)[0] == 0
    index = glob.glob(str(tf_dir / "*.index"))[0]
    before = digest(index)
    rc, out = convert(["tf2torch", str(tf_dir), index], capsys)
    assert rc == 2 and "checkpoint being converted" in one_error_line(out.err) and digest(index) == before


def test_torch2tf_with_a_damaged_optimizer_state_says_so(port_ckpt, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(port_ckpt, ck)
    state = ck / os.path.basename(port_ckpt).replace(".safetensors", ".state.pt")
    state.write_bytes(digest_bytes(port_ckpt.replace(".safetensors", ".state.pt"))[:200])
    weights = str(ck / os.path.basename(port_ckpt))
    rc, out = convert(["torch2tf", weights, str(tmp_path / "tf" / "m")], capsys)
    assert rc == 2 and "--weights_only" in one_error_line(out.err) and not os.path.exists(tmp_path / "tf")
    rc, out = convert(["torch2tf", weights, str(tmp_path / "tf" / "m"), "--weights_only"], capsys)
    assert rc == 0 and "no optimizer state written" in out.out


def test_ctrl_c_under_torchrun_resumes_through_torchrun(monkeypatch, capsys):
    """Under torchrun (its environment) the resume command is a torchrun one with the same number
    of processes, and only rank 0 (which saves, and knows the newest checkpoint) says it."""
    from ugatit_common import cli_errors

    def interrupted(argv):
        cli_errors.note_step(7)
        raise KeyboardInterrupt
    for k, v in (("TORCHELASTIC_RUN_ID", "x"), ("LOCAL_WORLD_SIZE", "2"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(k, v)
    for rank, says in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        capsys.readouterr()
        assert cli_errors.run(interrupted, ["--dataset", "d"], prog="python -m torch_port",
                              training=lambda a: True) == 130
        err = capsys.readouterr().err
        assert ("resume with: torchrun --nproc_per_node 2 -m torch_port --dataset d" in err) == says, (rank, err)
    monkeypatch.setenv("WORLD_SIZE", "4")  # two nodes of two
    assert cli_errors.resume_command("python -m morph", ["train"]) == "torchrun --nnodes 2 --nproc_per_node 2 -m morph train"
    for k in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k)
    assert cli_errors.resume_command("python -m torch_port", ["--x", "1"]) == "python -m torch_port --x 1"


def test_resumed_runs_events_replace_a_killed_runs(tmp_path):
    """TensorBoard events of steps a killed run wrote after its last checkpoint: the resumed run's
    event file starts with TensorBoard's purge marker at its first step, so TensorBoard shows each
    step once, the resumed run's, also for a tag the resumed run has not written again yet (a
    rho histogram of the killed run's last print_freq step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from torch_port.events import EventWriter
    killed = EventWriter(str(tmp_path))
    for step in range(1, 6):
        killed.add_scalar("D_loss", float(step), step)
    killed.add_histogram("rho", np.arange(4.0), 5)
    killed.close()
    time.sleep(1.1)  # the second file's name (its time stamp) sorts after the first's, as for a real resume
    resumed = EventWriter(str(tmp_path), purge_step=3)  # resumed from the checkpoint of step 2
    for step in (3, 4):
        resumed.add_scalar("D_loss", 10.0 * step, step)
    resumed.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("D_loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert "rho" not in acc.Tags()["histograms"] or acc.Histograms("rho") == []


def test_files_written_together_are_all_or_nothing(tmp_path, monkeypatch):
    """write_files_atomic (the exports: Morph C's .onnx with its _w.npz): a rename failing after
    another succeeded puts the first back - the new file removed, a replaced one restored - and
    the error names the file that failed; no temp file is left."""
    from ugatit_common.atomic import WriteFailed, write_files_atomic
    a, b = str(tmp_path / "m_w.npz"), str(tmp_path / "m.onnx")
    real_replace = os.replace

    def second_fails(src, dst, *args, **kw):
        if str(dst) == b:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *args, **kw)

    for old in (None, {a: b"old codes", b: b"old model"}):
        for path, data in (old or {}).items():
            with open(path, "wb") as fh:
                fh.write(data)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", second_fails)
            with pytest.raises(WriteFailed) as e:
                write_files_atomic({a: b"new codes", b: b"new model"})
        assert repr(b) in str(e.value) and e.value.path == b
        got = {str(tmp_path / n): open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path)}
        assert got == (old or {}), got
    write_files_atomic({a: b"new codes", b: b"new model"})
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m_w.npz"] and open(b, "rb").read() == b"new model"


def _killed_at(k: int, write, within: str | None = None, before: bool = False, only=None) -> bool:
    """Run `write()` in a forked child that dies right after its k-th os.replace / os.remove (os._exit:
    no `except`, no `finally`, no atexit - what SIGKILL or a power cut leaves); `within`: only the
    calls made inside that function ("module.function") count, and with `only` those for which
    only(name, args) holds; `before`: killed just before its k-th call instead. True when it was killed there, False when it ended before its k-th call."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls, inside = [0], [within is None]
            real = {name: getattr(os, name) for name in ("replace", "remove", "unlink", "rename")}

            def counted(name):
                def call(*args, **kw):
                    if only is not None and not only(name, args):
                        return real[name](*args, **kw)
                    calls[0] += inside[0]
                    if before and calls[0] == k:
                        os._exit(9)
                    try:
                        return real[name](*args, **kw)
                    finally:  # a call that failed (a file already gone) counts too
                        if calls[0] == k:
                            os._exit(9)
                return call
            for name in real:
                setattr(os, name, counted(name))
            if within is not None:
                home, name = within.rsplit(".", 1)
                fn = getattr(importlib.import_module(home), name)

                def counting(*args, **kw):
                    inside[0] = True
                    try:
                        return fn(*args, **kw)
                    finally:
                        inside[0] = False
                for module in list(sys.modules.values()):  # its home and every `from ... import` copy
                    if getattr(module, name, None) is fn:
                        setattr(module, name, counting)
            with open(os.devnull, "w") as quiet:
                sys.stdout = sys.stderr = quiet
                rc = write()
            os._exit(0 if rc in (None, 0) else 1)
        except BaseException:  # noqa: BLE001 - any failure of the write is the test's failure
            os._exit(1)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert code in (0, 9), f"the write failed (exit {code}) before its call {k}"
    return code == 9


def _fresh(folder, files: dict) -> None:
    """`folder` emptied, then holding `files` {name: bytes}."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for n, data in files.items():
        (folder / n).write_bytes(data)


def _visible(folder) -> dict:
    """{name: bytes} of the files a user sees in `folder` (temp and lock files start with a dot)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))}


@pytest.mark.parametrize("target", ["same prefix, with its .meta", "a new checkpoint in a user's folder"])
def test_torch2tf_killed_at_any_rename_is_rolled_back_by_the_next_command(tmp_path, target):
    """weights_convert torch2tf publishes a checkpoint as several files (.data, .index, the folder's
    `checkpoint` file, the replaced checkpoint's stale .meta removed). Killed right after any of its
    renames or removals (SIGKILL: nothing of the process runs again), the next command reading or
    writing that folder - the bundle reader, a training's inventory, the next conversion - finds its
    journal and puts every file back as it was: the folder is then exactly the old checkpoint or,
    once the write had committed, exactly the new one. Never a new .data beside the old .index (a
    corrupt checkpoint), an orphan file, or a stale .meta beside new weights."""
    import weights_convert as wc
    from ugatit_common.tf_checkpoint.bundle import CheckpointError, resolve_prefix
    from parity_tests.test_convert_cases import _model, _save_port
    src = _save_port(tmp_path / "port", _model(1), step=5 if "new" in target else 3)
    pristine = tmp_path / "pristine"
    if "meta" in target:
        wc.torch_to_tf({k: v for k, v in _model(0).state_dict().items()}, str(pristine / f"{PREFIX}.model-3"))
        (pristine / f"{PREFIX}.model-3.meta").write_bytes(b"the old checkpoint's graph")
    else:
        os.makedirs(pristine)
        (pristine / "notes.txt").write_bytes(b"a user's file")
    out = tmp_path / "tf"
    argv = ["torch2tf", src, str(out / f"{PREFIX}.model-{5 if 'new' in target else 3}"), "--overwrite"]
    before = _visible(pristine)

    shutil.copytree(pristine, out)
    assert wc.main(argv) == 0
    after = _visible(out)
    assert after != before and (("new" in target) == (f"{PREFIX}.model-5.index" in after))

    def read():  # the bundle reader; in the user's folder as it was there is nothing to read
        try:
            resolve_prefix(str(out))
        except CheckpointError:
            assert "meta" not in target and _visible(out) == before
    readers = [read, lambda: policy.inventory(str(out)), lambda: wc.main(argv)]
    outcomes, mixed = [], 0
    for k in range(1, 100):
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        if not _killed_at(k, lambda: wc.main(argv)):
            assert _visible(out) == after
            break
        left = _visible(out)
        mixed += left not in (before, after)  # what a reader would meet without the journal
        reader = readers[k % len(readers)]
        assert reader() in (None, 0) or reader is not readers[2]
        got = _visible(out)
        if reader is readers[2]:  # the next conversion: rolled back, then written whole
            assert got == after, k
        else:
            assert got in (before, after), (k, sorted(got), "neither the old checkpoint nor the new one")
            outcomes.append("old" if got == before else "new")
        assert not glob.glob(str(out / ".tmp-*.journal")) and not glob.glob(str(out / ".tmp-*.keep")), k
    else:
        raise AssertionError("the conversion never finished")
    assert mixed >= 2, "no kill point left the files mixed: the test would not see a missing rollback"
    assert "old" in outcomes and "new" in outcomes, outcomes


def test_an_export_killed_between_its_files_is_rolled_back_by_the_next_command(tmp_path):
    """write_files_atomic (Morph C's .onnx with its _w.npz): killed right after any rename or
    removal, the next command there (a sweep of dead temp files, the output checks of the next
    export) puts both files back as they were, or leaves both new once the write had committed."""
    from ugatit_common import output_guard
    from ugatit_common.atomic import sweep_dead_temps, write_files_atomic
    for old in ({}, {"m_w.npz": b"old codes", "m.onnx": b"old model"}):
        new = {"m_w.npz": b"new codes", "m.onnx": b"new model"}
        outcomes = []
        for k in range(1, 100):
            _fresh(tmp_path / "x", old)
            if not _killed_at(k, lambda: write_files_atomic({str(tmp_path / "x" / n): d for n, d in new.items()})):
                assert _visible(tmp_path / "x") == new
                break
            if k % 2:
                sweep_dead_temps(str(tmp_path / "x"))
            else:  # the next export's output checks (these bytes are no ONNX model: they may refuse them)
                try:
                    output_guard.check_outputs([(str(tmp_path / "x" / "m.onnx"), "onnx")], [], True)
                except output_guard.OutputRefused:
                    pass
                output_guard.release_claims()
            got = _visible(tmp_path / "x")
            assert got in (old, new), (k, got)
            outcomes.append(got == new)
            assert not [n for n in os.listdir(tmp_path / "x") if n.endswith((".journal", ".keep"))], k
        assert True in outcomes and False in outcomes, outcomes


@pytest.mark.parametrize("earlier", [False, True])
def test_a_training_save_killed_at_any_rename_never_blocks_the_resume(tmp_path, monkeypatch, capsys, earlier):
    """A checkpoint is weights, state and the pointer, published as one write. A run killed right
    after any rename of its save (the first save, or one after an earlier checkpoint): the folder
    then holds complete checkpoints only - the earlier ones, plus the new one once its write had
    committed - and the next run resumes (or starts over) with exit 0, setting nothing aside. Before,
    weights published without their state made every later run stop with exit 2 ("none can be
    used"), and later saves left a half checkpoint to set aside each time."""
    make_data(tmp_path)
    folder = ckdir(tmp_path)
    if earlier:
        assert port(train_args(1), monkeypatch, tmp_path, capsys)[0] == 0
    pristine = str(tmp_path / "pristine")
    shutil.copytree(tmp_path, pristine, ignore=shutil.ignore_patterns("pristine"))
    before = steps(folder)
    outcomes = []
    for k in range(1, 30):
        for n in os.listdir(tmp_path):
            if n != "pristine":
                shutil.rmtree(tmp_path / n)
        shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
        monkeypatch.chdir(tmp_path)
        if not _killed_at(k, lambda: port(train_args(1, 2, 1), monkeypatch, tmp_path)[0], within="torch_port.checkpoint.save"):
            break
        found = policy.inventory(folder)  # what the next run reads first: the killed write rolled back
        assert all(f.complete for f in found), (k, [(f.name, f.missing) for f in found])
        got = steps(folder)
        assert got[:len(before)] == before and len(got) - len(before) <= 2, (k, got)
        outcomes.append(len(got) - len(before))
        rc, out, err = port(train_args(1, 3, 1), monkeypatch, tmp_path, capsys)
        warned = [ln for ln in out.splitlines() if "[!]" in ln and "[!] Load failed" not in ln]  # official line
        assert rc == 0 and not warned, (k, warned, out[-2000:], err[-2000:])
        assert not glob.glob(os.path.join(folder, "unusable*")) and not glob.glob(os.path.join(folder, ".tmp-*")), k
    else:
        raise AssertionError("the run never finished")
    assert k > 3 and 0 in outcomes and max(outcomes) > 0, (k, outcomes)  # killed both before and after a commit


def _interrupting_at(k: int):
    """A wrapper maker: the functions it wraps raise KeyboardInterrupt (Ctrl-C) at the k-th call
    among them, instead of running it."""
    calls = [0]

    def wrap(fn):
        def call(*args, **kw):
            calls[0] += 1
            if calls[0] == k:
                raise KeyboardInterrupt
            return fn(*args, **kw)
        return call
    return wrap


def test_ctrl_c_at_any_step_of_a_write_of_several_files_leaves_nothing_behind(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) at each system call of a write of several files (the backups'
    links, the journal's write, fsync and rename, the renames of the files): every file is as it
    was, and no journal, half-written journal or backup is left (a journal left behind by Ctrl-C
    was rolled back by a later command over files the user had put there since)."""
    from ugatit_common.atomic import write_files_atomic
    new = {"m_w.npz": b"new codes", "m.onnx": b"new model"}
    for old in ({}, {"m_w.npz": b"old codes", "m.onnx": b"old model"}):
        outcomes = []
        for k in range(1, 200):
            _fresh(tmp_path / "x", old)
            interrupting = _interrupting_at(k)
            try:
                with monkeypatch.context() as m:
                    for name in ("link", "replace", "remove", "fsync", "open", "chmod"):
                        m.setattr(os, name, interrupting(getattr(os, name)))
                    write_files_atomic({str(tmp_path / "x" / n): d for n, d in new.items()})
            except KeyboardInterrupt:  # as before it, or (interrupted after the commit) as written
                left = sorted(os.listdir(tmp_path / "x"))
                assert (left, _visible(tmp_path / "x")) in ((sorted(old), old), (sorted(new), new)), (k, left)
                outcomes.append(_visible(tmp_path / "x") == new)
                continue
            assert _visible(tmp_path / "x") == new and sorted(os.listdir(tmp_path / "x")) == sorted(new)
            break
        assert outcomes.count(False) > 8, outcomes


def test_a_killed_writes_journal_never_touches_files_put_there_since(tmp_path, capsys):
    """A write killed half way leaves its journal until the next command there. Files someone put
    at those names meanwhile (the user, seeing the command fail, copies their own in) are not the
    write's: the next command leaves every file as it is and says so in one line, keeping the
    journal and the earlier files' backups until the user removes the journal."""
    from ugatit_common.atomic import sweep_dead_temps, write_files_atomic
    new = {"m_w.npz": b"new codes", "m.onnx": b"new model"}
    mine = {"m_w.npz": b"the user's codes", "m.onnx": b"the user's model"}
    for old in ({}, {"m_w.npz": b"old codes", "m.onnx": b"old model"}):
        journals = 0
        for k in range(1, 100):
            _fresh(tmp_path / "x", old)
            if not _killed_at(k, lambda: write_files_atomic({str(tmp_path / "x" / n): d for n, d in new.items()})):
                break
            journals += bool(glob.glob(str(tmp_path / "x" / ".tmp-*.journal")))
            for n, data in mine.items():  # replaced, as `cp` does: a new file under the name
                if os.path.lexists(tmp_path / "x" / n):
                    os.remove(tmp_path / "x" / n)
                (tmp_path / "x" / n).write_bytes(data)
            capsys.readouterr()
            sweep_dead_temps(str(tmp_path / "x"))  # the journal first, then the temp files
            assert _visible(tmp_path / "x") == mine, k
            left = glob.glob(str(tmp_path / "x" / ".tmp-*.journal"))
            if left:  # changed since: said, and left for the user
                assert "has changed since: nothing was put back" in capsys.readouterr().out, k
                os.remove(left[0])
                sweep_dead_temps(str(tmp_path / "x"))
            assert sorted(os.listdir(tmp_path / "x")) == sorted(mine), (k, os.listdir(tmp_path / "x"))
        assert journals >= 2, journals


def test_journals_are_judged_by_their_lock_and_copies_by_their_times(tmp_path, capsys):
    """Whether a journal's writer is alive is its lock, not its pid or its files' times: a live
    write's backups of files two days old stay (the 24 h rule for temp files took hard links of old
    files for left-overs), and a dead write's journal carrying this very process's pid (a pid
    reused after a restart, PID 1 in a container) is rolled back. A folder copied with its times
    (`cp -a`) after a kill is rolled back in the copy too; one copied without them is left as it
    is, said, with the earlier files kept."""
    from ugatit_common import atomic
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "m.index").write_bytes(b"old index")
    (folder / "m.data").write_bytes(b"old data")
    two_days = time.time() - 2 * 86400
    for n in ("m.index", "m.data"):
        os.utime(folder / n, (two_days, two_days))
    live = atomic._Journal(str(folder))  # a write in progress in this process: its lock held
    try:
        os.link(folder / "m.data", folder / f".tmp-{os.getpid()}-aa.keep")
        for sweep in (atomic.sweep_dead_temps, atomic.recover_interrupted_writes,
                      lambda f: policy.sweep_temp(f, owner=None)):
            sweep(str(folder))
            assert os.path.exists(folder / f".tmp-{os.getpid()}-aa.keep") and os.path.exists(live.part)
    finally:
        live.close()
        os.remove(folder / f".tmp-{os.getpid()}-aa.keep")

    def killed_between_renames(where):
        """A dead write of this pid: new .data renamed in, the old .index still there."""
        os.link(where / "m.data", where / f".tmp-{os.getpid()}-bb.keep")
        os.link(where / "m.index", where / f".tmp-{os.getpid()}-cc.keep")
        (where / "new.tmp").write_bytes(b"new data")
        entries = [{"path": "m.data", "was": f".tmp-{os.getpid()}-bb.keep",
                    "new": atomic._identity(os.lstat(where / "new.tmp"))},
                   {"path": "m.index", "was": f".tmp-{os.getpid()}-cc.keep", "new": [9, 9]}]
        (where / f".tmp-{os.getpid()}-dd.journal").write_text(json.dumps({"journal": 3, "files": entries}))
        os.replace(where / "new.tmp", where / "m.data")
    killed_between_renames(folder)
    shutil.copytree(folder, tmp_path / "with_times")                              # copy2: times kept
    shutil.copytree(folder, tmp_path / "without", copy_function=shutil.copyfile)  # new times
    for where in (folder, tmp_path / "with_times"):
        assert atomic.recover_interrupted_writes(str(where)) == ["m.data"]
        assert sorted(os.listdir(where)) == ["m.data", "m.index"] and (where / "m.data").read_bytes() == b"old data"
    capsys.readouterr()
    assert atomic.recover_interrupted_writes(str(tmp_path / "without")) == []
    assert "has changed since: nothing was put back" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "without")) == 5  # the journal and the two earlier files stay


def test_without_hard_links_a_write_is_finished_never_half_undone(tmp_path, monkeypatch):
    """Where no hard link can be made (FAT, some network mounts), a file that existed cannot be put
    back: its rename comes last, after the commit. Ctrl-C at any step of torch2tf into a folder
    whose `checkpoint` file names an older checkpoint leaves a readable folder: the old checkpoint
    named, or the new one whole (the rollback removed the new bundle while the `checkpoint` file,
    not restorable, already named it)."""
    import weights_convert as wc
    from ugatit_common.tf_checkpoint.bundle import resolve_prefix
    from parity_tests.test_convert_cases import _model
    new = {k: v for k, v in _model(1).state_dict().items()}
    for k in range(1, 200):
        shutil.rmtree(tmp_path / "tf", ignore_errors=True)
        wc.torch_to_tf({k: v for k, v in _model(0).state_dict().items()}, str(tmp_path / "tf" / "M.model-1"))
        interrupting = _interrupting_at(k)

        def no_link(*args, **kw):
            raise OSError(errno.EPERM, "Operation not permitted")
        try:
            with monkeypatch.context() as m:
                m.setattr(os, "link", no_link)
                for name in ("replace", "remove", "fsync"):
                    m.setattr(os, name, interrupting(getattr(os, name)))
                wc.torch_to_tf(new, str(tmp_path / "tf" / "M.model-2"))
        except KeyboardInterrupt:
            assert os.path.basename(resolve_prefix(str(tmp_path / "tf"))) in ("M.model-1", "M.model-2"), k
            continue
        assert os.path.basename(resolve_prefix(str(tmp_path / "tf"))) == "M.model-2"
        break
    assert k > 5, k


def _events_on_disk(root) -> dict:
    """{step: number of summary values} in the event files under `root`, as they are on disk."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    counts = {}
    for path in glob.glob(os.path.join(str(root), "**", "events.out.tfevents.*"), recursive=True):
        for event in EventFileLoader(path).Load():
            if event.HasField("summary"):
                counts[event.step] = counts.get(event.step, 0) + len(event.summary.value)
    return counts


def test_every_event_of_a_checkpoints_steps_is_on_disk_before_it_is_saved(tmp_path, monkeypatch):
    """A run killed just after a checkpoint resumes from it, and its event file starts with a purge
    marker at the next step: whatever the killed run had of the checkpoint's own steps but not on
    disk was lost for good (the rho histograms of the last step sat in the writer's buffer). Each
    save now comes after every event of the steps it holds is on disk, as the loss log's lines."""
    from torch_port import checkpoint as ck
    make_data(tmp_path)
    real, seen = ck.save, {}

    def save(folder, prefix, step, *args, **kw):
        seen[step] = _events_on_disk(tmp_path)
        return real(folder, prefix, step, *args, **kw)
    monkeypatch.setattr(ck, "save", save)
    assert port(train_args(4, 1, 2), monkeypatch, tmp_path)[0] == 0
    final = _events_on_disk(tmp_path)
    assert sorted(seen) == [3, 5], seen
    for step, counts in seen.items():
        assert {s: n for s, n in final.items() if s < step} == counts, (step, counts, final)


def test_resume_false_stopped_while_moving_the_older_run_aside_puts_it_back(tmp_path, monkeypatch, capsys):
    """`--resume False` moves the older run's checkpoints, then its samples, aside. Stopped half way
    (Ctrl-C or SIGTERM at any move), it left that run split between the live folder and
    `previous-run-*/` - and the printed command, without `--resume False`, then continued the older
    run from an older checkpoint. Now every file is moved back, the line says --resume False did not
    take effect, and the command it prints keeps `--resume False`."""
    from torch_port.__main__ import main
    make_data(tmp_path)
    assert port(train_args(3), monkeypatch, tmp_path)[0] == 0
    def tree():
        return sorted(os.path.relpath(os.path.join(d, n), tmp_path) for d, _, ns in os.walk(tmp_path) for n in ns
                      if "ugatit-run" not in n)
    before = tree()
    real, outcomes = os.replace, []
    for k in range(1, 40):
        calls = [0]

        def replace(src, dst, *args, **kw):
            if "previous-run-" in str(dst):
                calls[0] += 1
                if calls[0] == k:
                    raise KeyboardInterrupt
            return real(src, dst, *args, **kw)
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        with monkeypatch.context() as m:
            m.setattr(os, "replace", replace)
            rc = main(train_args(3) + ["--resume", "False", "--iteration", "1"])
        err = capsys.readouterr().err
        if rc != 130:
            assert rc == 0 and k > 1, (k, rc, err[-2000:])
            break
        assert tree() == before, k
        line = err.strip().splitlines()[-1]
        assert "--resume False did not take effect" in line and line.endswith("--resume False --iteration 1"), line
        outcomes.append(k)
    assert len(outcomes) > 5, outcomes


def test_a_journal_naming_files_elsewhere_is_not_followed(tmp_path, capsys):
    """A journal of a dead writer names files of its own folder and its own backups only: one
    naming `../x`, a path, or a backup of another name (planted, or damaged) changes nothing
    and is said in one line."""
    from ugatit_common.atomic import recover_interrupted_writes
    (tmp_path / "victim.txt").write_bytes(b"a user's file")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "kept.txt").write_bytes(b"stays")
    for entry in ({"path": "../victim.txt", "was": "absent"}, {"path": str(tmp_path / "victim.txt"), "was": "absent"},
                  {"path": "kept.txt", "was": "../victim.txt"}):
        (tmp_path / "f" / ".tmp-999999999-ab.journal").write_text(json.dumps({"journal": 1, "files": [entry]}))
        assert recover_interrupted_writes(str(tmp_path / "f")) == []
        assert "cannot be rolled back" in capsys.readouterr().out
        assert (tmp_path / "victim.txt").read_bytes() == b"a user's file"
        assert (tmp_path / "f" / "kept.txt").read_bytes() == b"stays"


def test_a_run_from_scratch_moves_an_older_runs_loss_log_and_samples_aside(tmp_path, monkeypatch, capsys):
    """Run 1 (--checkpoint_dir k1) and run 2 (--checkpoint_dir k2) sharing --log_dir and
    --sample_dir, one after the other: run 2 starts from scratch (k2 holds no checkpoint), and its
    loss-log cut (the lines before its counter, 1) emptied run 1's losses.jsonl, and its samples
    replaced run 1's of the same names. An older run's files there are now moved aside, as
    --resume False moves them; a resumed run still continues its own log."""
    from morph.__main__ import main as morph_main
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    shared = ["--log_dir", "lg", "--sample_dir", "sm", "--epoch", "1", "--save_freq", "2"]
    assert morph_main(["train"] + MORPH_TINY + shared + ["--checkpoint_dir", "k1", "--iteration", "2",
                                                         "--print_freq", "1"]) == 0
    [logs] = glob.glob(str(tmp_path / "lg" / "*morphC"))
    [samples] = glob.glob(str(tmp_path / "sm" / "*morphC"))
    run1 = {os.path.join(d, n): digest(os.path.join(d, n)) for d in (logs, samples) for n in os.listdir(d)}
    assert any(p.endswith("losses.jsonl") for p in run1) and any(p.endswith(".png") for p in run1), run1
    with open(os.path.join(logs, "losses.jsonl")) as fh:
        assert len(fh.readlines()) == 2
    capsys.readouterr()
    assert morph_main(["train"] + MORPH_TINY + shared + ["--checkpoint_dir", "k2", "--iteration", "1",
                                                         "--print_freq", "1", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    for path, h in run1.items():  # every file of run 1, unchanged, in its folder's previous-run-*/
        moved = glob.glob(os.path.join(os.path.dirname(path), "previous-run-*", os.path.basename(path)))
        assert [digest(p) for p in moved] == [h], path
    assert "starting from scratch: the older run's" in out
    with open(os.path.join(logs, "losses.jsonl")) as fh:
        assert [json.loads(line)["counter"] for line in fh] == [1]  # run 2's own line
    # run 2 resumed (its checkpoint in k2): nothing is moved, its log goes on
    capsys.readouterr()
    assert morph_main(["train"] + MORPH_TINY + shared + ["--checkpoint_dir", "k2", "--iteration", "1",
                                                         "--epoch", "2", "--print_freq", "1", "--seed", "5"]) == 0
    assert "older run" not in capsys.readouterr().out
    assert len(glob.glob(os.path.join(logs, "previous-run-*"))) == 1
    with open(os.path.join(logs, "losses.jsonl")) as fh:
        assert [json.loads(line)["counter"] for line in fh] == [1, 2]



@pytest.mark.slow
@pytest.mark.tf
def test_a_tf_reference_run_from_scratch_moves_an_older_runs_samples_and_events_aside(tmp_path, monkeypatch, capsys):
    """tf_reference starting from scratch (no checkpoint in its folder) while its sample and log
    folders hold an older run's samples and TensorBoard event file (that run's checkpoints removed):
    it wrote its samples over those of the same names and its event file beside the older one
    (TensorBoard showed the two runs as one). Now they are moved into previous-run-*/, unchanged,
    as the port and Morph move them."""
    from tf_reference.__main__ import main as tf_main
    tf_args = [a for a in TINY if a not in ("--device", "cpu", "--threads", "1")]
    make_data(tmp_path)
    samples = os.path.join(str(tmp_path), "samples", opt.model_dir(CFG))
    logs = os.path.join(str(tmp_path), "logs", opt.model_dir(CFG))
    os.makedirs(samples)
    os.makedirs(logs)
    older = {os.path.join(samples, "real_A_000_00001.png"): b"older run's sample",
             os.path.join(samples, "fake_B_000_00001.png"): b"older run's sample B",
             os.path.join(logs, "events.out.tfevents.1.older"): b"older run's events"}
    for path, data in older.items():
        with open(path, "wb") as fh:
            fh.write(data)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert tf_main(tf_args + ["--iteration", "1", "--epoch", "1", "--print_freq", "1"]) == 0
    out = capsys.readouterr().out
    assert "starting from scratch: the older run's" in out, out
    for path, data in older.items():  # each in its folder's previous-run-*/, unchanged
        moved = glob.glob(os.path.join(os.path.dirname(path), "previous-run-*", os.path.basename(path)))
        assert [digest_bytes(p) for p in moved] == [data], path
    assert os.path.getsize(os.path.join(samples, "real_A_000_00001.png")) > 0  # this run's own sample
    assert [n for n in os.listdir(logs) if n.startswith("events.")] != []

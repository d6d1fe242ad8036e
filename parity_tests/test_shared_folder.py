"""A checkpoint folder shared between hosts (NFS: training on host A, a test phase, load or torch2tf
on host B; multi-node training): every reader and writer sweeps the temp files of writers that are
gone, judged by their pid - a pid of this machine. Host A's live writer's pid is dead on host B (or
an unrelated process there): B removed A's temp files mid-save. Temp names now carry their host
(`.tmp-<pid>@<host id>-...`) and only this host's are judged by pid; another host's go only when
older than atomic.STALE_S. Another host is simulated in this process: its host name and a pid
that is dead here."""
from __future__ import annotations

import os
import socket
import time

from parity_tests.test_file_names import _dead_pid
from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from parity_tests.test_nothing_lost import TINY, ckdir, make_data, port, resdir, train_args
from ugatit_common import atomic
from ugatit_common import checkpoint_policy as policy

OTHER_HOST = "node-a.cluster.example"


def _pretend(monkeypatch) -> dict:
    """A dict that, while it holds `host` and `pid`, makes this process write as that pid on that
    host (what the atomic writers read: the host name and os.getpid); empty: as itself."""
    ident = {}
    real_host, real_pid = socket.gethostname, os.getpid
    monkeypatch.setattr(socket, "gethostname", lambda: ident.get("host") or real_host())
    monkeypatch.setattr(os, "getpid", lambda: ident.get("pid") or real_pid())
    return ident


def _temps(folder) -> set:
    return {n for n in os.listdir(folder) if n.startswith(".tmp-")}


def test_a_sweep_judges_by_pid_only_its_own_hosts_temp_files(tmp_path, monkeypatch):
    """Another host's temp files (a dead pid here) stay through every sweep; when older than a day
    they go (a killed host's left-overs). This host's dead writers' files go, in the new and the
    older name (no host); a live writer's stay."""
    dead = _dead_pid()
    ident = _pretend(monkeypatch)
    ident.update(host=OTHER_HOST, pid=dead)
    other = atomic.temp_prefix()
    ident.clear()
    here = atomic.temp_prefix()
    assert other != here and other.startswith(f".tmp-{dead}@") and here.startswith(f".tmp-{os.getpid()}@")
    assert len(other) == len(f".tmp-{dead}@12345678-") and "/" not in other  # short: 8 characters of host id
    names = {other + "live.safetensors": True, other + "ab.journal-new": True,  # another host's write in progress
             other + "old.safetensors": False,                                  # left more than a day ago
             f".tmp-{dead}@{atomic.host_id()}-x.png": False,                    # killed here
             f".tmp-{dead}-older.png": False,                                   # killed here, older name
             here + "mine.png": True}                                           # this process's
    assert atomic.abandoned(str(tmp_path / (other + "live.safetensors"))) is False
    for k, (sweep, removes) in enumerate(((atomic.sweep_dead_temps, True),
                                          (lambda f: policy.sweep_temp(f, log=lambda m: None), True),
                                          (atomic.recover_interrupted_writes, False))):  # journals' alone
        folder = tmp_path / str(k)
        folder.mkdir()
        for n in names:
            (folder / n).write_bytes(b"x")
        stale = time.time() - atomic.STALE_S - 60
        os.utime(folder / (other + "old.safetensors"), (stale, stale))
        sweep(str(folder))
        assert sorted(os.listdir(folder)) == sorted(n for n in names if names[n] or not removes), k


def test_another_hosts_live_save_survives_every_reader_here(tmp_path, monkeypatch, capsys):
    """Host A saves into a run folder (a publish_together: temp files, a backup of the file it
    replaces, its locked journal) and writes a page into a results folder; its pid is dead here.
    Mid-save, on this host: the test phase, load_any, torch2tf (its prepare and its sweep of the
    output folder, the run folder itself with --continue_run) and each sweep run. A's files all
    stay, and A's save then completes."""
    import weights_convert as wc
    from torch_port import checkpoint as ckpt
    make_data(tmp_path)
    assert port(train_args(2), monkeypatch, tmp_path, capsys)[0] == 0
    folder, results = ckdir(tmp_path), resdir(tmp_path)
    os.makedirs(results, exist_ok=True)
    latest = open(os.path.join(folder, "latest"), "rb").read()
    a_pid, seen = _dead_pid(), {}
    real_replace = os.replace
    ident = _pretend(monkeypatch)

    def readers_here():
        """This host's commands, mid-save of A: A's files are never removed."""
        a_files = _temps(folder) | {os.path.join("results", n) for n in _temps(results)}
        assert any(n.endswith(".journal") for n in a_files) and any(n.endswith(".keep") for n in a_files)
        assert all(n.split("/")[-1].startswith(f".tmp-{a_pid}") for n in a_files), a_files

        def left():
            return {n for n in a_files if not os.path.exists(os.path.join(folder, n) if "/" not in n
                                                             else os.path.join(results, n.split("/")[1]))}
        rc, out, err = port(TINY + ["--phase", "test"], monkeypatch, tmp_path, capsys)
        assert rc == 0, err
        assert not left(), ("test phase", left())
        assert ckpt.load_any(folder)["step"] == 3
        assert not left(), ("load_any", left())
        assert wc.main(["torch2tf", folder, os.path.join(folder, "UGATIT_light.model"), "--continue_run"]) == 0
        assert not left(), ("torch2tf", left())
        for sweep in (atomic.recover_interrupted_writes, atomic.sweep_dead_temps, policy.sweep_temp):
            sweep(folder)
            sweep(results)
            assert not left(), (sweep, left())
        seen["checked"] = a_files

    def replace(src, dst, *a, **k):
        if ident and "checked" not in seen and not str(src).endswith("-part"):  # A renames its first file
            as_a = dict(ident)
            ident.clear()
            try:
                readers_here()
            finally:
                ident.update(as_a)
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    ident.update(host=OTHER_HOST, pid=a_pid)
    with atomic.atomic_output(os.path.join(results, "index-a.html")) as page:
        open(page, "w").write("A's page")
        atomic.write_files_atomic({os.path.join(folder, "latest"): latest,
                                   os.path.join(folder, "notes-a.txt"): b"A's save"})
    ident.clear()
    assert seen.get("checked"), "the readers did not run mid-save"
    assert open(os.path.join(folder, "notes-a.txt"), "rb").read() == b"A's save"
    assert open(os.path.join(results, "index-a.html")).read() == "A's page"
    assert not [n for n in _temps(folder) | _temps(results) if f".tmp-{a_pid}" in n], _temps(folder)


def test_a_training_of_the_same_pid_on_another_host_is_not_taken_for_this_process(tmp_path):
    """The output guard let a command write into a running training's folder when the run's pid
    was this process's own: on a folder shared between hosts the same pid may be another host's
    training. The owner file names its host: only this host's pid is this process."""
    import fcntl
    import json
    from ugatit_common import output_guard, run_lock
    run = tmp_path / "run"
    run.mkdir()
    with open(run / run_lock.LOCK_NAME, "wb") as held:  # the other host's training holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        for host, refused in ((OTHER_HOST, True), (socket.gethostname(), False), (None, False)):
            (run / run_lock.OWNER_NAME).write_text(json.dumps({"pid": os.getpid(), "host": host}))
            try:
                output_guard.recheck_live_run(str(run / "a2b.onnx"))
                said = None
            except output_guard.OutputRefused as e:
                said = str(e)
            assert (said is not None) == refused, (host, said)
            if refused:
                assert f"on {OTHER_HOST}" in said and "a training run took meanwhile" in said, said
            try:  # a test phase's results folder inside the run's folder (own_result_folder)
                with output_guard.own_result_folder(str(run / "results")):
                    said = None
            except output_guard.OutputRefused as e:
                said = str(e)
            assert (said is not None) == refused, (host, said)
            if refused:
                assert f"on {OTHER_HOST}" in said and "a folder of a running training" in said, said
            assert not (run / "results").exists()  # made for it and left empty: gone again


def test_another_hosts_temp_file_with_this_pid_is_judged_by_its_age(tmp_path, monkeypatch):
    """The same pid on another host is not this process: another host's temp file that carries
    this process's pid goes once older than a day (a killed host's left-over), as any other host's
    does; a younger one stays. This process's own files stay whatever their age."""
    ident = _pretend(monkeypatch)
    ident.update(host=OTHER_HOST)
    other = atomic.temp_prefix()  # this pid, another host
    ident.clear()
    assert other.startswith(f".tmp-{os.getpid()}@") and other != atomic.temp_prefix()
    old, young = tmp_path / (other + "old.png"), tmp_path / (other + "young.png")
    mine = tmp_path / (atomic.temp_prefix() + "mine.png")
    stale = time.time() - atomic.STALE_S - 60
    for p in (old, young, mine):
        p.write_bytes(b"x")
    for p in (old, mine):
        os.utime(p, (stale, stale))
    assert atomic.abandoned(str(old)) is True and atomic.abandoned(str(young)) is False
    assert atomic.abandoned(str(mine)) is False
    assert atomic.sweep_dead_temps(str(tmp_path)) == [old.name]
    assert sorted(os.listdir(tmp_path)) == sorted([young.name, mine.name])


def test_a_rolled_back_write_names_its_writers_host_when_it_is_another(tmp_path, monkeypatch, capsys):
    """recover_interrupted_writes says whose killed write it rolled back: `process <pid>`, and for
    another host's journal (a folder shared over NFS) `on another host`, since that pid means
    nothing here; this host's, and an older version's name without a host, name the pid alone."""
    import json
    dead = _dead_pid()
    ident = _pretend(monkeypatch)
    ident.update(host=OTHER_HOST)
    other_id = atomic.host_id()
    ident.clear()
    assert other_id != atomic.host_id()
    for k, (prefix, said) in enumerate(((f".tmp-{dead}@{other_id}-", " on another host"),
                                        (f".tmp-{dead}@{atomic.host_id()}-", ""), (f".tmp-{dead}-", ""))):
        folder = tmp_path / str(k)
        folder.mkdir()
        (folder / "m.data").write_bytes(b"old data")
        os.link(folder / "m.data", folder / f"{prefix}bb.keep")
        (folder / "new.tmp").write_bytes(b"new data")
        entries = [{"path": "m.data", "was": f"{prefix}bb.keep", "new": atomic._identity(os.lstat(folder / "new.tmp"))}]
        (folder / f"{prefix}dd.journal").write_text(json.dumps({"journal": 3, "files": entries}))
        os.replace(folder / "new.tmp", folder / "m.data")  # killed after its first rename
        capsys.readouterr()
        assert atomic.recover_interrupted_writes(str(folder)) == ["m.data"], k
        out = capsys.readouterr().out
        assert f"(process {dead}{said} stopped between its renames)" in out, (k, out)
        assert os.listdir(folder) == ["m.data"] and (folder / "m.data").read_bytes() == b"old data", k


def test_every_temp_name_the_writers_make_carries_this_host(tmp_path, monkeypatch):
    """Every temp name of the atomic writers starts with temp_prefix (pid and host id): a
    published file's temp, a journal (its `-new` and `-part` names), a backup, and a port
    checkpoint's three temps (checkpoint.save makes its own), a TF checkpoint's shard, index and
    `checkpoint` file (BundleWriter's, the state file's) - one without the host would be
    judged by its pid on another host (removed mid-save), or named as this host's."""
    from torch_port import build_ugatit
    from torch_port import checkpoint as ckpt
    from ugatit_common import options as opt
    names = set()

    def seen(real):
        def op(src, dst, *a, **k):
            names.update({os.path.basename(str(src)), os.path.basename(str(dst))})
            return real(src, dst, *a, **k)
        return op
    for name in ("rename", "replace", "link"):
        monkeypatch.setattr(os, name, seen(getattr(os, name)))
    (tmp_path / "a").write_bytes(b"old")
    atomic.write_files_atomic({str(tmp_path / "a"): b"new", str(tmp_path / "b"): b"b"})
    with atomic.atomic_output(str(tmp_path / "c.txt")) as tmp:
        open(tmp, "w").write("c")
    model = build_ugatit(opt.config_from(light=True, img_size=32, ch=2, n_dis=4))
    ckpt.save(str(tmp_path / "ck"), "UGATIT_light", 1, model, {})
    import numpy as np

    from ugatit_common.tf_checkpoint.bundle import BundleWriter, write_checkpoint_state
    (tmp_path / "tf").mkdir()
    with BundleWriter(str(tmp_path / "tf" / "x.model-1")) as w:  # a TF checkpoint's shard and index
        w.add("dense/kernel", np.zeros((2, 2), np.float32))
        w.finish()
    write_checkpoint_state(str(tmp_path / "tf"), "x.model-1")
    temps = {n for n in names if n.startswith(".tmp-")}
    for end in (".keep", atomic.JOURNAL + "-new", atomic.JOURNAL + "-part", ".txt", ".safetensors", ".pt",
                ".data.tmp", ".index.tmp"):
        assert any(n.endswith(end) for n in temps), (end, temps)
    assert all(n.startswith(atomic.temp_prefix()) for n in temps), temps

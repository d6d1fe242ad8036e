"""Issue 19, parts 2, 4, 5, 6: outputs only where they may go (ugatit_common.output_guard), no
non-finite weights used, typed flags never ignored by Morph, and the loose ends (DataLoader worker
errors, --seed, `morph --checkpoint FILE`). Every refusal: exit 2, one `error:` line, and every
file and folder under the test's root exactly as before (hashed). Tiny models (light, 32 px,
ch 2, n_dis 4), built directly (no training) so the whole file stays fast."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat

import cv2
import numpy as np
import pytest
import torch

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from ugatit_common import options as opt
from ugatit_common import run_lock
from ugatit_common.demo_data import make_demo_dataset

CFG = opt.config_from(light=True, dataset="t", img_size=32, ch=2, n_dis=4, augment_flag=False)
MORPH_CFG = dict(CFG, morph_config="C", idp_weight=1.0, g_cam=True, z_dim=16, w_dim=16, mlp_layers=2)
PORT_W = "UGATIT_light.model-3.safetensors"
MORPH_W = "MorphUGATIT_C.model-2.safetensors"
TF_PREFIX = "UGATIT_light.model-3"


# -- the world every test starts from: checkpoints of each kind, files of other kinds ------------------

def _port_folder(root, cfg=CFG):
    return os.path.join(root, "checkpoint", opt.model_dir(cfg))


def _morph_folder(root, cfg=MORPH_CFG):
    from morph.train import morph_paths
    return morph_paths(dict(cfg, checkpoint_dir=os.path.join(root, "checkpoint"))).checkpoint


def _save_port(folder, model, cfg=CFG, step=3):
    from torch_port import checkpoint as ck
    ck.save(folder, opt.model_name(cfg), step, model, {"config": ck.plain_config(cfg), "run": "r1", "counter": step,
                                                       "G_optim": {}, "D_optim": {}})


def _save_morph(folder, model, cfg=MORPH_CFG, step=2):
    from torch_port import checkpoint as ck
    ck.save(folder, f"MorphUGATIT_{cfg['morph_config']}", step, model,
            {"kind": "morph", "morph_config": cfg["morph_config"], "config": ck.plain_config(cfg), "run": "m1",
             "counter": step})


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), path)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """dataset/t, a port checkpoint, the same weights as an official-layout TF checkpoint, a Morph
    config-C checkpoint, and in other/ one file of every other kind a command may meet."""
    import weights_convert as wc
    from morph.model import MorphUGATIT
    from torch_port import build_ugatit
    root = str(tmp_path_factory.mktemp("guard_world"))
    make_demo_dataset(root, "t", size=32, n_train=2, n_test=1)
    torch.manual_seed(0)
    port = build_ugatit(CFG)
    _save_port(_port_folder(root), port)
    wc.torch_to_tf({k: v for k, v in port.state_dict().items()}, os.path.join(root, "tf", TF_PREFIX))
    _save_morph(_morph_folder(root), MorphUGATIT(MORPH_CFG))
    other = os.path.join(root, "other")
    os.makedirs(other)
    cv2.imwrite(os.path.join(other, "photo.png"), np.full((8, 8, 3), 200, np.uint8))
    with open(os.path.join(other, "graph.meta"), "wb") as fh:
        fh.write(b"\x0a\x05hello")                                    # a .meta by its name
    shutil.copy(os.path.join(_port_folder(root), PORT_W.replace(".safetensors", ".state.pt")),
                os.path.join(other, "run.state.pt"))
    shutil.copy(os.path.join(root, "tf", TF_PREFIX + ".index"), os.path.join(other, "old.index"))
    shutil.copy(os.path.join(_port_folder(root), PORT_W), os.path.join(other, "weights.safetensors"))
    _tiny_onnx(os.path.join(other, "model.onnx"))
    with open(os.path.join(other, "notes.txt"), "w") as fh:
        fh.write("my notes\n")
    open(os.path.join(other, "empty.bin"), "w").close()
    np.savez(os.path.join(other, "codes.npz"), w=np.zeros(3, np.float32))
    return root


@pytest.fixture
def world(template, tmp_path):
    root = str(tmp_path / "w")
    shutil.copytree(template, root, symlinks=True)
    return root


def snapshot(root):
    """Every folder, file (content hash and mode) and link under `root`."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                with open(p, "rb") as fh:
                    out[rel] = (hashlib.sha256(fh.read()).hexdigest(), stat.S_IMODE(st.st_mode))
    return out


def one_line(err):
    """The refusal's one `error:` line, and nothing else on stderr."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


def error_line(err):
    """The one `error:` line among a TF checkpoint's notes (settings it does not record) and a
    progress bar."""
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- the writers ----------------------------------------------------------------------------------------

class Writer:
    """One command that writes a model file: how to call it, what it reads, what it writes."""

    def __init__(self, name, kind, ext, default, same_kind):
        self.name, self.kind, self.ext, self.default, self.same_kind = name, kind, ext, default, same_kind

    def __repr__(self):
        return self.name

    def input_folder(self, root):
        return {"tf2torch": os.path.join(root, "tf"), "tf2onnx": os.path.join(root, "tf"),
                "torch2tf": _port_folder(root), "export": _port_folder(root), "morph": _morph_folder(root)}[self.name]

    def input_file(self, root):
        """A file the command reads."""
        if self.name in ("tf2torch", "tf2onnx"):
            return os.path.join(root, "tf", TF_PREFIX + ".index")
        if self.name == "morph":
            return os.path.join(_morph_folder(root), MORPH_W)
        return os.path.join(_port_folder(root), PORT_W)

    def argv(self, root, out, *extra):
        tf_flags = ["--img_size", "32", "--smoothing", "True"]  # recorded nowhere in a .meta-less TF checkpoint
        onnx_flags = ["--no_verify", "--tf", "off", "--threads", "1"]
        if self.name == "tf2torch":
            return ["tf2torch", os.path.join(root, "tf"), out] + tf_flags + list(extra)
        if self.name == "torch2tf":
            return ["torch2tf", self.input_file(root), out, "--weights_only"] + list(extra)
        if self.name == "tf2onnx":
            return ["tf2onnx", os.path.join(root, "tf"), out, "--direction", "a2b"] + tf_flags + onnx_flags + list(extra)
        if self.name == "export":
            return ["export", _port_folder(root), out, "--direction", "a2b"] + onnx_flags + list(extra)
        return ["export", _morph_folder(root), out, "--samples", "2"] + onnx_flags + list(extra)

    def call(self, argv) -> int:
        if self.name in ("tf2torch", "torch2tf", "tf2onnx"):
            import weights_convert as wc
            return wc.main(argv)
        if self.name == "export":
            from torch_port.__main__ import main
            return main(argv)
        from morph.__main__ import main
        return main(argv)

    def run(self, root, out, *extra, capsys):
        argv = self.argv(root, out, *extra)
        capsys.readouterr()
        rc = self.call(argv)
        got = capsys.readouterr()
        return rc, got.out, got.err


WRITERS = [Writer("tf2torch", "safetensors", ".safetensors", "UGATIT_light-step3.safetensors", "weights.safetensors"),
           Writer("torch2tf", "tf-index", ".index", TF_PREFIX, None),
           Writer("tf2onnx", "onnx", ".onnx", "a2b.onnx", "model.onnx"),
           Writer("export", "onnx", ".onnx", "a2b.onnx", "model.onnx"),
           Writer("morph", "onnx", ".onnx", "morph.onnx", "model.onnx")]


def refused(writer, root, out, *extra, capsys, words=()):
    before = snapshot(root)
    rc, _, err = writer.run(root, out, *extra, capsys=capsys)
    line = one_line(err)
    assert rc == 2, (writer, out, err)
    for w in words:
        assert w in line, (writer, out, line)
    assert snapshot(root) == before, (writer, out)  # nothing written, moved, created or deleted
    return line


@pytest.mark.parametrize("writer", [w if w.kind != "onnx" else pytest.param(w, marks=pytest.mark.slow)
                                    for w in WRITERS], ids=repr)  # an ONNX export: ~5 s
def test_a_writers_temp_files_left_by_a_kill_are_removed_by_the_next_write_there(writer, world, capsys):
    """Killed (SIGKILL) before a rename of its write, a command left its temp files - hidden,
    full-size - in the output folder for good: the same command run again wrote its output
    beside them. The next command writing into that folder now removes the temp files of a
    writer no longer running (never a running one's: ugatit_common.atomic.sweep_dead_temps)."""
    from parity_tests.test_nothing_lost import _killed_at
    out_dir = os.path.join(world, "out")
    os.makedirs(out_dir)
    out = os.path.join(out_dir, writer.default)
    def publishing(name, args):  # the rename of an output's temp file onto its name
        return name == "replace" and not os.path.basename(str(args[1])).startswith(".")
    assert _killed_at(1, lambda: writer.call(writer.argv(world, out)), before=True, only=publishing)
    left = [n for n in os.listdir(out_dir) if n.startswith(".tmp-")]
    assert left and not [n for n in os.listdir(out_dir) if not n.startswith(".")], os.listdir(out_dir)
    rc, _, err = writer.run(world, out, capsys=capsys)
    assert rc == 0, err
    assert not [n for n in os.listdir(out_dir) if n.startswith(".tmp-")], os.listdir(out_dir)


# -- 1. never an input -------------------------------------------------------------------------------

@pytest.mark.parametrize("writer", WRITERS, ids=repr)
def test_an_input_is_never_an_output(writer, world, capsys):
    src = writer.input_file(world)
    rel = os.path.relpath(src, os.getcwd())
    parts = os.path.split(os.path.dirname(src))
    roundabout = os.path.join(parts[0], parts[1], "..", parts[1], os.path.basename(src))
    link = os.path.join(world, "link" + writer.ext)
    os.symlink(src, link)
    hard = os.path.join(world, "hard" + writer.ext)
    os.link(src, hard)
    for out in (src, rel, roundabout, link, hard):
        for extra in ((), ("--overwrite",)):
            refused(writer, world, out, *extra, capsys=capsys, words=("input",))


# -- 2. never inside the input checkpoint's folder (torch2tf --continue_run: the same run, in TF) -------

@pytest.mark.parametrize("writer", WRITERS, ids=repr)
def test_never_inside_the_input_checkpoint_folder(writer, world, capsys):
    folder = writer.input_folder(world)
    for out in (os.path.join(folder, "new" + writer.ext), os.path.join(folder, "sub", "new" + writer.ext), folder,
                folder + os.sep):
        refused(writer, world, out, capsys=capsys, words=("holds", folder))
    if writer.name == "export":  # the input named by its weights file: its folder is still the run's
        from torch_port.__main__ import main
        before = snapshot(world)
        capsys.readouterr()
        rc = main(["export", writer.input_file(world), os.path.join(folder, "x.onnx"), "--direction", "a2b"])
        assert rc == 2 and "holds" in one_line(capsys.readouterr().err) and snapshot(world) == before


def test_torch2tf_continue_run_writes_beside_its_input(world, capsys):
    """The documented way a port run changes framework, asked for by --continue_run: the TF
    checkpoint goes beside the port's (the checkpoint policy reads both; tf_reference's message
    prints this command). The other rules still hold with it."""
    from ugatit_common import checkpoint_policy as policy
    w = WRITERS[1]
    assert w.name == "torch2tf"
    folder = w.input_folder(world)
    refused(w, world, os.path.join(folder, "UGATIT_light.model"), capsys=capsys, words=("holds", "--continue_run"))
    rc, out, err = w.run(world, os.path.join(folder, "UGATIT_light.model"), "--continue_run", capsys=capsys)
    assert rc == 0, err
    assert [(f.step, f.framework, f.complete) for f in policy.inventory(folder)] == [(3, "torch", True),
                                                                                   (3, "tf", True)]
    # ... never over the checkpoint it reads, --overwrite or not; over the TF one it wrote only with --overwrite
    for extra in (("--continue_run",), ("--continue_run", "--overwrite")):
        refused(w, world, os.path.join(folder, PORT_W), *extra, capsys=capsys, words=("input",))
    refused(w, world, os.path.join(folder, "UGATIT_light.model-3"), "--continue_run", capsys=capsys,
            words=("--overwrite",))
    index = os.path.join(folder, TF_PREFIX + ".index")
    inode = os.stat(index).st_ino
    rc, out, err = w.run(world, os.path.join(folder, "UGATIT_light.model-3"), "--continue_run", "--overwrite",
                         capsys=capsys)
    assert rc == 0 and os.stat(index).st_ino != inode, err


# -- 3. never inside a folder a live run owns ------------------------------------------------------------

@pytest.mark.parametrize("writer", WRITERS, ids=repr)
def test_never_inside_a_live_runs_folder(writer, world, capsys):
    live = os.path.join(world, "checkpoint", "another_run")
    shutil.copytree(_port_folder(world), live)
    with run_lock.acquire(live, command="python -m torch_port --dataset another"):
        for out in (os.path.join(live, "new" + writer.ext), os.path.join(live, "sub", "new" + writer.ext),
                    os.path.join(live, PORT_W), live):
            for extra in ((), ("--overwrite",)):
                line = refused(writer, world, out, *extra, capsys=capsys, words=("running training", live))
                assert f"pid {os.getpid()}" in line and "python -m torch_port --dataset another" in line
    # the run ended: the folder is an ordinary one again (new files may go there; not a checkpoint among
    # its checkpoints: test_a_checkpoint_never_joins_another_runs_checkpoints)
    if writer.name == "torch2tf":
        rc, _, err = writer.run(world, os.path.join(live, "converted"), capsys=capsys)
        assert rc == 0 and os.path.isfile(os.path.join(live, "converted-3.index")), err


# -- 4. never over a file of another kind, --overwrite or not ----------------------------------------------

def _other_kinds(writer, world):
    other = os.path.join(world, "other")
    names = ["photo.png", "graph.meta", "run.state.pt", "old.index", "notes.txt", "empty.bin", "codes.npz"]
    names += ["weights.safetensors", "model.onnx"]
    names.remove(writer.same_kind) if writer.same_kind in names else None
    out = [os.path.join(other, n) for n in names]
    # content decides, not the name: a PNG called like the output
    disguised = os.path.join(other, "disguised" + writer.ext)
    shutil.copy(os.path.join(other, "photo.png"), disguised)
    return out + [disguised]


@pytest.mark.parametrize("writer", [w for w in WRITERS if w.name != "torch2tf"], ids=repr)
def test_never_over_a_file_of_another_kind(writer, world, capsys):
    for out in _other_kinds(writer, world):
        for extra in ((), ("--overwrite",)):
            refused(writer, world, out, *extra, capsys=capsys, words=("never replaced",))
    # in a folder given as the output, the default name is held by another kind of file
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    shutil.copy(os.path.join(world, "other", "photo.png"), os.path.join(dest, writer.default))
    refused(writer, world, dest, "--overwrite", capsys=capsys, words=("PNG image", writer.default))
    # a folder where the output file goes
    os.makedirs(os.path.join(world, "dest2", writer.default))
    refused(writer, world, os.path.join(world, "dest2"), "--overwrite", capsys=capsys, words=("a folder",))


def test_torch2tf_never_over_a_file_of_another_kind(world, capsys):
    w = WRITERS[1]
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    other = os.path.join(world, "other")
    prefix = os.path.join(dest, "m-3")
    for src, target in (("photo.png", prefix + ".index"), ("notes.txt", prefix + ".data-00000-of-00001"),
                        ("weights.safetensors", prefix + ".index"), ("notes.txt", os.path.join(dest, "checkpoint"))):
        shutil.copy(os.path.join(other, src), target)
        for extra in ((), ("--overwrite",)):
            refused(w, world, prefix, *extra, capsys=capsys, words=("never replaced",))
        os.remove(target)
    for name in ("photo.png", "notes.txt"):  # the prefix itself names an existing file
        refused(w, world, os.path.join(other, name), "--overwrite", capsys=capsys, words=("never replaced",))


def test_never_half_of_a_checkpoint_nor_where_no_folder_can_be(world, capsys):
    """tf2torch over another (stopped) run's weights: the issue's case of TF weights paired with
    that run's Adam state on its next resume; and an output under a file, for every writer."""
    old_run = os.path.join(world, "checkpoint", "old_run")
    shutil.copytree(_port_folder(world), old_run)
    for extra in ((), ("--overwrite",)):
        refused(WRITERS[0], world, os.path.join(old_run, PORT_W), *extra, capsys=capsys,
                words=("state", "never replaced"))
    # the weights by another case of the extension: on a case-insensitive file system (macOS, Windows)
    # the same file as PORT_W, which --overwrite replaced (the name was not read as a checkpoint's)
    upper = os.path.join(old_run, PORT_W.replace(".safetensors", ".SAFETENSORS"))
    shutil.copy(os.path.join(old_run, PORT_W), upper)  # (what that file system shows by this name)
    refused(WRITERS[0], world, upper, "--overwrite", capsys=capsys, words=("state", "never replaced"))
    for writer in WRITERS:
        refused(writer, world, os.path.join(world, "other", "photo.png", "new" + writer.ext), capsys=capsys,
                words=("not a folder",))


# -- never among another run's checkpoints; one command per output; extensions in any case ------------

def test_a_checkpoint_never_joins_another_runs_checkpoints(world, capsys):
    """torch2tf into a folder holding another (stopped) run's checkpoints wrote a newer TF
    checkpoint there, and that run's next `python -m torch_port` resumed from it: one run
    continued from another's weights, silently. An output named as a checkpoint goes only into a
    folder of its own (or, --continue_run, its input's: the same run)."""
    torch2tf, tf2torch = WRITERS[1], WRITERS[0]
    assert (torch2tf.name, tf2torch.name) == ("torch2tf", "tf2torch")
    old_run = os.path.join(world, "checkpoint", "old_run")
    shutil.copytree(_port_folder(world), old_run)                   # a port run at step 3
    for out, extra in ((old_run, ()), (os.path.join(old_run, "UGATIT_light.model-9"), ("--overwrite",))):
        refused(torch2tf, world, out, *extra, capsys=capsys,
                words=("other checkpoints", "UGATIT_light.model-3 (PyTorch)", "continue from another's weights"))
    refused(tf2torch, world, os.path.join(old_run, "UGATIT_light.model-9.safetensors"), capsys=capsys,
            words=("other checkpoints",))
    rc, _, err = tf2torch.run(world, os.path.join(old_run, "loose.safetensors"), capsys=capsys)  # not read as one
    assert rc == 0, err
    # a folder of its own; the checkpoint it holds is replaced there with --overwrite
    fresh = os.path.join(world, "tf_run")
    rc, _, err = torch2tf.run(world, fresh + os.sep, capsys=capsys)
    assert rc == 0 and os.path.isfile(os.path.join(fresh, TF_PREFIX + ".index")), err
    refused(torch2tf, world, fresh, capsys=capsys, words=("--overwrite",))
    rc, _, err = torch2tf.run(world, fresh, "--overwrite", capsys=capsys)
    assert rc == 0, err


def _claim_in_another_process(paths):
    import subprocess
    import sys

    from parity_tests.conftest import ROOT
    p = subprocess.Popen([sys.executable, "-c", "import sys, time; from ugatit_common import output_guard as g\n"
                          "for p in sys.argv[1:]: g.claim(p)\nprint('held', flush=True); time.sleep(600)"] + list(paths),
                         env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_one_command_at_a_time_per_output(world, capsys):
    """Two commands given the same output at once both found nothing there, and the later one
    silently replaced the earlier one's file (two exports into one .onnx: both exit 0). Each
    output is claimed for the command's life (output_guard.claim): the second command is refused
    naming the first; a killed holder blocks nothing; a command that ends leaves no claim."""
    import signal
    from ugatit_common.output_guard import CLAIM
    tf2torch, torch2tf = WRITERS[0], WRITERS[1]
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    weights, prefix = os.path.join(dest, "w.safetensors"), os.path.join(dest, "m-3")
    holder = _claim_in_another_process([weights, prefix + ".data-00000-of-00001"])
    try:
        refused(tf2torch, world, weights, capsys=capsys, words=("being written by another command", f"pid {holder.pid}"))
        refused(torch2tf, world, prefix, capsys=capsys, words=("being written by another command", f"pid {holder.pid}"))
        rc, _, err = tf2torch.run(world, os.path.join(dest, "other.safetensors"), capsys=capsys)  # another output: free
        assert rc == 0, err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        holder.stdout.close()
    for w, out in ((tf2torch, weights), (torch2tf, prefix)):
        rc, _, err = w.run(world, out, capsys=capsys)
        assert rc == 0, err
    assert os.path.isfile(weights) and os.path.isfile(prefix + ".index")
    assert not [n for n in os.listdir(dest) if CLAIM in n]                        # the killed one's taken over too


def test_a_long_output_name_is_claimed_too(world, capsys):
    """An output name the file system takes (242 bytes) was refused as "output folder ... is not
    writable: File name too long": its claim file `.<name>.ugatit-out.owner` is longer than a file
    name may be. Such a claim now carries a hashed name (two long names still claim apart); a name
    no file system takes is refused as what it is."""
    from ugatit_common import output_guard as guard
    tf2torch, torch2tf = WRITERS[0], WRITERS[1]
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    long_w = os.path.join(dest, "w" * 230 + ".safetensors")                  # 242 bytes
    rc, _, err = tf2torch.run(world, long_w, capsys=capsys)
    assert rc == 0 and os.path.isfile(long_w), err
    prefix = os.path.join(dest, "m" * 230 + "-3")                            # + .data-00000-of-00001: 252
    rc, _, err = torch2tf.run(world, prefix, capsys=capsys)
    assert rc == 0 and os.path.isfile(prefix + ".index"), err
    assert sorted(os.listdir(dest)) == sorted([os.path.basename(long_w), "checkpoint", "ugatit-run.json"] +
                                              [os.path.basename(prefix) + s for s in (".index", ".data-00000-of-00001")])
    a, b = os.path.join(dest, "x" * 240 + "a.onnx"), os.path.join(dest, "x" * 240 + "b.onnx")
    try:
        assert guard.claim(a) and guard.claim(b)                             # two long names, two claims
    finally:
        guard.release_claims([a, b])
    assert sorted(os.listdir(dest))[0] != "." and not [n for n in os.listdir(dest) if guard.CLAIM in n]
    refused(tf2torch, world, os.path.join(dest, "w" * 250 + ".safetensors"), capsys=capsys,
            words=("262 bytes", "shorter name"))


def test_extensions_count_in_any_case(world, capsys):
    """A `.ONNX` export was 'a file of unknown kind' to its own --overwrite (refused for ever), and
    tf2torch wrote safetensors into a `.PT`: the extension now counts in any case."""
    from ugatit_common.output_guard import kind_of
    other = os.path.join(world, "other")
    shutil.copy(os.path.join(other, "model.onnx"), os.path.join(other, "M.ONNX"))
    assert kind_of(os.path.join(other, "M.ONNX")) == "onnx"
    w = WRITERS[0]
    out = os.path.join(world, "W.PT")
    rc, _, err = w.run(world, out, capsys=capsys)
    assert rc == 0 and kind_of(out) == "torch-pt", err
    refused(w, world, out, capsys=capsys, words=("--overwrite",))
    rc, _, err = w.run(world, out, "--overwrite", capsys=capsys)
    assert rc == 0, err


def test_morph_codes_file_of_another_model_is_never_written(world, capsys):
    """`morph export x.ONNX --overwrite` replaced x_w.npz, the codes file that x.onnx (another file
    on a case-sensitive file system) names too: refused now, --overwrite or not, and also when the
    codes file is missing (new codes would be taken for x.onnx's); --overwrite of x.onnx itself
    still replaces the pair."""
    writer = next(w for w in WRITERS if w.name == "morph")
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    model, codes = os.path.join(dest, "x.onnx"), os.path.join(dest, "x_w.npz")
    shutil.copy(os.path.join(world, "other", writer.same_kind), model)
    _morph_codes(codes)
    upper = os.path.join(dest, "x.ONNX")
    for extra in ((), ("--overwrite",)):
        refused(writer, world, upper, *extra, capsys=capsys, words=(repr(codes), repr(model), repr(upper)))
    os.remove(codes)
    refused(writer, world, upper, "--overwrite", capsys=capsys, words=(repr(codes), repr(model), "missing"))
    _morph_codes(codes)
    before = {p: os.stat(p).st_ino for p in (model, codes)}
    rc, _, err = writer.run(world, model, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert all(os.stat(p).st_ino != before[p] for p in (model, codes)) and sorted(os.listdir(dest)) == \
        ["x.onnx", "x_w.npz"]


def _morph_codes(path):
    """A codes file as `morph export` writes one (w_a2b, w_b2a)."""
    np.savez(path, w_a2b=np.zeros((1, 256), np.float32), w_b2a=np.ones((1, 256), np.float32))


def test_a_users_npz_where_the_codes_go_is_never_replaced(world, capsys):
    """`morph export x.onnx --overwrite` replaced a user's own x_w.npz (other arrays) with the
    direction codes: --overwrite replaces a file of the output's own kind, and every .npz was one
    kind. The codes file is its own kind now (its two members, w_a2b and w_b2a): a user's .npz is
    refused, --overwrite or not, and left as it was; an earlier export's codes are replaced."""
    from ugatit_common.output_guard import kind_of
    writer = next(w for w in WRITERS if w.name == "morph")
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    model, codes = os.path.join(dest, "x.onnx"), os.path.join(dest, "x_w.npz")
    shutil.copy(os.path.join(world, "other", "codes.npz"), codes)  # the user's arrays (key w)
    mine = open(codes, "rb").read()
    assert kind_of(codes) == "npz"
    for extra in ((), ("--overwrite",)):
        refused(writer, world, model, *extra, capsys=capsys, words=(repr(codes), "numpy .npz archive"))
    assert open(codes, "rb").read() == mine and sorted(os.listdir(dest)) == ["x_w.npz"]
    _morph_codes(codes)
    assert kind_of(codes) == "morph-codes"
    rc, _, err = writer.run(world, model, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert kind_of(codes) == "morph-codes" and sorted(os.listdir(dest)) == ["x.onnx", "x_w.npz"]


def test_only_an_npz_of_exactly_the_two_codes_is_morph_codes(tmp_path):
    """kind_of calls an .npz Morph's direction codes only when its members are w_a2b and w_b2a,
    nothing more or less: a user's archive that merely holds one or both of those names among
    others stays "npz", which `morph export --overwrite` never replaces."""
    from ugatit_common.output_guard import kind_of
    w = np.zeros(2, np.float32)
    for members, kind in (({"w_a2b": w, "w_b2a": w}, "morph-codes"), ({"w_a2b": w}, "npz"),
                          ({"w_a2b": w, "w_b2a": w, "mine": w}, "npz"), ({"w_b2a": w, "x": w}, "npz")):
        path = str(tmp_path / ("_".join(members) + ".npz"))
        np.savez(path, **members)
        assert kind_of(path) == kind, (sorted(members), kind_of(path))


def test_morph_codes_owner_is_a_model_file_whose_name_differs_only_in_case(tmp_path):
    """check_w_file_owner alone (no model, no export): the other model is found by its `.onnx` in
    any case (x.onnx is refused beside a model x.ONNX, as x.ONNX beside x.onnx above); a model of
    other codes (y.onnx: y_w.npz) or a folder named x.ONNX is no owner of x_w.npz."""
    from morph.export import check_w_file_owner
    from ugatit_common.output_guard import OutputRefused
    owned = tmp_path / "owned"
    owned.mkdir()
    (owned / "x.ONNX").write_bytes(b"a model")
    with pytest.raises(OutputRefused, match=r"x_w\.npz.*is the codes file that .*x\.ONNX.* names \(missing now\)"):
        check_w_file_owner(str(owned / "x.onnx"))
    free = tmp_path / "free"
    free.mkdir()
    for name in ("y.onnx", "y_w.npz"):
        (free / name).write_bytes(b"another model's")
    (free / "x.ONNX").mkdir()  # a folder: no model
    check_w_file_owner(str(free / "x.onnx"))  # nothing refused
    assert sorted(os.listdir(free)) == ["x.ONNX", "y.onnx", "y_w.npz"]


def test_export_morph_itself_refuses_the_codes_file_of_another_model(tmp_path):
    """`morph.export.export_morph` (in its __all__, called without the command) checks the codes
    file's owner too: given x.ONNX beside a model x.onnx and its x_w.npz, it raises OutputRefused
    before any work, and both files stay as they were."""
    from morph.export import export_morph
    from morph.model import MorphUGATIT
    from ugatit_common.output_guard import OutputRefused
    (tmp_path / "x.onnx").write_bytes(b"the other model")
    (tmp_path / "x_w.npz").write_bytes(b"its codes")
    model = MorphUGATIT(MORPH_CFG).eval()
    with pytest.raises(OutputRefused, match=r"x_w\.npz.*exists and is the codes file of .*x\.onnx"):
        export_morph(model, str(tmp_path / "x.ONNX"), source="api", step=0, samples=1, verify=False)
    assert sorted(os.listdir(tmp_path)) == ["x.onnx", "x_w.npz"]
    assert (tmp_path / "x_w.npz").read_bytes() == b"its codes"


# -- results: the test phases, Morph interpolate / translate ---------------------------------------------

def test_a_translate_killed_mid_write_leaves_nothing_a_rerun_takes_for_a_users(world, monkeypatch, capsys):
    """Morph translate recorded each picture after writing it: killed in between, the rerun took
    that picture for a user's file, wrote `<name>_1_a2b_...` beside it and left it for good. Each
    input's outputs are now recorded before they are written: killed right after any picture,
    the rerun writes the same files under the same names as a run never killed."""
    from morph.__main__ import main as morph_main
    from parity_tests.test_nothing_lost import _killed_at
    monkeypatch.chdir(world)
    out = os.path.join(world, "tr")
    argv = ["translate", "--checkpoint", _morph_folder(world), "--input", os.path.join(world, "dataset", "t", "testA"),
            "--direction", "a2b", "--samples", "2", "--device", "cpu", "--result_dir", out]
    assert morph_main(argv) == 0, capsys.readouterr().err
    clean = sorted(os.listdir(out))
    assert len([n for n in clean if n.endswith(".png")]) == 3, clean
    for k in (1, 2, 3):
        shutil.rmtree(out)
        assert _killed_at(k, lambda: morph_main(argv), within="ugatit_common.results.write_rgb"), k
        assert morph_main(argv) == 0, capsys.readouterr().err
        assert sorted(os.listdir(out)) == clean, k


def test_outputs_recorded_but_never_written_are_not_claimed(world, monkeypatch, capsys):
    """Outputs are recorded before they are written. A translate stopped before writing some (here
    its second translation overflows: refused, exit 2) left those names recorded: a photo the user
    saved under such a name was then taken for an earlier output and replaced by the next run. The
    names not written are dropped from the record: the user's file stays, the rerun writes beside it."""
    from morph import model as morph_model
    from morph.__main__ import main as morph_main
    monkeypatch.chdir(world)
    out = os.path.join(world, "tr")
    argv = ["translate", "--checkpoint", _morph_folder(world), "--input", os.path.join(world, "dataset", "t", "testA"),
            "--direction", "a2b", "--samples", "2", "--device", "cpu", "--result_dir", out]
    real, calls = morph_model.MorphUGATIT.translate, [0]

    def second_overflows(self, *args, **kw):
        calls[0] += 1
        y = real(self, *args, **kw)
        return y * float("inf") if calls[0] == 2 else y
    with monkeypatch.context() as m:
        m.setattr(morph_model.MorphUGATIT, "translate", second_overflows)
        assert morph_main(argv) == 2
    assert sorted(os.listdir(out)) == [".ugatit-outputs.json", "A_test_0000_a2b_0.png"], os.listdir(out)
    photo = os.path.join(out, "A_test_0000_a2b_1.png")
    shutil.copy(os.path.join(world, "dataset", "t", "testA", "A_test_0000.png"), photo)
    before = open(photo, "rb").read()
    capsys.readouterr()
    assert morph_main(argv) == 0, capsys.readouterr().err
    assert open(photo, "rb").read() == before
    assert "A_test_0000_1_a2b_1.png" in os.listdir(out), os.listdir(out)


def test_results_never_go_where_they_would_mix(world, capsys, monkeypatch):
    """Translated images, strips and GIFs went wherever --result_dir pointed: among the
    checkpoint's files, into a live run's folders, into a dataset folder (the next training run
    then trained on its own translations, silently). Each is refused before anything is loaded or
    written; elsewhere they are written (beside inputs outside a dataset too: fresh names)."""
    from morph.__main__ import main as morph_main
    from torch_port.__main__ import main as port_main
    monkeypatch.chdir(world)
    port, morph = _port_folder(world), _morph_folder(world)
    test_a = os.path.join(world, "dataset", "t", "testA")
    train_b = os.path.join(world, "dataset", "t", "trainB")
    live = os.path.join(world, "samples", "live_run")
    tiny = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--device", "cpu"]
    interp = ["interpolate", "--checkpoint", morph, "--input", test_a, "--steps", "2", "--samples", "1", "--device", "cpu"]
    trans = ["translate", "--checkpoint", morph, "--input", test_a, "--direction", "a2b", "--device", "cpu"]
    cases = [
        (port_main, ["--phase", "test", "--result_dir", "checkpoint"] + tiny, "inside the checkpoint folder"),
        (port_main, ["--phase", "test", "--checkpoint", port, "--input", test_a, "--result_dir", live],
         "running training"),
        (morph_main, interp + ["--result_dir", morph], "inside the checkpoint folder"),
        (morph_main, interp + ["--result_dir", os.path.join(live, "sub")], "running training"),
        (morph_main, trans + ["--result_dir", test_a], "a dataset's image folder"),    # its own inputs' too
        (morph_main, trans + ["--result_dir", train_b], "a dataset's image folder"),
        # the port's results go into <result_dir>/<model_dir>/a2b: inside testA all the same
        (port_main, ["--phase", "test", "--checkpoint", port, "--input", test_a, "--result_dir", test_a],
         "a dataset's image folder"),
        (morph_main, trans + ["--result_dir", os.path.join(train_b, "translations")], "a dataset's image folder"),
    ]
    with run_lock.acquire(live, command="python -m torch_port --sample_dir samples"):
        for main, argv, words in cases:
            before = snapshot(world)
            capsys.readouterr()
            rc = main(argv)
            line = error_line(capsys.readouterr().err)
            assert rc == 2 and "--result_dir" in line and words in line, (argv, line)
            assert snapshot(world) == before, argv
    capsys.readouterr()
    assert morph_main(trans + ["--result_dir", os.path.join(world, "mres")]) == 0, capsys.readouterr().err
    assert port_main(["--phase", "test", "--result_dir", "results"] + tiny) == 0, capsys.readouterr().err
    photos = os.path.join(world, "photos")
    shutil.copytree(test_a, photos)
    assert morph_main(trans[:3] + ["--input", photos] + trans[5:] + ["--result_dir", photos]) == 0
    # beside the photos: the outputs and their record (ugatit_common.output_names.OutputRecord)
    assert sorted(os.listdir(photos)) == [".ugatit-outputs.json", "A_test_0000.png", "A_test_0000_a2b_0.png",
                                          "A_test_0000_a2b_samples.png"]


@pytest.mark.tf
@pytest.mark.slow
def test_tf_reference_results_never_go_among_its_checkpoint(world, capsys, monkeypatch):
    from tf_reference.__main__ import main as tf_main
    monkeypatch.chdir(world)
    folder = os.path.join(world, "tfck", opt.model_dir(CFG))
    shutil.copytree(os.path.join(world, "tf"), folder)
    before = snapshot(world)
    capsys.readouterr()
    rc = tf_main(["--phase", "test", "--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis",
                  "4", "--checkpoint_dir", "tfck", "--result_dir", "tfck"])
    line = error_line(capsys.readouterr().err)
    assert rc == 2 and "inside the checkpoint folder" in line, line
    assert snapshot(world) == before


# -- 5-7. the same kind: only with --overwrite; a folder is a folder; the umask is followed --------------

def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


# quick tier: every writer but two of the three ONNX ones (same guard, each a full export); all in full
@pytest.mark.parametrize("writer", [w if w.name not in ("tf2onnx", "morph") else pytest.param(w, marks=pytest.mark.slow)
                                    for w in WRITERS], ids=repr)
def test_same_kind_needs_overwrite_a_folder_gets_the_default_name_and_the_umask_holds(writer, world, capsys,
                                                                                       umask_027):
    dest = os.path.join(world, "dest")
    os.makedirs(dest)
    if writer.name == "torch2tf":
        for n in os.listdir(os.path.join(world, "tf")):  # another TF checkpoint at the default prefix
            shutil.copy(os.path.join(world, "tf", n), dest)
        os.chmod(os.path.join(dest, "checkpoint"), 0o644)
        targets = [os.path.join(dest, TF_PREFIX + s) for s in (".index", ".data-00000-of-00001")]
        targets.append(os.path.join(dest, "checkpoint"))
    else:
        targets = [os.path.join(dest, writer.default)]
        shutil.copy(os.path.join(world, "other", writer.same_kind), targets[0])
        if writer.name == "morph":
            targets.append(os.path.join(dest, "morph_w.npz"))
            _morph_codes(targets[1])  # an earlier export's codes (a user's other .npz is never replaced)
    for t in targets:
        os.chmod(t, 0o644)
    before = {t: os.stat(t).st_ino for t in targets}
    refused(writer, world, dest, capsys=capsys, words=("--overwrite",))              # folder form
    refused(writer, world, os.path.join(dest, writer.default), capsys=capsys, words=("--overwrite",))
    rc, out, err = writer.run(world, dest, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert f"'{dest}' is a folder" in out and writer.default in out and "wrote" in out
    for t in targets:
        assert os.stat(t).st_ino != before[t], t                                      # replaced (a new file)
        assert _mode(t) == 0o640, (t, oct(_mode(t)))                                  # 0o666 & ~0o027
    assert not [n for n in os.listdir(dest) if n.startswith(".")]                    # no temp file left


@pytest.mark.slow  # three Morph exports (~10-20 s on 2 cores); the mechanism: test_nothing_lost's write_files_atomic
def test_morph_c_model_and_codes_are_written_together_or_not_at_all(world, capsys, monkeypatch):
    """Morph C's .onnx and its _w.npz were each renamed into place in turn: when the .onnx's rename
    failed (a full disk, EIO) after the codes' had succeeded, a fresh export left m_w.npz alone, an
    --overwrite left new codes beside the old model (a pair that does not belong together), and the
    error named the codes, not the file that failed."""
    writer = next(w for w in WRITERS if w.name == "morph")
    dest = os.path.join(world, "out")
    os.makedirs(dest)
    real_replace = os.replace

    def onnx_rename_fails(a, b, *args, **kw):
        if str(b).endswith(".onnx"):
            raise OSError(28, "No space left on device")
        return real_replace(a, b, *args, **kw)

    out = os.path.join(dest, "m.onnx")
    for extra in ((), ("--overwrite", "--z_seed", "7")):
        before = snapshot(world)
        with monkeypatch.context() as m:
            m.setattr(os, "replace", onnx_rename_fails)
            rc, _, err = writer.run(world, out, *extra, capsys=capsys)
        line = one_line(err)
        assert rc == 2 and repr(out) in line and "No space left" in line, line
        assert snapshot(world) == before, extra   # neither file, no temp file, the old pair as it was
        if not extra:  # the pair that the --overwrite then fails to replace
            rc, _, err = writer.run(world, out, capsys=capsys)
            assert rc == 0 and sorted(os.listdir(dest)) == ["m.onnx", "m_w.npz"], err


def test_new_outputs_follow_the_umask(world, capsys, umask_027):
    """A converter output that replaces nothing (tf2torch; torch2tf wrote 0o600 before)."""
    for w, out in ((WRITERS[0], os.path.join(world, "new.safetensors")), (WRITERS[1], os.path.join(world, "n", "p"))):
        rc, _, err = w.run(world, out, capsys=capsys)
        assert rc == 0, err
    assert _mode(os.path.join(world, "new.safetensors")) == 0o640
    for n in os.listdir(os.path.join(world, "n")):
        assert _mode(os.path.join(world, "n", n)) == 0o640, n


# -- non-finite weights are refused wherever a checkpoint is used -----------------------------------------

def _poison(state, name, value=float("nan")):
    t = state[name].clone()
    t.view(-1)[1] = value
    state[name] = t
    return state


@pytest.fixture(scope="module")
def poisoned(template, tmp_path_factory):
    """Checkpoints with one NaN in a generator weight (port, TF, Morph) and one inf in a
    discriminator weight (TF: the report runs the discriminators)."""
    import weights_convert as wc
    from safetensors.torch import load_file
    from morph.model import MorphUGATIT
    from torch_port import build_ugatit
    root = str(tmp_path_factory.mktemp("poisoned"))
    shutil.copytree(os.path.join(template, "dataset"), os.path.join(root, "dataset"))
    state = load_file(os.path.join(_port_folder(template), PORT_W))
    model = build_ugatit(CFG)
    model.load_state_dict(_poison(dict(state), "generator_B.conv.weight"))
    _save_port(_port_folder(root), model)
    wc.torch_to_tf(model.state_dict(), os.path.join(root, "tf_nan", TF_PREFIX))
    disc = sorted(k for k in state if k.startswith("discriminator") and k.endswith("weight"))[0]
    wc.torch_to_tf(_poison(dict(state), disc, float("inf")), os.path.join(root, "tf_inf", TF_PREFIX))
    m = MorphUGATIT(MORPH_CFG)
    m.load_state_dict(_poison(m.state_dict(), "generator.conv.weight"))
    _save_morph(_morph_folder(root), m)
    return root


def test_non_finite_weights_are_refused_by_every_command_that_uses_them(poisoned, template, tmp_path, capsys,
                                                                        monkeypatch):
    import weights_convert as wc
    from morph.__main__ import main as morph_main
    from parity_tests.report import main as report_main
    from torch_port.__main__ import main as port_main
    root = str(tmp_path / "p")
    shutil.copytree(poisoned, root)
    monkeypatch.chdir(root)
    photo = os.path.join(root, "dataset", "t", "testA")
    port, morph = _port_folder(root), _morph_folder(root)
    tiny = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--device", "cpu"]
    gen = "generator_B.conv.weight"
    cases = [
        (port_main, ["--phase", "test", "--checkpoint", port, "--input", photo, "--device", "cpu"], gen),
        (port_main, ["--phase", "test", "--checkpoint", os.path.join(port, PORT_W), "--input", photo], gen),
        (port_main, ["--phase", "test"] + tiny, gen),                                   # the folder the flags name
        (port_main, ["--phase", "test", "--checkpoint", os.path.join(root, "tf_nan"), "--input", photo,
                     "--img_size", "32", "--smoothing", "True"], gen),
        (port_main, ["export", port, os.path.join(root, "a.onnx"), "--direction", "a2b"], gen),
        (wc.main, ["tf2onnx", os.path.join(root, "tf_nan"), os.path.join(root, "a.onnx"), "--direction", "a2b",
                   "--img_size", "32", "--smoothing", "True"], gen),
        (wc.main, ["tf2torch", os.path.join(root, "tf_nan"), os.path.join(root, "w.safetensors"), "--img_size", "32",
                   "--smoothing", "True"], "generator_B/conv/conv2d/kernel"),
        (wc.main, ["torch2tf", os.path.join(port, PORT_W), os.path.join(root, "t", "m"), "--weights_only"], gen),
        (report_main, [os.path.join(root, "tf_nan"), os.path.join(root, "rep"), "--img_size", "32", "--smoothing",
                       "True", "--fast_paths", "none"], "generator_B/conv/conv2d/kernel"),
        (report_main, [os.path.join(root, "tf_inf"), os.path.join(root, "rep"), "--img_size", "32", "--smoothing",
                       "True", "--fast_paths", "none"], "discriminator"),
        (morph_main, ["interpolate", "--checkpoint", morph, "--input", photo, "--steps", "2", "--samples", "1",
                      "--device", "cpu", "--result_dir", os.path.join(root, "mres")], "generator.conv.weight"),
        (morph_main, ["translate", "--checkpoint", os.path.join(morph, MORPH_W), "--input", photo, "--direction",
                      "a2b", "--device", "cpu", "--result_dir", os.path.join(root, "mres")], "generator.conv.weight"),
        (morph_main, ["translate", "--config", "C", "--input", photo, "--direction", "b2a"] + tiny,
         "generator.conv.weight"),
        (morph_main, ["export", morph, os.path.join(root, "m.onnx")], "generator.conv.weight"),
    ]
    for main, argv, tensor in cases:
        before = snapshot(root)
        capsys.readouterr()
        rc = main(argv)
        line = error_line(capsys.readouterr().err)
        assert rc == 2 and tensor in line and "1 non-finite value" in line, (argv, line)  # which, how many
        assert snapshot(root) == before, argv
    # the converters copy a broken checkpoint only when told to, and say so
    capsys.readouterr()
    assert wc.main(["tf2torch", os.path.join(root, "tf_nan"), os.path.join(root, "w.safetensors"), "--img_size", "32",
                    "--smoothing", "True", "--allow_non_finite"]) == 0
    assert "--allow_non_finite" in capsys.readouterr().err
    assert wc.main(["torch2tf", os.path.join(port, PORT_W), os.path.join(root, "t", "m"), "--weights_only",
                    "--allow_non_finite"]) == 0
    assert "warning: copied 1 tensor" in capsys.readouterr().err


@pytest.mark.tf
def test_tf_reference_test_phase_refuses_non_finite_weights(poisoned, tmp_path, monkeypatch, capsys):
    from tf_reference.__main__ import main as tf_main
    root = str(tmp_path / "p")
    shutil.copytree(os.path.join(poisoned, "dataset"), os.path.join(root, "dataset"))
    shutil.copytree(os.path.join(poisoned, "tf_nan"), _port_folder(root))
    monkeypatch.chdir(root)
    before = snapshot(root)
    capsys.readouterr()
    rc = tf_main(["--phase", "test", "--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2",
                  "--n_dis", "4"])
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(line) == 1 and "generator_B/conv/conv2d/kernel" in line[0] and "Traceback" not in err
    assert snapshot(root) == before


# -- Morph: typed flags are checked against the checkpoint, never ignored ----------------------------------

@pytest.fixture(scope="module")
def morph_full_a(tmp_path_factory):
    """A config-A Morph checkpoint of the full (light=False) model: its MLP fixes the image size."""
    from morph.model import MorphUGATIT
    root = str(tmp_path_factory.mktemp("morph_a"))
    cfg = dict(MORPH_CFG, morph_config="A", light=False)
    _save_morph(os.path.join(root, "a"), MorphUGATIT(cfg), cfg)
    return os.path.join(root, "a")


def test_morph_typed_flags_must_agree_with_the_checkpoint(world, morph_full_a, capsys):
    from morph.__main__ import main as morph_main
    ck = _morph_folder(world)
    photo = os.path.join(world, "dataset", "t", "testA")
    res = os.path.join(world, "mres")
    # (typed, the flag named, the value given as named, the checkpoint's value as named)
    flags = [(["--ch", "8"], "--ch=8", "ch=2"), (["--n_dis", "5"], "--n_dis=5", "n_dis=4"),
             (["--light", "False"], "--light=False", "light=True"), (["--n_res", "3"], "--n_res=3", "n_res=4"),
             (["--sn", "False"], "--sn=False", "sn=True"), (["--smoothing", "False"], "--smoothing=False",
                                                              "smoothing=True"),
             (["--config", "A"], "--config='A'", "morph_config='C'"),
             (["--dataset", "other"], "--dataset='other'", "dataset='t'"),
             (["--gan_type", "hinge"], "--gan_type='hinge'", "gan_type='lsgan'"),
             (["--idp_weight", "2"], "--idp_weight=2.0", "idp_weight=1.0"),
             (["--g_cam", "False"], "--g_cam=False", "g_cam=True"),
             (["--ch=8"], "--ch=8", "ch=2"), (["--smooth", "False"], "--smoothing=False", "smoothing=True")]
    for command, extra in (("translate", ["--direction", "a2b"]), ("interpolate", ["--steps", "2"])):
        for typed, given, recorded in flags:
            argv = [command, "--checkpoint", ck, "--input", photo, "--device", "cpu", "--result_dir", res] + extra
            before = snapshot(world)
            capsys.readouterr()
            assert morph_main(argv + typed) == 2, typed
            line = one_line(capsys.readouterr().err)
            assert f"{given} contradicts the checkpoint {ck}, which records {recorded}" in line, (typed, line)
            assert snapshot(world) == before
    # the example, all at once: every contradiction named on the one line
    capsys.readouterr()
    assert morph_main(["translate", "--checkpoint", ck, "--input", photo, "--direction", "a2b", "--ch", "8",
                       "--img_size", "64", "--config", "A", "--result_dir", res]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--ch=8" in line and "--config='A'" in line
    # the folder the flags name (no --checkpoint): --ch is not part of its name, and still checked
    capsys.readouterr()
    assert morph_main(["translate", "--config", "C", "--light", "True", "--dataset", "t", "--img_size", "32",
                       "--ch", "4", "--n_dis", "4", "--checkpoint_dir", os.path.join(world, "checkpoint"),
                       "--input", photo, "--direction", "a2b", "--result_dir", res]) == 2
    assert "--ch=4" in one_line(capsys.readouterr().err)
    # --img_size: honoured where the weights do not fix it (config C), refused where they do
    capsys.readouterr()
    assert morph_main(["translate", "--checkpoint", ck, "--input", photo, "--direction", "a2b", "--img_size", "64",
                       "--result_dir", res, "--device", "cpu"]) == 0
    assert "running at 64 px" in capsys.readouterr().out
    outs = [f for f in os.listdir(res) if f.endswith("_a2b_0.png")]
    assert outs and cv2.imread(os.path.join(res, outs[0])).shape == (64, 64, 3)
    before = snapshot(world)
    assert morph_main(["translate", "--checkpoint", morph_full_a, "--input", photo, "--direction", "a2b",
                       "--img_size", "64", "--result_dir", res, "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--img_size=64" in line and "img_size=32" in line and "light=False" in line
    assert snapshot(world) == before
    # export: a flag the checkpoint's config has no use for is refused, not ignored
    for ck_, extra, word in ((ck, ["--direction", "a2b"], "--direction"), (morph_full_a, ["--direction", "a2b",
                                                                                           "--samples", "2"], "--samples")):
        capsys.readouterr()
        assert morph_main(["export", ck_, os.path.join(world, "m.onnx")] + extra) == 2
        assert word in one_line(capsys.readouterr().err)
    assert snapshot(world) == before


def test_morph_checkpoint_may_be_a_weights_file(world, capsys):
    from morph.__main__ import main as morph_main
    photo = os.path.join(world, "dataset", "t", "testA")
    res = os.path.join(world, "mres")
    weights = os.path.join(_morph_folder(world), MORPH_W)
    capsys.readouterr()
    assert morph_main(["translate", "--checkpoint", weights, "--input", photo, "--direction", "b2a", "--result_dir",
                       res, "--device", "cpu"]) == 0, capsys.readouterr().err
    assert [f for f in os.listdir(res) if f.endswith("_b2a_0.png")]
    before = snapshot(world)
    for path, words in ((os.path.join(world, "other", "photo.png"), "is a file, not a Morph checkpoint"),
                        (os.path.join(_port_folder(world), PORT_W), "UGATIT checkpoint"),
                        (os.path.join(world, "nope"), "does not exist")):
        capsys.readouterr()
        assert morph_main(["translate", "--checkpoint", path, "--input", photo, "--direction", "b2a",
                           "--result_dir", res]) == 2
        assert words in one_line(capsys.readouterr().err), path
    assert snapshot(world) == before


# -- loose ends ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trainer", ["torch_port", "morph"])
def test_dataloader_worker_errors_are_one_line(trainer, world, monkeypatch, capsys):
    """An image deleted after the start-up check, read by a DataLoader worker process: the same one
    `error:` line (exit 2) as without workers, not a wrapped worker traceback (exit 1)."""
    import torch_port.train as tt
    monkeypatch.chdir(world)
    real = tt.load_dataset

    def load_then_delete(cfg, folder, seed, base="."):
        ds = real(cfg, folder, seed, base)
        if folder == "trainA":
            for f in ds.files:
                os.remove(f)
        return ds
    monkeypatch.setattr(tt, "load_dataset", load_then_delete)
    flags = ["--light", "True", "--dataset", "t", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--augment_flag",
             "False", "--device", "cpu", "--iteration", "2", "--epoch", "1", "--print_freq", "100"]
    for workers in ("2", "0"):
        make_demo_dataset(world, "t", size=32, n_train=2, n_test=1)
        capsys.readouterr()
        if trainer == "torch_port":
            from torch_port.__main__ import main
            rc = main(flags + ["--num_workers", workers, "--checkpoint_dir", os.path.join(world, "ck" + workers)])
        else:
            from morph.__main__ import main
            rc = main(["train"] + flags + ["--num_workers", workers, "--checkpoint_dir",
                                           os.path.join(world, "ck" + workers)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
        assert rc == 2 and len(lines) == 1 and "cannot read image" in lines[0] and "trainA" in lines[0], err
        assert "Traceback" not in err and "DataLoader worker" not in err


def test_seed_is_validated_by_name_in_every_command(world, capsys):
    import weights_convert as wc
    from morph.__main__ import main as morph_main
    from parity_tests.fast_paths import main as fast_main
    from parity_tests.report import main as report_main
    from torch_port.__main__ import main as port_main
    from ugatit_common.demo_data import main as demo_main
    tf, port, morph = os.path.join(world, "tf"), _port_folder(world), _morph_folder(world)
    commands = [
        (port_main, [], "--seed"),
        (port_main, ["export", port, os.path.join(world, "a.onnx"), "--direction", "a2b"], "--seed"),
        (wc.main, ["tf2onnx", tf, os.path.join(world, "a.onnx"), "--direction", "a2b"], "--seed"),
        (morph_main, ["train"], "--seed"), (morph_main, ["interpolate", "--input", "x"], "--seed"),
        (morph_main, ["translate", "--input", "x", "--direction", "a2b"], "--seed"),
        (morph_main, ["demo", os.path.join(world, "d")], "--seed"),
        (morph_main, ["export", morph, os.path.join(world, "m.onnx")], "--seed"),
        (morph_main, ["export", morph, os.path.join(world, "m.onnx")], "--z_seed"),
        (report_main, [tf, os.path.join(world, "r")], "--seed"),
        (fast_main, [tf, os.path.join(world, "r")], "--seed"),
        (demo_main, ["--root", os.path.join(world, "d")], "--seed"),
    ]
    before = snapshot(world)
    for main, argv, flag in commands:
        for bad in ("-1", "1e23", "4294967296", "x"):
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                main(argv + [flag, bad])
            err = capsys.readouterr().err
            assert e.value.code == 2, (argv, bad)
            assert f"argument {flag}: must be an integer in [0, 2**32-1" in err and repr(bad) in err, (argv, err)
            assert "Traceback" not in err
    assert snapshot(world) == before
    assert opt.seed_value("4294967295") == 2 ** 32 - 1 and opt.seed_value("0") == 0


def test_kind_of_judges_content_not_names(world):
    from ugatit_common.output_guard import kind_of
    other = os.path.join(world, "other")
    want = {"photo.png": "image:PNG", "graph.meta": "tf-meta", "run.state.pt": "state", "old.index": "tf-index",
            "notes.txt": "unknown", "empty.bin": "empty", "codes.npz": "npz", "weights.safetensors": "safetensors",
            "model.onnx": "onnx"}
    assert {n: kind_of(os.path.join(other, n)) for n in want} == want
    shutil.copy(os.path.join(other, "weights.safetensors"), os.path.join(other, "w.onnx"))
    shutil.copy(os.path.join(other, "photo.png"), os.path.join(other, "p.safetensors"))
    assert kind_of(os.path.join(other, "w.onnx")) == "safetensors"
    assert kind_of(os.path.join(other, "p.safetensors")) == "image:PNG"
    assert kind_of(os.path.join(world, "tf", "checkpoint")) == "tf-state"
    assert kind_of(os.path.join(world, "tf", TF_PREFIX + ".data-00000-of-00001")) == "tf-data"
    assert kind_of(os.path.join(other, "missing")) is None and kind_of(other) == "folder"


def test_an_output_folder_where_a_file_is_says_so(tmp_path):
    """check_writable_folder (every --result_dir / output folder): a file (or a link to one) where
    the folder goes is said as such, not as the OS's bare 'File exists'; the file is untouched."""
    from ugatit_common.cli_errors import check_writable_folder
    from ugatit_common.options import OptionError
    mine = tmp_path / "mine"
    mine.write_text("mine")
    (tmp_path / "link").symlink_to(mine)
    for path in (mine, tmp_path / "link"):
        with pytest.raises(OptionError, match=r"^--result_dir '.*' is not writable: a file is there, not a folder$"):
            check_writable_folder(str(path), "--result_dir")
    assert mine.read_text() == "mine"


def test_a_file_or_dead_link_above_the_output_folder_is_named(tmp_path, monkeypatch, capsys):
    """`--result_dir R` where R is a file or a link that leads nowhere: the test phase writes into
    `R/<model_dir>`, and its line said "'R/<model_dir>' is not writable: Not a directory" (or "No
    such file or directory", "Too many levels of symbolic links"), naming neither R nor what is
    wrong with it; Morph called a dead link "a file". Now the line names R and what it is."""
    from ugatit_common.cli_errors import check_writable_folder
    from ugatit_common.options import OptionError
    monkeypatch.chdir(tmp_path)
    with open("mine", "w") as fh:
        fh.write("mine")
    os.symlink("nowhere", "dead")
    os.symlink("loop", "loop")
    cases = [("mine/run", "'mine' is a file, not a folder"), ("mine/a/b", "'mine' is a file, not a folder"),
             ("dead/run", "'dead' is a link that leads to no folder"),
             ("loop/run", "'loop' is a link that leads to no folder"),
             ("dead", "a link that leads to no folder is there"), ("mine", "a file is there, not a folder")]
    for path, why in cases:
        with pytest.raises(OptionError) as e:
            check_writable_folder(path, "--result_dir")
        assert str(e.value) == f"--result_dir {path!r} is not writable: {why}"
    assert open("mine").read() == "mine" and not os.path.exists("nowhere")
    assert check_writable_folder("made/run", "--result_dir") == "made/run" and os.path.isdir("made/run")


def test_the_writability_probe_leaves_nothing_in_the_folder(tmp_path):
    """check_writable_folder writes a temp file to see the folder is writable: that file is gone
    after (an existing folder keeps exactly what it held; a new one is empty)."""
    from ugatit_common.cli_errors import check_writable_folder
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mine.txt").write_text("x")
    for name, held in (("old", ["mine.txt"]), ("new/deeper", [])):
        assert check_writable_folder(str(tmp_path / name), "--result_dir") == str(tmp_path / name)
        assert os.listdir(tmp_path / name) == held

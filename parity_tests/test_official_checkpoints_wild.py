"""Official TF checkpoints in the forms users have them (the golden official checkpoint copied and
changed; never the original): the `checkpoint` state file as other machines, editors and damage
leave it, a step named that is not there, TF1's V1 format, several data shards, extra variables
(an EMA's, `global_step`), a generators-only export, read-only / symlinked / non-ASCII folders.
Each reader either gives the TF values exactly or stops with one `error:` line naming the file and
what was expected (exit 2), writing nothing."""
from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest
import torch

import weights_convert as wc
from parity_tests.conftest import GOLDEN
from parity_tests.test_outputs_guard import snapshot
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import tf_checkpoint as tfc

OFFICIAL_DIR = "UGATIT_light_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing"  # the golden run's model_dir
PREFIX = "UGATIT.model-3"


def _run_folder(root, name=OFFICIAL_DIR):
    """The golden final checkpoint as downloaded: `root/checkpoint/<model_dir>/`, writable."""
    folder = os.path.join(str(root), "checkpoint", name)
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    for n in os.listdir(folder):
        os.chmod(os.path.join(folder, n), 0o644)
    return folder


def _golden():
    """{torch name: array} of the golden checkpoint (every network, no optimizer)."""
    return tfc.read_arrays(os.path.join(GOLDEN, "final"))[1]


def _tf2torch(src, out, capsys, *flags):
    capsys.readouterr()
    rc = wc.main(["tf2torch", str(src), str(out), "--img_size", "64", *flags])
    return rc, capsys.readouterr().err


def _error_line(err):
    """The one `error:` line (the progress bar, when the failure comes mid-way, aside)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("tf2torch:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def _assert_golden(out):
    from safetensors.numpy import load_file
    got, want = load_file(str(out)), _golden()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def _write_state(folder, text):
    with open(os.path.join(folder, "checkpoint"), "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


# -- 1. the `checkpoint` state file as it comes ------------------------------------------------------

STATE_FILES = {
    # the official `load` restores os.path.basename(model_checkpoint_path) from the run folder
    "relative_with_folders": f'model_checkpoint_path: "checkpoint/{OFFICIAL_DIR}/{PREFIX}"\n',
    # names no checkpoint: read as a folder without one (its one prefix)
    "empty": "",
    "garbage": b"\x00\x01garbage\xff\nnot a state file\n",
    "all_paths_only": f'all_model_checkpoint_paths: "{PREFIX}"\n',
    # hand-edited: a byte order mark (Notepad), single quotes (TF's text parser takes both)
    "byte_order_mark": b"\xef\xbb\xbf" + f'model_checkpoint_path: "{PREFIX}"\n'.encode(),
    "single_quotes": f"model_checkpoint_path: '{PREFIX}'\n",
    # what TF 1.13+ writes (timestamps beside the paths), CRLF line ends
    "timestamps_crlf": (f'model_checkpoint_path: "{PREFIX}"\r\nall_model_checkpoint_paths: "{PREFIX}"\r\n'
                        f"all_model_checkpoint_timestamps: 1563439178.745\r\nlast_preserved_timestamp: 1563.5\r\n"),
}


@pytest.mark.parametrize("case", list(STATE_FILES))
def test_state_file_forms_read_the_folders_checkpoint(tmp_path, capsys, case):
    """Before: every form but the last stopped tf2torch, the port's --checkpoint and the exports
    ("names 'checkpoint/...', but ... not found", "has no model_checkpoint_path line") while
    tf_reference's test phase (which goes by the files) translated with the same folder."""
    folder = _run_folder(tmp_path)
    _write_state(folder, STATE_FILES[case])
    out = tmp_path / "out.safetensors"
    rc, err = _tf2torch(folder, out, capsys)
    assert rc == 0, err
    _assert_golden(out)
    from torch_port import checkpoint as ck
    assert ck.load_any(folder, {"img_size": 64})["step"] == 3


def test_a_relative_path_to_another_folder_reads_this_folders_checkpoint(tmp_path, capsys):
    """The state file names `../older_run/UGATIT.model-3`, which exists with other weights: the
    official `load` restores the basename from the run folder, so this folder's checkpoint is read
    (as for an absolute path); before, the other folder's was converted."""
    folder = _run_folder(tmp_path)
    other = tmp_path / "checkpoint" / "older_run"
    shutil.copytree(os.path.join(GOLDEN, "init"), other)
    for ext in (".index", ".data-00000-of-00001"):
        os.rename(other / f"UGATIT.model-0{ext}", other / f"{PREFIX}{ext}")
    _write_state(folder, f'model_checkpoint_path: "../older_run/{PREFIX}"\n')
    rc, err = _tf2torch(folder, tmp_path / "out.safetensors", capsys)
    assert rc == 0, err
    _assert_golden(tmp_path / "out.safetensors")


@pytest.mark.parametrize("named", ["UGATIT.model-1000000", "/home/someone/UGATIT/checkpoint/x/UGATIT.model-1000000",
                                   "C:\\\\Users\\\\someone\\\\UGATIT.model-1000000"])
def test_a_state_file_naming_an_absent_step_says_what_the_folder_holds(tmp_path, capsys, named):
    """The state file names step 1000000, whose files are not there; step 3's are. One line names
    the state file, what it expected, and the prefix to give instead (before: no word of the
    checkpoint that is there); nothing is written."""
    folder = _run_folder(tmp_path)
    _write_state(folder, f'model_checkpoint_path: "{named}"\n')
    before = snapshot(str(tmp_path))
    rc, err = _tf2torch(folder, tmp_path / "out.safetensors", capsys)
    line = _error_line(err)
    assert rc == 2 and os.path.join(folder, "checkpoint") in line and "UGATIT.model-1000000" in line, line
    assert line.endswith(f"this folder holds {PREFIX}: give the prefix of the one you want "
                         f"({os.path.join(folder, PREFIX)})"), line
    assert snapshot(str(tmp_path)) == before
    rc, err = _tf2torch(os.path.join(folder, PREFIX), tmp_path / "out.safetensors", capsys)  # as it says
    assert rc == 0, err
    _assert_golden(tmp_path / "out.safetensors")


# -- 2. where the folder is --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["read_only", "symlinked", "space and ünïcode 路径"])
def test_read_only_symlinked_and_non_ascii_folders(tmp_path, capsys, case):
    """Read as any folder: the output elsewhere, the checkpoint folder left exactly as it was (no
    write access needed)."""
    folder = _run_folder(tmp_path / ("x" if case != "space and ünïcode 路径" else case))
    if case == "symlinked":
        link = tmp_path / "linked"
        os.symlink(folder, link)
        folder = str(link)
    if case == "read_only":
        for n in os.listdir(folder):
            os.chmod(os.path.join(folder, n), 0o444)
        os.chmod(folder, 0o555)
    before = snapshot(os.path.realpath(folder))
    try:
        rc, err = _tf2torch(folder, tmp_path / "out.safetensors", capsys)
        assert rc == 0, err
        _assert_golden(tmp_path / "out.safetensors")
        assert snapshot(os.path.realpath(folder)) == before
    finally:
        os.chmod(os.path.realpath(folder), stat.S_IRWXU)


# -- 3. extra variables, generators only --------------------------------------------------------------

def _rewrite(folder, change):
    """The golden checkpoint in `folder` rewritten tensor by tensor with `change` ({TF name:
    array} -> the same, changed), as a user's own Saver would have saved it."""
    with tfc.BundleReader(os.path.join(GOLDEN, "final")) as r:
        tensors = change({n: r.read(n) for n in r.keys()})
    for n in os.listdir(folder):
        if n.startswith(PREFIX + "."):
            os.remove(os.path.join(folder, n))
    with tfc.BundleWriter(os.path.join(folder, PREFIX)) as w:
        for n, a in tensors.items():
            w.add(n, a)
    return folder


def _with_ema(t):
    """An EMA's shadow copy of every generator_B variable, `global_step`, a user's own scalar."""
    out = dict(t, global_step=np.int64(1000000), **{"my_own/scale": np.float32(2)})
    out.update({f"{n}/ExponentialMovingAverage": a * 0.5 for n, a in t.items()
                if n.startswith("generator_B") and not n.endswith(("/Adam", "/Adam_1"))})
    return out


def test_extra_variables_are_left_out_by_every_reader(tmp_path, capsys):
    """A checkpoint with an EMA's shadow variables, `global_step` and a variable of the user's
    own: TF's Saver restores the graph's variables past them, tf2torch left them out, but the
    port's test phase, exports (tf2onnx, export), Morph's --init_from and training resume
    read them into the state and refused it ("92 unexpected variables,
    e.g. CAM_logit.bias.ExponentialMovingAverage"). Now each reads the model's variables, the same
    values as without the extras, and says once what it left out."""
    from torch_port import checkpoint as ck
    from torch_port.translate import load_checkpoint_for_test
    plain = _run_folder(tmp_path / "plain")
    extra = _rewrite(_run_folder(tmp_path / "extra"), _with_ema)
    a, b = ck.load_any(plain, {"img_size": 64}), ck.load_any(extra, {"img_size": 64})
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "left out" in ln]
    assert len(notes) == 1 and "generator_B/CAM_logit/bias/ExponentialMovingAverage" in notes[0], notes
    assert a["state"].keys() == b["state"].keys() and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    cfg = opt.config_from(phase="test", dataset="g", img_size=64)
    model, _ = load_checkpoint_for_test(extra, cfg, {"img_size": 64}, torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in a["state"].items())
    # training resume (Adam slots too) and Morph's --init_from read through the same reader
    sa, sb = ck.read_tf_training_state(plain), ck.read_tf_training_state(extra)
    for key in ("model", "G_slots", "D_slots"):
        assert sa[key].keys() == sb[key].keys(), key
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key
    n_ema = sum(n.endswith("/ExponentialMovingAverage") for n in tfc.tensor_info(extra))
    assert f"left out {n_ema} variable(s)" in notes[0]  # global_step, my_own/scale: no network's, not said
    rc, err = _tf2torch(extra, tmp_path / "out.safetensors", capsys)
    assert rc == 0 and f"left out {n_ema} variable(s)" in err, err
    _assert_golden(tmp_path / "out.safetensors")


def test_a_generators_only_checkpoint_serves_the_test_phase(tmp_path):
    """An inference export (a Saver over the generators: what the official test graph holds) in
    `--checkpoint_dir`: the port's test phase refused it ("--n_dis 5 was given but the checkpoint's
    weights say n_dis 6: ... 80 variables missing", blaming a flag the weights do not record) where
    tf_reference's translates with it. Now it loads the generators; a real mismatch still names
    the flag."""
    from torch_port import translate
    from torch_port.checkpoint import CheckpointMismatch
    root = tmp_path / "run"
    _rewrite(_run_folder(root), lambda t: {n: a for n, a in t.items() if n.startswith("generator")
                                           and not n.endswith(("/Adam", "/Adam_1"))})
    cfg = opt.config_from(phase="test", dataset="g", light=True, ch=4, n_dis=5, img_size=64,
                          checkpoint_dir=str(root / "checkpoint"))
    model = translate.load_for_test(cfg, torch.device("cpu"))
    want = {k: v for k, v in _golden().items() if k.startswith("generator")}
    got = model.state_dict()
    assert all(torch.equal(got[k], torch.from_numpy(v)) for k, v in want.items())
    with pytest.raises(CheckpointMismatch) as e:
        translate.load_for_test(dict(cfg, ch=8), torch.device("cpu"))
    assert "does not match --ch 8: the weights record ch=4" in str(e.value) and "n_dis" not in str(e.value), e.value
    # the same weights checked against a model (a port checkpoint's path): the flag the weights fix is
    # named, never n_dis / sn, which generators do not record
    from torch_port import build_ugatit
    from torch_port.checkpoint import check_matches
    gens = {k: torch.from_numpy(v) for k, v in want.items()}
    with pytest.raises(CheckpointMismatch) as e:
        check_matches(build_ugatit(dict(cfg, ch=8)), gens, "gens", generators_only=True)
    assert str(e.value).startswith("--ch 8 was given but the checkpoint's weights say ch 4: checkpoint gens "), e.value



def test_a_generators_only_training_checkpoint_keeps_its_generators_optimizer(tmp_path, capsys):
    """A checkpoint of the generators with their Adam slots and powers (a Saver over a training
    graph of the generators alone): `tf2torch --with_optimizer` carries the slots and the
    generators' two powers - no discriminator's expected, and nothing left out."""
    from safetensors.numpy import load_file
    folder = _rewrite(_run_folder(tmp_path / "run"), lambda t: {n: a for n, a in t.items() if n.startswith("generator")
                                                                or n in ("beta1_power", "beta2_power")})
    out = tmp_path / "g.safetensors"
    rc, err = _tf2torch(folder, out, capsys, "--with_optimizer")
    assert rc == 0 and "left out" not in err, err
    got = load_file(str(out))
    assert {k for k in got if k.startswith("optimizer.")} == {"optimizer.G.beta1_power", "optimizer.G.beta2_power"}
    assert sum(k.endswith("/Adam") for k in got) == sum(k.endswith("/Adam_1") for k in got) > 0
    assert not [k for k in got if k.startswith("discriminator")]

# -- 4. written by TensorFlow: several shards, the V1 format ------------------------------------------

def _tf():
    import tensorflow as tf  # (tests marked tf: skipped by conftest where TF is absent)
    return tf


def _save_sharded(prefix, tensors, shards):
    """What Saver(sharded=True) does on `shards` devices: SaveV2 of each device's variables into a
    temporary part, then MergeV2Checkpoints into `<prefix>.data-0000i-of-0000N` + one .index (in a
    graph of its own: the same whether or not an earlier test turned eager execution off)."""
    tf = _tf()
    names = sorted(tensors)
    with tf.Graph().as_default():
        parts, saves = [], []
        for i in range(shards):
            part = tf.raw_ops.ShardedFilename(basename=prefix + "_temp/part", shard=i, num_shards=shards)
            group = names[i::shards]
            saves.append(tf.raw_ops.SaveV2(prefix=part, tensor_names=group, shape_and_slices=[""] * len(group),
                                           tensors=[tf.constant(tensors[n]) for n in group]))
            parts.append(part)
        with tf.control_dependencies(saves):
            merge = tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=tf.stack(parts), destination_prefix=prefix,
                                                  delete_old_dirs=True)
        with tf.compat.v1.Session() as sess:
            sess.run(merge)
    _write_state(os.path.dirname(prefix), f'model_checkpoint_path: "{os.path.basename(prefix)}"\n')


@pytest.mark.tf
def test_several_data_shards(tmp_path, capsys):
    """Two shards convert to the TF values (Adam slots included), and the port reads them; one
    shard missing or truncated is one line naming that file, nothing written."""
    with tfc.BundleReader(os.path.join(GOLDEN, "final")) as r:
        tensors = {n: r.read(n) for n in r.keys()}
    root = tmp_path / "checkpoint" / OFFICIAL_DIR
    os.makedirs(root)
    _save_sharded(str(root / PREFIX), tensors, 2)
    assert sorted(os.listdir(root)) == ["UGATIT.model-3.data-00000-of-00002", "UGATIT.model-3.data-00001-of-00002",
                                        "UGATIT.model-3.index", "checkpoint"]
    out = tmp_path / "out.safetensors"
    rc, err = _tf2torch(root, out, capsys, "--with_optimizer")
    assert rc == 0, err
    from safetensors.numpy import load_file
    got = load_file(str(out))
    assert len(got) == len(tensors)
    for n, a in tensors.items():
        assert np.array_equal(got[tfc.tf_to_torch_name(n)], tfc.to_torch_layout(n, a)), n
    from torch_port import checkpoint as ck
    assert ck.load_any(str(root), {"img_size": 64})["step"] == 3 and policy.inventory(str(root))[0].complete
    shard = root / "UGATIT.model-3.data-00001-of-00002"
    data = shard.read_bytes()
    for damage, says in ((lambda: shard.write_bytes(data[:-7]), "is truncated"),
                         (lambda: os.remove(shard), "cannot open data file")):
        damage()
        if out.exists():
            os.remove(out)
        before = snapshot(str(tmp_path))
        rc, err = _tf2torch(root, out, capsys, "--with_optimizer")
        line = _error_line(err)
        assert rc == 2 and str(shard) in line and says in line, line
        assert snapshot(str(tmp_path)) == before
    assert "no UGATIT.model-3.data-00001-of-00002" in policy.inventory(str(root))[0].missing


@pytest.mark.tf
def test_a_v1_format_checkpoint_is_named_as_such(tmp_path, capsys):
    """TF1's V1 format (one file `<prefix>` beside its .meta, no .index): every reader said
    "... .index not found" or "not a checkpoint", and the test phases "none can be used (no
    .index, .data)". Now each says it is a V1-format checkpoint and what is expected."""
    tf = _tf()
    folder = tmp_path / "checkpoint" / OFFICIAL_DIR
    os.makedirs(folder)
    with tf.Graph().as_default():
        with tf.compat.v1.variable_scope("generator_A"):
            tf.compat.v1.get_variable("x", [2, 3])
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(folder / "UGATIT.model"), global_step=5)
    v1 = str(folder / "UGATIT.model-5")
    assert sorted(os.listdir(folder)) == ["UGATIT.model-5", "UGATIT.model-5.meta", "checkpoint"]
    from torch_port import checkpoint as ck
    for given in (folder, v1, v1 + ".meta"):
        rc, err = _tf2torch(given, tmp_path / "out.safetensors", capsys)
        line = _error_line(err)
        assert rc == 2 and f"{v1} is a TensorFlow V1-format checkpoint" in line, line
        with pytest.raises(opt.OptionError, match="V1-format checkpoint"):
            ck.load_any(str(given))
    os.remove(folder / "checkpoint")  # no state file: the folder's files say it
    rc, err = _tf2torch(folder, tmp_path / "out.safetensors", capsys)
    assert rc == 2 and "V1-format" in _error_line(err)
    assert not (tmp_path / "out.safetensors").exists()
    # the test phases of both frameworks (and resume) go by the folder's files
    with pytest.raises(policy.NoUsableCheckpoint, match=r"UGATIT\.model-5 is a TensorFlow V1-format checkpoint"):
        policy.choose(str(folder), lambda f: None, need="weights", log=lambda m: None)


def test_a_tf2_object_based_checkpoint_is_named_as_such(tmp_path, capsys):
    """A TensorFlow 2 checkpoint of tf.train.Checkpoint / Keras save_weights (variables named by
    object path, `<path>/.ATTRIBUTES/VARIABLE_VALUE`): the error named neither the checkpoint nor
    what it holds ("not a U-GAT-IT checkpoint: no generator_B/conv/conv2d/kernel ... variable")."""
    folder = tmp_path / "tf2"
    with tfc.BundleWriter(str(folder / "ckpt-1")) as w:
        w.add("generator/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE", np.ones((7, 7, 3, 4), np.float32))
        w.add("save_counter/.ATTRIBUTES/VARIABLE_VALUE", np.int64(1))
    tfc.write_checkpoint_state(str(folder), "ckpt-1")
    rc, err = _tf2torch(folder, tmp_path / "out.safetensors", capsys)
    line = _error_line(err)
    assert rc == 2 and line.startswith(f"error: not a U-GAT-IT checkpoint: checkpoint {folder / 'ckpt-1'} has no "), line
    assert "generator/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE" in line, line
    assert "a TensorFlow 2 object-based checkpoint" in line, line
    assert not (tmp_path / "out.safetensors").exists()


# -- 5. the test phase given the folder as users give it -----------------------------------------------

@pytest.mark.parametrize("framework", ["torch_port", pytest.param("tf_reference", marks=pytest.mark.tf)])
def test_the_test_phase_says_where_the_checkpoints_are(tmp_path, monkeypatch, framework):
    """The official test command with the downloaded folder: `--checkpoint_dir` naming the run
    folder itself, or flags whose model_dir is not the folder's name (another --dataset, --sn).
    Both test phases said only "no checkpoint in '<checkpoint_dir>/<model_dir>' to translate with";
    now the line says what --checkpoint_dir holds and which flags the run folder's name records."""
    import cv2
    _run_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    for dataset in ("g", "selfie"):
        os.makedirs(f"dataset/{dataset}/testA")
        cv2.imwrite(f"dataset/{dataset}/testA/a.png", np.zeros((64, 64, 3), np.uint8))

    def refusal(**flags):
        cfg = opt.validate(opt.config_from(phase="test", light=True, ch=4, n_dis=5, img_size=64, result_dir="results",
                                           **flags))
        with pytest.raises(opt.OptionError) as e:
            if framework == "torch_port":
                from torch_port import translate
                translate.load_for_test(cfg, torch.device("cpu"))
            else:
                from tf_reference import train as phases
                phases.test(cfg)
        assert not os.path.exists("results")
        return str(e.value)

    said = refusal(dataset="g", checkpoint_dir=f"checkpoint/{OFFICIAL_DIR}")
    assert said.startswith(f"no checkpoint in 'checkpoint/{OFFICIAL_DIR}/{OFFICIAL_DIR}' to translate with"), said
    assert said.endswith(f"; --checkpoint_dir 'checkpoint/{OFFICIAL_DIR}' is itself a run folder holding "
                         f"checkpoints: give the folder above it ('checkpoint'), where the run folder "
                         f"'{OFFICIAL_DIR}' must match the flags"), said
    said = refusal(dataset="selfie", sn=False, checkpoint_dir="checkpoint")
    assert said.endswith(f"; --checkpoint_dir 'checkpoint' holds the run folder(s) '{OFFICIAL_DIR}' (its name "
                         f"records --dataset g, --sn True): the flags name the run folder (<model_dir>)"), said


def test_where_the_checkpoints_are_names_five_run_folders_then_dots(tmp_path):
    """A --checkpoint_dir holding many run folders: the error names the first five (sorted) and
    says there are more with " ...", so a line stays readable; four are named whole, no dots."""
    def run_folders(n):
        root = tmp_path / f"ckpt{n}"
        for i in range(n):
            (root / f"run{i}").mkdir(parents=True)
            (root / f"run{i}" / "UGATIT.model-1.index").write_bytes(b"")
        return str(root)
    said = policy.where_checkpoints_are(os.path.join(run_folders(7), "wanted"), {"light": True})
    named = [f"'run{i}'" for i in range(7) if f"'run{i}'" in said]
    assert named == [f"'run{i}'" for i in range(5)] and " ...: the flags name" in said, said
    said = policy.where_checkpoints_are(os.path.join(run_folders(4), "wanted"), {"light": True})
    assert all(f"'run{i}'" in said for i in range(4)) and "..." not in said, said


def test_where_the_checkpoints_are_says_a_morph_run_is_one(tmp_path):
    """The port's test phase finding no checkpoint listed a Morph run folder beside the wanted one
    as if its flags were the slip ("its name records ..."): it is another model, which Morph's
    commands read; said as such. A port run folder is listed as before."""
    root = tmp_path / "checkpoint"
    (root / "UGATIT_light_d_morphC").mkdir(parents=True)
    (root / "UGATIT_light_d_morphC" / "MorphUGATIT_C.model-3.safetensors").write_bytes(b"")
    (root / "UGATIT_light_e").mkdir()
    (root / "UGATIT_light_e" / "UGATIT_light.model-3.safetensors").write_bytes(b"")
    said = policy.where_checkpoints_are(str(root / "wanted"), {"light": True})
    assert "'UGATIT_light_d_morphC' (a Morph-UGATIT run: python -m morph interpolate / translate reads it)" in said
    assert "'UGATIT_light_e'" in said and "'UGATIT_light_e' (a Morph" not in said, said


def test_where_the_checkpoints_are_reads_an_ambiguous_name_as_the_slip_it_is(tmp_path):
    """`UGATIT_light_demo_...` is a light run on `demo` or a full one on `light_demo`. A test phase
    with `--light False --dataset demo` that found none said the folder "records --dataset
    light_demo" (the reading with the user's --light), where it records `--light True`, the slip
    README "Checkpoint policy" names. The reading that differs from the flags in fewer settings is
    named (a tie: the light one, as parse_model_dir without weights); a full run on `light_demo`
    at another --n_dis is still read as such."""
    root = tmp_path / "checkpoint"
    light_demo = opt.model_dir(opt.config_from(light=True, dataset="demo", n_dis=5))
    (root / light_demo).mkdir(parents=True)
    (root / light_demo / "UGATIT_light.model-3.index").write_bytes(b"")
    cfg = opt.config_from(light=False, dataset="demo", n_dis=5)
    said = policy.where_checkpoints_are(str(root / opt.model_dir(cfg)), cfg)
    assert f"'{light_demo}' (its name records --light True):" in said, said
    cfg = opt.config_from(light=False, dataset="light_demo", n_dis=6)
    said = policy.where_checkpoints_are(str(root / opt.model_dir(cfg)), cfg)
    assert f"'{light_demo}' (its name records --n_dis 5):" in said, said
    cfg = opt.config_from(light=True, dataset="other", n_dis=5)
    said = policy.where_checkpoints_are(str(root / opt.model_dir(cfg)), cfg)
    assert f"'{light_demo}' (its name records --dataset demo):" in said, said


@pytest.mark.parametrize("case", ["byte_order_mark", "single_quotes", "timestamps_crlf"])
def test_hand_edited_state_files_name_their_checkpoint(tmp_path, case):
    """The state-file forms above with a folder of one checkpoint read it whether or not the file
    is understood (a file naming nothing falls back on the one prefix); here the file itself must
    give the name it holds, as TF's text parser does."""
    _write_state(str(tmp_path), STATE_FILES[case])
    assert tfc.read_checkpoint_state(str(tmp_path))[0] == PREFIX


def test_a_state_file_naming_nothing_is_said_with_several_checkpoints(tmp_path):
    """A `checkpoint` state file with no model_checkpoint_path line, in a folder of several
    checkpoints: the error says the state file names none (not that there is no state file)."""
    for name in ("UGATIT.model-1", "UGATIT.model-2"):
        (tmp_path / f"{name}.index").write_bytes(b"")
    _write_state(str(tmp_path), "")
    with pytest.raises(tfc.CheckpointError, match=r"its `checkpoint` state file names no checkpoint: no "
                                                  r"model_checkpoint_path line\): several \*\.index files"):
        tfc.resolve_prefix(str(tmp_path))


def test_the_parent_of_a_port_run_folder_names_it(tmp_path):
    """`--checkpoint_dir`'s parent given for the run folder, where the run folder holds a PyTorch
    checkpoint (the port's): named as a subfolder holding checkpoints, as a TF one is."""
    (tmp_path / "UGATIT_light_x").mkdir()
    (tmp_path / "UGATIT_light_x" / "UGATIT_light.model-5.safetensors").write_bytes(b"")
    (tmp_path / "other").mkdir()
    with pytest.raises(tfc.CheckpointError, match=r"its subfolders hold checkpoints; give one of them: '[^']*"
                                                  r"UGATIT_light_x'$"):
        tfc.resolve_prefix(str(tmp_path))

"""The config of a TF checkpoint from what it records (ugatit_common.tf_checkpoint.config): the
`.meta` graph (parsed without TensorFlow), the official model_dir folder name, the weights.

Without TensorFlow: the folder-name parser, the .meta parser on hand-built graphs with other
node names and other variable kinds, the golden bundle (no .meta, no model_dir: it must say what
it guessed), conflicting records and flags. With TensorFlow (`-m tf`): real checkpoints written
by tf_reference for light/full x smoothing x sn x 32/64 px, converted with no flags (right config,
outputs equal TF), the same with the folder renamed / the .meta removed / both, a checkpoint from
`python -m tf_reference` itself, every GAN loss, and a run with TensorFlow unimportable.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping

import numpy as np
import pytest

import weights_convert as wc
from parity_tests.conftest import GOLDEN, ROOT
from ugatit_common import options as opt
from ugatit_common.tf_checkpoint import config as tcc
from ugatit_common.tf_checkpoint import metagraph as mg
from ugatit_common.tf_checkpoint.wire import _pb_bytes, _pb_varint

GOLDEN_CFG = dict(light=True, ch=4, n_res=4, n_dis=5, sn=True, smoothing=True, img_size=64, img_ch=3)  # record.json


def _cli(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "weights_convert.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _metadata(path):
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        return f.metadata()


def _guess_notes(stderr: str) -> dict:
    """{key: value} of the `note: ... guessed key=value (...)` lines on stderr."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("note: ") and " guessed " in line:
            key, _, rest = line.split(" guessed ", 1)[1].partition("=")
            text = rest.split(" (", 1)[0]
            out[key] = {"True": True, "False": False}.get(text) if text in ("True", "False") else json.loads(text)
    return out


# -- the folder name ---------------------------------------------------------------------------------

def test_parse_official_model_dir_names():
    p = tcc.parse_model_dir("UGATIT_light_selfie2anime_lsgan_4resblock_6dis_1_1_10_10_1000_sn_smoothing")
    assert p == dict(light=True, dataset="selfie2anime", gan_type="lsgan", n_res=4, n_dis=6, n_critic=1,
                     adv_weight=1, cycle_weight=10, identity_weight=10, cam_weight=1000, sn=True, smoothing=True)
    # underscores and gan-type words inside the data set name; no _sn, no _smoothing
    p = tcc.parse_model_dir("UGATIT_my_lsgan_set_wgan-gp_4resblock_5dis_5_1_10_10_1000")
    assert (p["light"], p["dataset"], p["gan_type"], p["n_critic"], p["sn"], p["smoothing"]) == \
        (False, "my_lsgan_set", "wgan-gp", 5, False, False)
    # smoothing without sn; float weights as printed
    p = tcc.parse_model_dir("UGATIT_a_hinge_4resblock_4dis_1_0.5_10_10_1000.5_smoothing")
    assert (p["adv_weight"], p["cam_weight"], p["sn"], p["smoothing"]) == (0.5, 1000.5, False, True)
    # `UGATIT_light_x` is light on x, or full on light_x: the weights decide
    name = "UGATIT_light_x_gan_4resblock_6dis_1_1_10_10_1000_sn"
    assert tcc.parse_model_dir(name)["light"] is True and tcc.parse_model_dir(name)["dataset"] == "x"
    full = tcc.parse_model_dir(name, light=False)
    assert full["light"] is False and full["dataset"] == "light_x"
    for not_one in ("final", "init", "UGATIT_x_lsgan_4resblock_6dis_1_1_10_10", "UGATIT_x_foo_4resblock_6dis_1_1_10_10_1000",
                    "UGATIT_light_x_lsgan_4resblock_6dis_1_1_10_10_1000_sn_morphC", "MorphUGATIT_x_lsgan_4resblock_6dis_1_1_10_10_1000"):
        assert tcc.parse_model_dir(not_one) is None, not_one


@pytest.mark.parametrize("light,dataset,gan_type,sn,smoothing,n_critic,weights", [
    (True, "selfie2anime", "lsgan", True, True, 1, (1, 10, 10, 1000)),
    (False, "horse_zebra", "dragan", False, True, 5, (2, 5, 7, 500)),
    (True, "a_b_c", "wgan-lp", True, False, 1, (1, 10, 10, 1000)),
    (False, "light_x", "hinge", False, False, 2, (1, 10, 10, 0)),
])
def test_model_dir_round_trip(light, dataset, gan_type, sn, smoothing, n_critic, weights):
    """Every name options.model_dir writes (the official format) parses back to its settings."""
    cfg = opt.config_from(light=light, dataset=dataset, gan_type=gan_type, sn=sn, smoothing=smoothing,
                          n_critic=n_critic, adv_weight=weights[0], cycle_weight=weights[1],
                          identity_weight=weights[2], cam_weight=weights[3], n_dis=5)
    parsed = tcc.parse_model_dir(opt.model_dir(cfg), light=light)
    assert parsed == {k: cfg[k] for k in parsed}


# -- the .meta parser, on hand-built graphs ---------------------------------------------------------------

def _shape(dims):
    return b"".join(_pb_bytes(2, _pb_varint(1, d)) for d in dims)


def _tensor(value: np.ndarray, packed=True):
    dtype = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3}[value.dtype]
    out = _pb_varint(1, dtype) + _pb_bytes(2, _shape(value.shape))
    if packed:
        return out + _pb_bytes(4, value.tobytes())
    if dtype == 3:
        return out + b"".join(_pb_varint(7, int(v)) for v in value.ravel())
    return out + _pb_bytes(6 if dtype == 2 else 5, value.tobytes())


def _node(name, op, inputs=(), **attrs):
    out = _pb_bytes(1, name.encode()) + _pb_bytes(2, op.encode())
    out += b"".join(_pb_bytes(3, i.encode()) for i in inputs)
    for key, (field, raw) in attrs.items():
        out += _pb_bytes(5, _pb_bytes(1, key.encode()) + _pb_bytes(2, _pb_bytes(field, raw)))
    return out


def _meta(path, nodes):
    graph = b"".join(_pb_bytes(1, n) for n in nodes)
    meta_info = _pb_bytes(1, _pb_bytes(1, b"ignored meta_info_def"))
    path.write_bytes(meta_info + _pb_bytes(2, graph) + _pb_bytes(3, b"\x08\x01"))
    return str(path)


def _synthetic(smoothing: bool, sizes=(24, 48), resource=True, input_size=48):
    """A graph with none of the official node names: resource variables, a double 0.1, ClipByValue,
    int_val (unpacked) resize sizes behind an Identity, a control input."""
    var_op, read_op = ("VarHandleOp", "ReadVariableOp") if resource else ("VariableV2", "Identity")
    nodes = [_node("net/blk7/rho", var_op, shape=(7, _shape([8]))),
             _node("net/blk7/r", read_op, ["net/blk7/rho"]),
             _node("net/blk7/k", "Const", value=(8, _tensor(np.array(0.1, np.float64), packed=False))),
             _node("net/x", "Placeholder", shape=(7, _shape([1, input_size, input_size, 3]))),
             _node("net/mix", "Mul", ["net/blk7/r:0", "net/x"])]
    if smoothing:
        nodes += [_node("net/blk7/s", "Sub", ["net/blk7/r", "net/blk7/k", "^net/x"]),
                  _node("net/blk7/c", "ClipByValue", ["net/blk7/s", "net/blk7/k", "net/blk7/k"])]
    for i, s in enumerate(sizes):
        nodes += [_node(f"up{i}/sz", "Const", value=(8, _tensor(np.array([s, s], np.int32), packed=False))),
                  _node(f"up{i}/szid", "Identity", ["up{i}/sz".format(i=i)]),
                  _node(f"up{i}/rs", "ResizeNearestNeighbor", ["net/mix", f"up{i}/szid"])]
    return nodes


@pytest.mark.parametrize("resource", [True, False])
def test_meta_structures_not_names(tmp_path, resource):
    for smoothing in (True, False):
        g = mg.read_meta_graph(_meta(tmp_path / f"m{smoothing}.meta", _synthetic(smoothing, resource=resource)))
        found = mg.recognise(g)
        assert found["smoothing"].value is smoothing
        assert found["img_size"].value == 48 and "up1/rs" in found["img_size"].detail
        assert g.variables() == {"net/blk7/rho": (8,)}
        assert "gan_type" not in found  # not a train graph


def test_meta_sub_of_other_value_or_unclipped_is_not_smoothing(tmp_path):
    nodes = _synthetic(False) + [_node("q/k", "Const", value=(8, _tensor(np.array(0.2, np.float32)))),
                                 _node("q/s", "Sub", ["net/blk7/r", "q/k"]), _node("q/m", "Minimum", ["q/s", "q/k"]),
                                 _node("q/s2", "Sub", ["net/blk7/r", "net/blk7/k"])]  # 0.1, but no clip after it
    assert mg.recognise(mg.read_meta_graph(_meta(tmp_path / "m.meta", nodes)))["smoothing"].value is False


def test_meta_inconsistent_graph_is_an_error(tmp_path):
    with pytest.raises(mg.MetaGraphError, match=r"up-sampling sizes \[20, 48\]"):
        mg.recognise(mg.read_meta_graph(_meta(tmp_path / "a.meta", _synthetic(True, sizes=(20, 48)))))
    with pytest.raises(mg.MetaGraphError, match=r"input 'net/x' has shape \[1, 64, 64, 3\]"):
        mg.recognise(mg.read_meta_graph(_meta(tmp_path / "b.meta", _synthetic(True, input_size=64))))
    bad = tmp_path / "c.meta"
    bad.write_bytes(b"\x12\xff\xff\xff\x0f garbage")
    with pytest.raises(mg.MetaGraphError, match="c.meta: not a readable MetaGraphDef"):
        mg.read_meta_graph(str(bad))


# -- the golden bundle: no .meta, no model_dir --------------------------------------------------------------

@pytest.mark.parametrize("which", ["init", "final"])
def test_golden_says_what_it_guessed(which, capsys):
    folder = os.path.join(GOLDEN, which)
    info = wc.read_tf_config_info(folder)
    assert {k: s.value for k, s in info.guessed.items()} == {"img_size": 256, "smoothing": True}
    assert "no UGATIT.model-" in info.guessed["img_size"].detail and "official default" in info.guessed["img_size"].detail
    assert f"the folder name {which!r} is not an official model_dir" in info.guessed["smoothing"].detail
    assert {k: info.config[k] for k in GOLDEN_CFG if k not in ("img_size",)} == \
        {k: v for k, v in GOLDEN_CFG.items() if k != "img_size"}
    assert set(info.unrecorded) == set(tcc.TRAINING_KEYS)
    # the flag fills the gap: no longer guessed, source `flag`
    info = wc.read_tf_config_info(folder, {"img_size": 64})
    assert set(info.guessed) == {"smoothing"} and info.settings["img_size"].source == "flag"
    cfg, _ = wc.tf_to_torch(folder, overrides={"img_size": 64})
    err = capsys.readouterr().err
    assert cfg == GOLDEN_CFG
    assert _guess_notes(err) == {"smoothing": True} and "not recorded (training settings" in err


def test_golden_cli_reports_guesses_in_stderr_and_metadata(tmp_path):
    out = tmp_path / "g.safetensors"
    proc = _cli("tf2torch", os.path.join(GOLDEN, "final"), str(out))
    assert proc.returncode == 0, proc.stderr
    assert _guess_notes(proc.stderr) == {"img_size": 256, "smoothing": True}
    meta = _metadata(out)
    assert json.loads(meta["ugatit_config_guessed"]) == {"img_size": 256, "smoothing": True}
    sources = json.loads(meta["ugatit_config_sources"])
    assert sources["img_size"] == sources["smoothing"] == "default" and sources["light"] == "weights"
    assert set(json.loads(meta["ugatit_config_read"])) == {"light", "ch", "n_res", "n_dis", "sn", "img_ch"}
    assert json.loads(meta["ugatit_config"])["img_size"] == 256
    # .pt carries the same
    pt = tmp_path / "g.pt"
    assert _cli("tf2torch", os.path.join(GOLDEN, "final"), str(pt), "--img_size", "64").returncode == 0
    _, pmeta = wc.load_torch_weights(str(pt))
    assert json.loads(pmeta["ugatit_config_guessed"]) == {"smoothing": True}


def _golden_in(tmp_path, folder_name):
    dst = tmp_path / folder_name
    shutil.copytree(os.path.join(GOLDEN, "final"), dst)
    return str(dst)


def test_records_that_disagree_are_an_error(tmp_path):
    # the folder name says 6 discriminator layers, the weights have 5
    folder = _golden_in(tmp_path, "UGATIT_light_g_lsgan_4resblock_6dis_1_1_10_10_1000_sn_smoothing")
    with pytest.raises(tcc.ConfigConflict, match=r"disagree on n_dis: the model_dir folder name records n_dis=6 .* "
                                                  r"but the weights record n_dis=5"):
        wc.read_tf_config(folder)
    proc = _cli("tf2torch", folder, str(tmp_path / "o.safetensors"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "n_dis=6" in proc.stderr \
        and "n_dis=5" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()
    # a full model's folder name on light weights
    folder = _golden_in(tmp_path, "UGATIT_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing")
    with pytest.raises(tcc.ConfigConflict, match=r"light=False .* light=True"):
        wc.read_tf_config(folder)


def test_folder_name_fills_in_and_flags_must_agree(tmp_path, capsys):
    folder = _golden_in(tmp_path, "UGATIT_light_g_x_hinge_4resblock_5dis_3_2_5_7_500_sn")
    info = wc.read_tf_config_info(folder)
    assert info.settings["smoothing"] == tcc.Setting(False, "model_dir", info.settings["smoothing"].detail)
    assert {k: info.config[k] for k in ("dataset", "gan_type", "n_critic", "adv_weight", "cycle_weight",
                                        "identity_weight", "cam_weight")} == \
        dict(dataset="g_x", gan_type="hinge", n_critic=3, adv_weight=2, cycle_weight=5, identity_weight=7, cam_weight=500)
    assert set(info.guessed) == {"img_size"} and not info.unrecorded
    assert info.settings["n_dis"].origin == "model_dir+weights"
    # a flag that contradicts the folder name: exit 2, both values named; nothing written
    out = tmp_path / "o.safetensors"
    proc = _cli("tf2torch", folder, str(out), "--smoothing", "True")
    assert proc.returncode == 2, proc.stderr
    assert "does not match --smoothing True" in proc.stderr and "smoothing=False" in proc.stderr
    assert not out.exists()
    # the report command line: the same check, exit 2
    from parity_tests import report
    assert report.main([folder, str(tmp_path / "rep"), "--smoothing", "True"]) == 2
    assert "does not match --smoothing True" in capsys.readouterr().err
    # a flag that agrees is fine
    assert wc.read_tf_config(folder, {"smoothing": False, "img_size": 64})["img_size"] == 64


def test_corrupt_meta_is_named(tmp_path):
    folder = _golden_in(tmp_path, "final")
    (tmp_path / "final" / "UGATIT.model-3.meta").write_bytes(b"\x12\x05abc")
    proc = _cli("tf2torch", folder, str(tmp_path / "o.safetensors"))
    assert proc.returncode == 2 and "UGATIT.model-3.meta" in proc.stderr and "MetaGraphDef" in proc.stderr


def test_an_unreadable_meta_is_read_past_with_the_flags_it_asks_for(tmp_path):
    """A truncated .meta (a cut download): the error said "or give the settings as flags", but
    with every flag given it still stopped (the official test phase never reads the .meta). Now it
    names the flags that are needed (--img_size: the folder name records smoothing), and with them
    converts exactly what the checkpoint without its .meta converts to, saying it read past."""
    from safetensors.numpy import load_file
    folder = _golden_in(tmp_path, "UGATIT_light_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing")
    plain = tmp_path / "plain.safetensors"
    assert _cli("tf2torch", folder, str(plain), "--img_size", "64").returncode == 0  # no .meta: the truth
    meta = os.path.join(folder, "UGATIT.model-3.meta")
    with open(meta, "wb") as f:
        f.write(b"\x12\x05abc")
    out = tmp_path / "o.safetensors"
    proc = _cli("tf2torch", folder, str(out))
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error:"), proc.stderr
    assert "UGATIT.model-3.meta" in errors[0] and "--img_size" in errors[0] and "--smoothing" not in errors[0]
    assert not out.exists()
    proc = _cli("tf2torch", folder, str(out), "--img_size", "64")
    assert proc.returncode == 0 and "read past" in proc.stderr, proc.stderr
    got, want = load_file(str(out)), load_file(str(plain))
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert json.loads(_metadata(out)["ugatit_config"]) == json.loads(_metadata(plain)["ugatit_config"])


# == real checkpoints written by tf_reference (TensorFlow needed to write them) ==================================

CHILD_BLOCK_ENV = "UGATIT_TF_BLOCKED"
# with the `python -m tf_reference` checkpoint (light, no smoothing, sn, 32 px) these cover each of
# light/full, smoothing True/False, sn True/False and 32/64 px at least once
SUBSET = ["light-smooth-nosn-64", "full-smooth-sn-32", "full-nosmooth-nosn-64"]
# The one checkpoint written by `python -m tf_reference` itself: one training iteration, a train
# graph with non-default loss settings, so every recorded setting differs from its default.
CLI_CFG = dict(light=True, smoothing=False, sn=True, img_size=32, n_dis=4, ch=2, gan_type="hinge", n_critic=2,
               adv_weight=2, cycle_weight=5, identity_weight=7, cam_weight=500)


def _expected(c: dict) -> dict:
    from parity_tests.tf_checkpoints import DATASET
    cfg = opt.config_from(c, dataset=DATASET)
    return {k: cfg[k] for k in tcc.MODEL_KEYS + ("dataset",) + tcc.TRAINING_KEYS}


class _Combos(Mapping):
    """{combo name: (checkpoint folder, config)} for every COMBO; a combination's forward
    checkpoint is written by tf_reference when first asked for (the quick tier's tests use 6 of
    the 16; the full tier's iterate over all)."""

    def __init__(self, root: str):
        from parity_tests import tf_checkpoints as T
        self._T, self._root = T, root
        self._combos = {T.combo_name(c): c for c in T.COMBOS}
        self._written = {}

    def __getitem__(self, name):
        if name not in self._written:
            cfg = self._T.full_config(self._root, **self._combos[name])
            self._written[name] = (os.path.dirname(self._T.write_forward_checkpoint(self._root, cfg)), cfg)
        return self._written[name]

    def __iter__(self):
        return iter(self._combos)

    def __len__(self):
        return len(self._combos)


class _TFRuns:
    """The module's real checkpoints: `python -m tf_reference` (one training iteration) started in
    the background first, then the forward checkpoints written here, as they are asked for, while
    it runs (two cores: the two overlap)."""

    def __init__(self, base: str):
        from parity_tests import tf_checkpoints as T
        self.cli_root = os.path.join(base, "official_cli")
        T.make_dataset(self.cli_root)
        self.cli_cfg = dict(T.full_config(self.cli_root, **CLI_CFG), checkpoint_dir="checkpoint",
                            result_dir="results", log_dir="logs", sample_dir="samples")
        self._proc = T.start_official_cli(self.cli_root, self.cli_cfg)
        self.combos = _Combos(os.path.join(base, "forward"))

    def official(self):
        """(root, cfg, checkpoint folder) of the `python -m tf_reference` run."""
        rc = self._proc.wait(timeout=900)
        with open(os.path.join(self.cli_root, "cli.err")) as fh:
            assert rc == 0, fh.read()[-3000:]
        return self.cli_root, self.cli_cfg, os.path.join(self.cli_root, "checkpoint", opt.model_dir(self.cli_cfg))


@pytest.fixture(scope="module")
def tf_runs(tmp_path_factory):
    runs = _TFRuns(str(tmp_path_factory.mktemp("tiny_tf")))
    yield runs
    if runs._proc.poll() is None:
        runs._proc.kill()
        runs._proc.wait()


@pytest.fixture(scope="module")
def tiny(tf_runs):
    """{combo name: (checkpoint folder, config)} for every COMBO, written by tf_reference on demand."""
    return tf_runs.combos


@pytest.fixture(scope="module")
def official_run(tf_runs):
    return tf_runs.official()


@pytest.mark.slow  # full tier: all 16 combinations
@pytest.mark.tf
def test_every_combination_reads_its_config(tiny):
    """light/full x smoothing x sn x 32/64 px: no flags, the right config, nothing guessed; smoothing
    and img_size come from the .meta, the rest agrees across .meta, folder name and weights."""
    assert len(tiny) == 16
    for name, (folder, cfg) in tiny.items():
        info = wc.read_tf_config_info(folder)
        assert {k: info.config.get(k) for k in _expected(cfg)} == _expected(cfg), name
        assert not info.guessed and not info.unrecorded, name
        assert info.settings["smoothing"].origin == "meta+model_dir", name
        assert info.settings["img_size"].origin == ("meta" if cfg["light"] else "meta+weights"), name
        assert info.settings["sn"].origin == "model_dir+weights", name


@pytest.mark.tf
@pytest.mark.parametrize("name", [SUBSET[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in SUBSET[1:]])
def test_converted_with_no_flags_reproduces_tf(tiny, name):
    """The config from the checkpoint alone builds a port whose every layer equals TF's (the
    harness's criteria, float32 and float64) for the model that wrote the checkpoint."""
    from parity_tests.harness import compare_networks, failures
    folder, cfg = tiny[name]
    got, state = wc.tf_to_torch(folder)
    assert {k: got[k] for k in tcc.MODEL_KEYS} == {k: cfg[k] for k in tcc.MODEL_KEYS}
    rows = compare_networks(folder, got)
    assert sum(r["output"] for r in rows.values()) == 12 and len(rows) > 100
    bad = failures(rows)
    assert not bad, "\n".join(bad[:10])


def _image_gap(folder, true_cfg, port_cfg, state) -> float:
    """max |port image - TF image| of generator_B, the port built with `port_cfg`."""
    import torch

    from parity_tests.harness import input_image, tf_forward, torch_forward
    from ugatit_common.tf_checkpoint import BundleReader
    with BundleReader(folder) as r:
        weights = {n: r.read(n) for n in r.keys() if n.startswith("generator_B")}
    x = input_image(true_cfg, 0)
    ref = tf_forward(weights, true_cfg, x, nets=("generator_B",))["generator_B:image"]
    got = torch_forward(state, opt.config_from(port_cfg), torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                        nets=("generator_B",))["generator_B:image"]
    return float(np.abs(got - ref.transpose(0, 3, 1, 2)).max())


@pytest.mark.tf
@pytest.mark.slow
def test_renamed_folder_and_removed_meta(tiny, tmp_path):
    """Conversion still works without the folder name, without the .meta, without both, and
    says exactly what it guessed (stderr and the file's metadata). The guesses are why this
    matters: a smoothing-False 64 px light model converted with the defaults is another model."""
    folder, cfg = tiny["light-nosmooth-sn-64"]
    model_dir, prefix = os.path.basename(folder), os.path.basename(wc.resolve_prefix(folder))
    variants = {"renamed": ("my_model", False, {}),
                "no_meta": (model_dir, True, {"img_size": 256}),
                "neither": ("my_model", True, {"img_size": 256, "smoothing": True})}
    for what, (dirname, drop_meta, guessed) in variants.items():
        dst = tmp_path / what / dirname
        shutil.copytree(folder, dst)
        if drop_meta:
            os.remove(dst / f"{prefix}.meta")
        out = tmp_path / f"{what}.safetensors"
        proc = _cli("tf2torch", str(dst), str(out))
        assert proc.returncode == 0, proc.stderr
        assert _guess_notes(proc.stderr) == guessed, (what, proc.stderr)
        assert json.loads(_metadata(out)["ugatit_config_guessed"]) == guessed, what
        conf = json.loads(_metadata(out)["ugatit_config"])
        assert {k: conf[k] for k in tcc.MODEL_KEYS} == {k: guessed.get(k, cfg[k]) for k in tcc.MODEL_KEYS}, what
        assert ("not recorded (training settings" in proc.stderr) == (dirname == "my_model"), what
        if what == "neither":
            missing = f"no {prefix}.meta beside the checkpoint; the folder name 'my_model' is not an official model_dir"
            assert missing in proc.stderr
            # the guessed config is another model: its outputs are far from TF's ...
            guessed_cfg, state = wc.tf_to_torch(str(dst), generators_only=True, quiet=True)
            assert _image_gap(str(dst), opt.config_from(cfg), dict(guessed_cfg, img_size=64), state) > 1e-2
            # ... and the flags that fill the gaps give TF's model back
            fixed, state = wc.tf_to_torch(str(dst), generators_only=True, overrides={"img_size": 64, "smoothing": False})
            assert _image_gap(str(dst), opt.config_from(cfg), fixed, state) < 1e-4
    # a full model's weights fix its image size: only smoothing is guessed
    folder, cfg = tiny["full-nosmooth-nosn-32"]
    dst = tmp_path / "full" / "x"
    shutil.copytree(folder, dst)
    os.remove(dst / (os.path.basename(wc.resolve_prefix(folder)) + ".meta"))
    info = wc.read_tf_config_info(str(dst))
    assert {k: s.value for k, s in info.guessed.items()} == {"smoothing": True}
    assert info.settings["img_size"] == tcc.Setting(32, "weights", info.settings["img_size"].detail)


@pytest.mark.tf
def test_meta_of_another_model_is_an_error(tiny, tmp_path):
    light, _ = tiny["light-smooth-sn-32"]
    full, _ = tiny["full-smooth-sn-32"]
    dst = tmp_path / "x"
    shutil.copytree(full, dst)
    prefix = os.path.basename(wc.resolve_prefix(full))
    shutil.copy(wc.resolve_prefix(light) + ".meta", dst / f"{prefix}.meta")
    with pytest.raises(tcc.ConfigConflict, match=rf"{prefix}\.meta: this MetaGraphDef is not the graph of the "
                                                 rf"checkpoint beside it \(generator_A/MLP/linear_0/dense/kernel"):
        wc.read_tf_config(str(dst))


@pytest.mark.tf
def test_meta_and_folder_name_that_disagree_are_an_error(tiny, tmp_path):
    """The .meta graph has no smoothing, the folder name says `_smoothing`: an error naming both."""
    folder, cfg = tiny["light-nosmooth-sn-64"]
    dst = tmp_path / (os.path.basename(folder) + "_smoothing")
    shutil.copytree(folder, dst)
    proc = _cli("tf2torch", str(dst), str(tmp_path / "o.safetensors"))
    assert proc.returncode == 2, proc.stderr
    assert "disagree on smoothing: the .meta graph records smoothing=False" in proc.stderr
    assert "but the model_dir folder name records smoothing=True" in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.slow  # full tier: all 16 combinations
@pytest.mark.tf
def test_without_tensorflow(tiny, tmp_path):
    """TensorFlow unimportable (a package named tensorflow that raises on import, first on the
    path): every combination still converts, through the command line and through torch_port,
    to the right config."""
    blocker = tmp_path / "block" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("TensorFlow is blocked for this test run")\n')
    folders = {name: folder for name, (folder, _) in tiny.items()}
    script = f"""
import json, os, sys
try:
    import tensorflow  # noqa: F401
    sys.exit("tensorflow is importable")
except ImportError:
    pass
import weights_convert as wc
from safetensors import safe_open
from torch_port import checkpoint as ck
out = {{}}
for name, folder in json.loads(sys.argv[1]).items():
    path = os.path.join(sys.argv[2], name + ".safetensors")
    assert wc.main(["tf2torch", folder, path]) == 0, name
    with safe_open(path, "np") as f:
        meta = f.metadata()
    cfg, state = ck.read_tf_weights(folder)
    assert cfg == json.loads(meta["ugatit_config"]), name
    out[name] = {{"config": cfg, "guessed": json.loads(meta["ugatit_config_guessed"])}}
assert "tensorflow" not in sys.modules
print("RESULT " + json.dumps(out))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "block"), ROOT]), **{CHILD_BLOCK_ENV: "1"})
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(folders), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert set(result) == set(tiny)
    for name, (_, cfg) in tiny.items():
        assert result[name]["guessed"] == {}, name
        assert {k: result[name]["config"][k] for k in _expected(cfg)} == _expected(cfg), name


@pytest.mark.tf
def test_official_command_line_checkpoint(official_run, tmp_path):
    """A train-phase checkpoint of `python -m tf_reference`: the .meta is the official train graph
    (iterators, Adam, summaries); everything it records is read, the loss settings included;
    converted with no flags, the port equals TF."""
    from parity_tests.harness import compare_networks, failures
    root, cfg, folder = official_run
    assert os.path.isfile(os.path.join(folder, "UGATIT_light.model-2.meta"))
    info = wc.read_tf_config_info(folder)
    assert {k: info.config[k] for k in _expected(cfg)} == _expected(cfg)
    assert not info.guessed and not info.unrecorded
    assert "IteratorGetNext" in info.settings["img_size"].detail
    # (the run record tf_reference wrote into its folder, ugatit-run.json, agrees with both)
    for key in ("smoothing", "gan_type", "adv_weight", "cycle_weight", "identity_weight", "cam_weight"):
        assert info.settings[key].origin == "meta+model_dir+run_record", key
    assert info.settings["n_critic"].origin == "model_dir+run_record"
    # the same without the folder name (nor the run record): the graph alone records the loss settings
    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    os.remove(renamed / "ugatit-run.json")
    alone = wc.read_tf_config_info(str(renamed))
    assert {k: alone.config[k] for k in ("gan_type", "adv_weight", "cycle_weight", "identity_weight", "cam_weight",
                                         "smoothing", "img_size")} == {k: cfg[k] for k in ("gan_type", "adv_weight",
                                                                                          "cycle_weight", "identity_weight",
                                                                                          "cam_weight", "smoothing",
                                                                                          "img_size")}
    assert alone.unrecorded == ["n_critic"] and not alone.guessed
    st = wc.read_tf_training_state(folder, quiet=True)
    assert st["step"] == 2 and st["config"] == info.config and len(st["G_slots"]) > 100
    got, _ = wc.tf_to_torch(folder, quiet=True)
    bad = failures(compare_networks(folder, got))
    assert not bad, "\n".join(bad[:10])


@pytest.mark.tf
def test_resume_and_init_from_check_the_run_against_the_checkpoint(official_run):
    """`python -m torch_port` resuming the official run, and `python -m morph --init_from` it:
    a run setting that contradicts what the checkpoint records stops with both values named
    (here the image size, which only the .meta records for a light model); agreeing runs start."""
    root, cfg, folder = official_run
    flags = ["--light", "True", "--dataset", cfg["dataset"], "--img_size", "32", "--ch", "2", "--n_dis", "4",
             "--smoothing", "False", "--gan_type", "hinge", "--n_critic", "2", "--adv_weight", "2", "--cycle_weight",
             "5", "--identity_weight", "7", "--cam_weight", "500", "--augment_flag", "False", "--iteration", "1",
             "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    wrong = list(flags)
    wrong[wrong.index("--img_size") + 1] = "64"
    wrong_dir = ["--checkpoint_dir", os.path.join(root, "ck_wrong")]
    shutil.copytree(folder, os.path.join(root, "ck_wrong", opt.model_dir(opt.config_from(cfg, img_size=64))))
    proc = subprocess.run([sys.executable, "-m", "torch_port", *wrong, *wrong_dir, "--epoch", "3"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "does not match --img_size 64" in proc.stderr and "img_size=32" in proc.stderr, proc.stderr
    resume_dir = ["--checkpoint_dir", os.path.join(root, "ck_resume")]  # a copy: the run adds torch checkpoints
    shutil.copytree(folder, os.path.join(root, "ck_resume", opt.model_dir(cfg)))
    proc = subprocess.run([sys.executable, "-m", "torch_port", *flags, *resume_dir, "--epoch", "3"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"Success to read the TensorFlow checkpoint .*at counter 2", proc.stdout), proc.stdout[-2000:]
    # morph: the run's smoothing against the checkpoint's
    from morph.__main__ import main as morph_main
    mflags = ["train", "--config", "A", "--dataset", cfg["dataset"], "--img_size", "32", "--ch", "2", "--n_dis", "4",
              "--light", "True", "--smoothing", "True", "--epoch", "1", "--iteration", "1", "--device", "cpu",
              "--checkpoint_dir", os.path.join(root, "mck"), "--result_dir", os.path.join(root, "mres"),
              "--log_dir", os.path.join(root, "mlog"), "--sample_dir", os.path.join(root, "msam"),
              "--data_root", root, "--init_from", folder]
    err_file = os.path.join(root, "morph_err.txt")
    with open(err_file, "w") as fh:
        old, sys.stderr = sys.stderr, fh
        try:
            rc = morph_main(mflags)
        finally:
            sys.stderr = old
    err = open(err_file).read()
    assert rc == 2 and "does not match --smoothing True" in err and "smoothing=False" in err, err


def _loss_graph_meta(path, gan_type):
    """tf_reference's adversarial losses (and gradient penalty) on one discriminator, with Adam:
    the loss part of the official train graph, for each GAN type."""
    from parity_tests import tf_checkpoints as T
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    from tf_reference.ops import discriminator_loss, generator_loss
    cfg = T.full_config(str(path.parent), light=True, ch=2, img_size=32, n_dis=4, gan_type=gan_type)
    g = tf.Graph()
    with g.as_default():
        m = UGATITGraph(cfg)
        real = tf.placeholder(tf.float32, [1, 32, 32, 3], name="real")
        fake = tf.placeholder(tf.float32, [1, 32, 32, 3], name="fake")
        real_logit, real_cam, _, _ = m.discriminator(real, scope="discriminator_A")
        fake_logit, fake_cam, _, _ = m.discriminator(fake, reuse=True, scope="discriminator_A")
        gp = sum(m.gradient_penalty(real, fake, "discriminator_A")) if ("wgan" in gan_type or gan_type == "dragan") else 0
        d_loss = discriminator_loss(gan_type, real_logit, fake_logit) + discriminator_loss(gan_type, real_cam, fake_cam) + gp
        g_loss = generator_loss(gan_type, fake_logit) + generator_loss(gan_type, fake_cam)
        tf.train.AdamOptimizer(1e-4).minimize(d_loss + 0 * g_loss)
        tf.train.export_meta_graph(filename=str(path))
    return str(path)


@pytest.mark.tf
@pytest.mark.parametrize("gan_type", [g if g in ("lsgan", "wgan-gp") else pytest.param(g, marks=pytest.mark.slow)
                                      for g in opt.GAN_TYPES])  # quick: one plain, one gradient-penalty loss
def test_every_gan_loss_is_recognised(tmp_path, gan_type):
    g = mg.read_meta_graph(_loss_graph_meta(tmp_path / "g.meta", gan_type))
    assert mg.find_gan_type(g).value == gan_type
    assert mg.find_gan_type(g, img_size=32).value == gan_type  # with the image size the train graph records


@pytest.mark.tf
def test_inference_honours_a_light_models_img_size_over_its_meta(tiny):
    """The test phase and the exports (`load_any`) of a light TF checkpoint take `--img_size` as
    the official test phase does: its .meta records the training size, which the weights do not
    fix. A full model's MLP fixes it: another size is refused, naming both. (A training resume at
    another size is still refused: test_resume_and_init_from_check_the_run_against_the_checkpoint.)"""
    from torch_port.checkpoint import load_any
    from ugatit_common.options import OptionError
    folder, cfg = tiny["light-smooth-nosn-64"]
    got = load_any(folder, {"img_size": 32})
    assert got["config"]["img_size"] == 32 and got["config"]["light"] and got["config"]["smoothing"] is True
    folder, cfg = tiny["full-smooth-sn-32"]
    with pytest.raises(OptionError, match="img_size") as e:
        load_any(folder, {"img_size": 64})
    assert "64" in str(e.value) and "32" in str(e.value)


@pytest.mark.tf
@pytest.mark.parametrize("n_dis", [4, 6])
def test_the_image_size_rule_is_the_official_graphs(n_dis):
    """The flags and tf2torch accept exactly the sizes the official graph runs at: the global
    discriminator halves the image n_dis-1 times (rounding down), then reflect-pads by 1 and 2,
    which needs 3 pixels (24 px at n_dis 4, 96 at n_dis 6: the rule once asked for 4, refusing
    checkpoints the official code trains). The truth is TensorFlow running the official
    discriminator at the smallest accepted size and failing 4 px below it."""
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph

    def runs(size):
        with tf.Graph().as_default():
            m = UGATITGraph(opt.config_from(img_size=size, n_dis=n_dis, ch=1, light=True, phase="test"))
            x = tf.placeholder(tf.float32, [1, size, size, 3])
            out = m.discriminator(x, scope="discriminator_A")
            with tf.Session() as s:
                s.run(tf.global_variables_initializer())
                try:
                    s.run(out[0], {x: np.zeros((1, size, size, 3), np.float32)})
                    return True
                except tf.errors.InvalidArgumentError:
                    return False

    least = 2 ** (n_dis + 1)  # runs; the truth: the smallest multiple of 4 that TensorFlow runs at
    assert runs(least)
    while runs(least - 4):
        least -= 4
    opt.validate(opt.config_from(img_size=least, n_dis=n_dis))  # the official flags take it
    with pytest.raises(opt.OptionError, match="img_size"):
        opt.validate(opt.config_from(img_size=least - 4, n_dis=n_dis))
    assert least == opt.min_img_size(n_dis)
    wc._check_img_size({"img_size": least, "n_dis": n_dis})  # tf2torch converts its checkpoints
    with pytest.raises(wc.ConversionError, match="img_size"):
        wc._check_img_size({"img_size": least - 4, "n_dis": n_dis})

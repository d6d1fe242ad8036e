"""`weights_convert.py tf2torch` of a TF checkpoint folder whose `.meta` is lost reads the run
record `ugatit-run.json` every trainer writes there (checkpoint_policy.write_run_record): the
image size and the official flags it holds are taken from it (before: img_size guessed as the
official 256, smoothing guessed, the training settings "not recorded"); a record that disagrees
with the variables or a flag is one `error:` line naming both, exit 2; a damaged one is one
`error:` line naming it, exit 2; nothing written in either case. A folder without a record (an
official checkpoint) converts as before. The checkpoint: the golden bundle's official one (light,
ch 4, n_dis 5, 64 px, no .meta), in a folder whose name is no official model_dir."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import weights_convert as wc
from parity_tests.conftest import GOLDEN
from parity_tests.test_nonfinite_and_flags import error_line
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common import run_lock

with open(os.path.join(GOLDEN, "record.json")) as _fh:
    RUN = opt.config_from(**{k: v for k, v in json.load(_fh)["config"].items() if k in opt.DEFAULTS})
# what the converter takes from a record: the model's settings and the training settings
KEYS = ("light", "ch", "n_res", "n_dis", "sn", "smoothing", "img_size", "img_ch", "gan_type", "n_critic",
        "adv_weight", "cycle_weight", "identity_weight", "cam_weight")


def _folder(tmp_path, cfg=RUN, name="run"):
    """The golden checkpoint in `<tmp>/<name>/` with the run record a trainer of `cfg` writes
    (None: no record)."""
    folder = str(tmp_path / name)
    shutil.copytree(os.path.join(GOLDEN, "final"), folder)
    if cfg is not None:
        with run_lock.acquire(folder) as owner:
            policy.write_run_record(folder, cfg, "tf_reference", owner)
    return folder


def _tf2torch(capsys, *argv):
    capsys.readouterr()
    rc = wc.main(["tf2torch", *map(str, argv)])
    return rc, capsys.readouterr()


def _config_of(out):
    return json.loads(policy.safetensors_metadata(out)["ugatit_config"])


def test_the_run_record_gives_what_the_variables_do_not(tmp_path, capsys):
    # a run at a size and with flags other than the official defaults, as only its record says
    run = dict(RUN, smoothing=not RUN["smoothing"], gan_type="hinge", cam_weight=RUN["cam_weight"] + 1)
    folder = _folder(tmp_path, run)
    out = tmp_path / "m.safetensors"
    rc, got = _tf2torch(capsys, folder, out)
    assert rc == 0, got.err
    cfg = _config_of(str(out))
    assert {k: cfg[k] for k in KEYS} == {k: run[k] for k in KEYS}
    meta = policy.safetensors_metadata(str(out))
    assert json.loads(meta["ugatit_config_guessed"]) == {} and json.loads(meta["ugatit_config_not_recorded"]) == []
    assert json.loads(meta["ugatit_config_sources"])["img_size"] == "run_record"
    assert "img_size" in json.loads(meta["ugatit_config_read"])
    assert "guessed" not in got.err and "not recorded" not in got.err, got.err
    assert policy.RUN_RECORD in got.out  # the provenance lines name it
    # a flag that agrees with it is fine
    rc, got = _tf2torch(capsys, folder, tmp_path / "m2.safetensors", "--img_size", run["img_size"])
    assert rc == 0, got.err
    # and the record, a record of the run, stays the setting's source (the flag only agrees with it)
    meta = policy.safetensors_metadata(str(tmp_path / "m2.safetensors"))
    assert json.loads(meta["ugatit_config_sources"])["img_size"] == "run_record", meta


def test_a_folder_without_a_record_converts_as_before(tmp_path, capsys):
    folder = _folder(tmp_path, None)
    out = tmp_path / "m.safetensors"
    rc, got = _tf2torch(capsys, folder, out)
    assert rc == 0, got.err
    assert _config_of(str(out))["img_size"] == opt.DEFAULTS["img_size"]  # the official default, guessed
    assert f"guessed img_size={opt.DEFAULTS['img_size']}" in got.err


@pytest.mark.parametrize("key,other", [("ch", RUN["ch"] * 2), ("light", not RUN["light"]), ("n_dis", RUN["n_dis"] + 1)])
def test_a_record_that_the_variables_contradict_is_refused(key, other, tmp_path, capsys):
    folder = _folder(tmp_path, dict(RUN, **{key: other}))
    out = tmp_path / "m.safetensors"
    rc, got = _tf2torch(capsys, folder, out)
    line = error_line(got.err)
    assert rc == 2, got.err
    assert f"the weights record {key}={RUN[key]}" in line, line
    assert repr(os.path.join(folder, policy.RUN_RECORD)) in line and f"records {key}={other}" in line, line
    assert not os.path.exists(out)


def test_a_flag_that_the_record_contradicts_is_refused(tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "m.safetensors"
    rc, got = _tf2torch(capsys, folder, out, "--img_size", RUN["img_size"] * 2)
    line = error_line(got.err)
    assert rc == 2, got.err
    assert f"--img_size {RUN['img_size'] * 2}" in line and f"records img_size={RUN['img_size']}" in line, line
    assert policy.RUN_RECORD in line and not os.path.exists(out)


@pytest.mark.parametrize("damage", ["truncated", "no_size", "bad_option", "other_size", "bool_size", "options_list"])
def test_a_damaged_record_is_one_error_naming_it(damage, tmp_path, capsys):
    folder = _folder(tmp_path)
    record = os.path.join(folder, policy.RUN_RECORD)
    text = open(record, "rb").read()
    parsed = json.loads(text)
    if damage == "truncated":
        text = text[: len(text) // 2]
    elif damage == "no_size":
        text = json.dumps({k: v for k, v in parsed.items() if k != "img_size"}).encode()
    elif damage == "bad_option":
        parsed["options"]["smoothing"] = "maybe"
        text = json.dumps(parsed).encode()
    elif damage == "bool_size":  # JSON true is no size (Python's bool is an int: True would read as 1)
        options = {k: v for k, v in parsed["options"].items() if k != "img_size"}  # (optional there)
        text = json.dumps(dict(parsed, img_size=True, options=options)).encode()
    elif damage == "options_list":
        text = json.dumps(dict(parsed, options=[parsed["img_size"]])).encode()
    else:
        parsed["options"]["img_size"] = parsed["img_size"] * 2
        text = json.dumps(parsed).encode()
    with open(record, "wb") as fh:
        fh.write(text)
    out = tmp_path / "m.safetensors"
    rc, got = _tf2torch(capsys, folder, out)
    line = error_line(got.err)
    assert rc == 2, got.err
    assert repr(record) in line and "damaged" in line, line
    assert not os.path.exists(out)


def test_the_ports_readers_take_the_record_too(tmp_path):
    """The port's test phase (--checkpoint), its exports and Morph's --init_from read a TF folder
    through torch_port.checkpoint.read_tf_weights: the record gives them the run's size too (a
    light model whose .meta is lost was translated and exported at the guessed 256)."""
    from torch_port import checkpoint as ck
    with_record, without = _folder(tmp_path, name="with"), _folder(tmp_path, None, name="without")
    assert RUN["img_size"] != opt.DEFAULTS["img_size"]  # else the case shows nothing
    assert ck.load_any(with_record)["config"]["img_size"] == RUN["img_size"]
    assert ck.load_any(without)["config"]["img_size"] == opt.DEFAULTS["img_size"]
    cfg, _ = ck.read_tf_weights(with_record)
    assert {k: cfg[k] for k in KEYS} == {k: RUN[k] for k in KEYS}
    # a damaged record: one error naming it, as tf2torch says
    with open(os.path.join(with_record, policy.RUN_RECORD), "w") as fh:
        fh.write("{")
    with pytest.raises(opt.OptionError, match="damaged") as e:
        ck.load_any(with_record)
    assert policy.RUN_RECORD in str(e.value)


def test_the_librarys_readers_take_the_record_too(tmp_path):
    """weights_convert's library functions, as its tf2torch: tf_to_torch, read_tf_config and
    read_tf_training_state complete the config from the folder's record (a run at a size and with
    flags other than the official defaults, as only its record says)."""
    run = dict(RUN, smoothing=not RUN["smoothing"], gan_type="hinge", cam_weight=RUN["cam_weight"] + 1)
    folder = _folder(tmp_path, run)
    want = {k: run[k] for k in KEYS}
    cfg, _ = wc.tf_to_torch(folder, quiet=True)
    assert {k: cfg[k] for k in KEYS} == want
    assert {k: wc.read_tf_config(folder)[k] for k in KEYS} == want
    st = wc.read_tf_training_state(folder, quiet=True)
    assert {k: st["config"][k] for k in KEYS} == want and st["info"].config == st["config"]


def test_an_unreadable_meta_is_read_past_for_what_the_record_holds(tmp_path, capsys):
    """A truncated .meta beside a run record: tf2torch (and the port's readers) asked for
    --img_size, though the record holds it. Now the record stands in for the flag: the .meta is
    read past (said) and the conversion equals the one with the .meta removed."""
    from safetensors.numpy import load_file

    from torch_port import checkpoint as ck
    folder = _folder(tmp_path)
    plain = tmp_path / "plain.safetensors"
    rc, got = _tf2torch(capsys, folder, plain)  # no .meta: the record alone
    assert rc == 0, got.err
    with open(os.path.join(folder, "UGATIT.model-3.meta"), "wb") as fh:
        fh.write(b"\x12\x05abc")
    out = tmp_path / "o.safetensors"
    rc, got = _tf2torch(capsys, folder, out)
    assert rc == 0, got.err
    assert "read past" in got.err and "--img_size" not in got.err, got.err
    a, b = load_file(str(out)), load_file(str(plain))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in b)
    assert _config_of(str(out)) == _config_of(str(plain))
    assert ck.load_any(folder)["config"]["img_size"] == RUN["img_size"]
    # without the record, the flag is still asked for
    os.remove(os.path.join(folder, policy.RUN_RECORD))
    rc, got = _tf2torch(capsys, folder, tmp_path / "o2.safetensors")
    assert rc == 2 and "--img_size" in error_line(got.err), got.err


def test_a_record_of_the_size_alone_stands_in_for_an_unreadable_meta(tmp_path, capsys):
    """A run record may hold the image size alone (no `options`): with a truncated .meta the size
    is still known from it, so the .meta is read past and --img_size is not asked for (the other
    settings the .meta records and the weights do not, here --smoothing, are given as flags)."""
    folder = _folder(tmp_path, None)
    with open(os.path.join(folder, policy.RUN_RECORD), "w") as fh:
        json.dump({"img_size": RUN["img_size"]}, fh)
    with open(os.path.join(folder, "UGATIT.model-3.meta"), "wb") as fh:
        fh.write(b"\x12\x05abc")
    out = tmp_path / "o.safetensors"
    rc, got = _tf2torch(capsys, folder, out, "--smoothing", RUN["smoothing"])
    assert rc == 0 and "read past" in got.err and "--img_size" not in got.err, got.err
    assert _config_of(str(out))["img_size"] == RUN["img_size"]


def test_a_converted_records_run_record_is_said_as_such_and_holds_only_its_settings(tmp_path):
    """run_record_bytes with `keys` (torch2tf's record of what its input records) holds only those
    of the official flags, besides img_size; run_image_size, reading a run record for a TF
    checkpoint without its .meta, says whether the record was written when the run started or by
    torch2tf from a checkpoint's records (then it records what that checkpoint did, not a start)."""
    cfg = dict(RUN, img_size=40)
    partial = json.loads(policy.run_record_bytes(cfg, "x", keys={"ch", "img_size"}))
    assert partial["options"] == {"ch": cfg["ch"], "img_size": 40} and partial["img_size"] == 40, partial
    assert set(json.loads(policy.run_record_bytes(cfg, "x"))["options"]) > {"ch", "img_size", "dataset"}
    for writer, when in ((f"{policy.CONVERTER} from w.safetensors",
                          f"written by {policy.CONVERTER} from w.safetensors from the checkpoint's records"),
                         ("python -m torch_port", "written when the run started")):
        folder = tmp_path / str(len(when))
        folder.mkdir()
        for suffix in (".index", ".data-00000-of-00001"):
            (folder / f"UGATIT_light.model-3{suffix}").write_bytes(b"x")
        (folder / policy.RUN_RECORD).write_bytes(policy.run_record_bytes(cfg, writer, keys={"ch", "img_size"}))
        assert policy.run_image_size(str(folder / "UGATIT_light.model-3")) == (
            40, f"it has no .meta, and the run record {policy.RUN_RECORD}, {when}, records img_size=40")


def test_a_renamed_model_dir_keeps_its_data_set_name_over_the_record(tmp_path):
    """A model_dir folder renamed to name another data set (the run trained on selfie2anime, the
    folder now says horse2zebra): the data set's name is no part of the weights or the graph, so
    the folder's name is kept, and the conversion is not stopped as a disagreement of records; a
    model setting the record and the folder disagree on still is."""
    from ugatit_common.recorded_config import with_run_record
    from ugatit_common.tf_checkpoint.config import CheckpointConfig, ConfigConflict, Setting
    folder = tmp_path / "renamed"
    folder.mkdir()
    prefix = str(folder / "UGATIT_light.model-3")
    cfg = opt.config_from(dataset="selfie2anime", light=True, img_size=64)
    (folder / policy.RUN_RECORD).write_bytes(policy.run_record_bytes(cfg, "python -m tf_reference"))

    def info(light):
        return CheckpointConfig(prefix, {"dataset": Setting("horse2zebra", "model_dir", "the folder's name"),
                                         "light": Setting(light, "model_dir", "the folder's name")}, [])
    got = with_run_record(info(True), prefix)
    assert got.settings["dataset"].value == "horse2zebra" and got.settings["dataset"].source == "model_dir"
    assert got.settings["light"].value is True and got.settings["img_size"].value == 64
    with pytest.raises(ConfigConflict, match="light"):
        with_run_record(info(False), prefix)

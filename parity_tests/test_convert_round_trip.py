"""A port checkpoint -> `weights_convert.py torch2tf` -> `tf2torch` round trip through a folder that
is no official model_dir kept only what the weights and the `.meta` record: torch2tf wrote no run
record, so tf2torch lost `dataset` and `n_critic` (and, without TensorFlow, where no `.meta` is
written, guessed smoothing and img_size and lost gan_type and the loss weights). Now torch2tf
writes the run record `ugatit-run.json` (the trainers' format) holding the settings its input
records - none when the input does not record its image size -, atomically with the checkpoint;
a file of that name that is no run record is never replaced; an older record there is replaced
(or removed) only with `--overwrite`, together with the checkpoint it describes. The port resumes
in such a folder, and the record then guards the image size as a trainer's does. Tiny models
(light, 32 px, ch 2, n_dis 4); torch2tf runs as without TensorFlow (conftest: no `.meta`)."""
from __future__ import annotations

import json
import os

import pytest

import weights_convert as wc
from parity_tests.test_convert_cases import _meta_port, _model, _weights_file
from ugatit_common import checkpoint_policy as policy
from ugatit_common import options as opt
from ugatit_common.demo_data import make_demo_dataset
from ugatit_common.tf_checkpoint.config import MODEL_KEYS, TRAINING_KEYS

CFG = opt.config_from(light=True, dataset="mydata", img_size=32, ch=2, n_dis=4, n_critic=3, gan_type="hinge",
                      smoothing=False, cam_weight=100, augment_flag=False)
KEYS = MODEL_KEYS + TRAINING_KEYS + ("dataset",)


def _run(capsys, *argv):
    capsys.readouterr()
    rc = wc.main([str(a) for a in argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _converted_config(path) -> tuple[dict, dict]:
    meta = policy.safetensors_metadata(str(path))
    return json.loads(meta["ugatit_config"]), meta


def test_a_round_trip_through_any_folder_keeps_every_setting(tmp_path, capsys):
    src = _meta_port(tmp_path / "port", cfg=CFG)
    rc, out, err = _run(capsys, "torch2tf", src, tmp_path / "elsewhere" / "UGATIT_light.model")
    assert rc == 0, err
    assert policy.RUN_RECORD in out, out
    record = policy.read_run_record(str(tmp_path / "elsewhere"))
    assert record["img_size"] == CFG["img_size"] and {k: record["options"][k] for k in KEYS} == \
        {k: CFG[k] for k in KEYS}, record
    rc, out, err = _run(capsys, "tf2torch", tmp_path / "elsewhere", tmp_path / "back.safetensors")
    assert rc == 0, err
    cfg, meta = _converted_config(tmp_path / "back.safetensors")
    assert {k: cfg.get(k) for k in KEYS} == {k: CFG[k] for k in KEYS}, cfg
    assert json.loads(meta["ugatit_config_guessed"]) == {} and json.loads(meta["ugatit_config_not_recorded"]) == []
    assert "guessed" not in err and "not recorded" not in err, err
    # and once more: the tf2torch output records them all, so its torch2tf writes them again
    rc, out, err = _run(capsys, "torch2tf", tmp_path / "back.safetensors", tmp_path / "again" / "m")
    assert rc == 0, err
    again = policy.read_run_record(str(tmp_path / "again"))
    assert {k: again["options"][k] for k in KEYS} == {k: CFG[k] for k in KEYS}, again
    rc, out, err = _run(capsys, "tf2torch", tmp_path / "again", tmp_path / "back2.safetensors")
    assert rc == 0, err
    assert {k: _converted_config(tmp_path / "back2.safetensors")[0].get(k) for k in KEYS} == {k: CFG[k] for k in KEYS}


def test_an_input_that_records_no_image_size_gets_no_record(tmp_path, capsys):
    """Weights alone (no config): their shapes fix no image size of a light model, and a record
    without one would pass the guess off as the run's."""
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()))
    rc, out, err = _run(capsys, "torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3")
    assert rc == 0, err
    assert not os.path.lexists(tmp_path / "tf" / policy.RUN_RECORD)


def test_a_guess_is_no_record_when_the_file_holds_a_port_config_too(tmp_path, capsys):
    """A file holding tf2torch's `ugatit_config` (img_size guessed) and a port `config` too: the
    readers take `ugatit_config` (checkpoint.config_in_metadata), so its provenance says what is
    recorded - the guessed image size gets no run record (read as the port's config, every setting
    passed for a record)."""
    from torch_port import checkpoint as ck
    cfg = ck.plain_config(CFG)
    prov = {"ugatit_config_sources": json.dumps({k: "meta" for k in cfg if k != "img_size"}),
            "ugatit_config_guessed": json.dumps({"img_size": cfg["img_size"]}), "ugatit_config_not_recorded": "[]"}
    src = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()),
                        {**prov, "ugatit_config": json.dumps(cfg), "config": json.dumps(cfg)})
    rc, out, err = _run(capsys, "torch2tf", src, tmp_path / "tf" / "UGATIT_light.model-3")
    assert rc == 0, err
    assert not os.path.lexists(tmp_path / "tf" / policy.RUN_RECORD)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_of_that_name_that_is_no_run_record_is_never_replaced(overwrite, tmp_path, capsys):
    src = _meta_port(tmp_path / "port", cfg=CFG)
    # a link to a run record (this very input's, elsewhere) is a user's link, not a record to replace
    assert _run(capsys, "torch2tf", src, tmp_path / "real" / "UGATIT_light.model")[0] == 0
    for i, content in enumerate((b"my notes\n", b'{"img_size": "big"}', None, "link")):
        folder = tmp_path / f"tf{i}"
        folder.mkdir()
        mine = folder / policy.RUN_RECORD
        if content is None:
            mine.mkdir()
        elif content == "link":
            mine.symlink_to(tmp_path / "real" / policy.RUN_RECORD)
        else:
            mine.write_bytes(content)
        rc, out, err = _run(capsys, "torch2tf", src, folder / "UGATIT_light.model", *["--overwrite"] * overwrite)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(mine) in lines[0], err
        assert sorted(os.listdir(folder)) == [policy.RUN_RECORD], os.listdir(folder)
        assert content is None or (mine.is_symlink() if content == "link" else mine.read_bytes() == content)


def test_an_older_record_goes_only_with_overwrite_and_with_its_checkpoint(tmp_path, capsys):
    out_dir = tmp_path / "tf"
    prefix = out_dir / "UGATIT_light.model-3"
    first = _meta_port(tmp_path / "p1", cfg=CFG)
    assert _run(capsys, "torch2tf", first, prefix)[0] == 0
    other = dict(CFG, dataset="other", n_critic=1)
    second = _meta_port(tmp_path / "p2", cfg=other, seed=1)
    before = {n: (out_dir / n).read_bytes() for n in os.listdir(out_dir)}
    rc, out, err = _run(capsys, "torch2tf", second, prefix)
    assert rc == 2 and "--overwrite" in err, err
    assert {n: (out_dir / n).read_bytes() for n in os.listdir(out_dir)} == before
    # the checkpoints gone (the user's choice), the record of their run is still not this one's
    for n in os.listdir(out_dir):
        if n != policy.RUN_RECORD:
            os.remove(out_dir / n)
    rc, out, err = _run(capsys, "torch2tf", second, prefix)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and str(out_dir / policy.RUN_RECORD) in lines[0], err
    assert "dataset \"mydata\" there, \"other\" here" in lines[0] and "--overwrite" in lines[0], lines[0]
    assert sorted(os.listdir(out_dir)) == [policy.RUN_RECORD]
    rc, out, err = _run(capsys, "torch2tf", second, prefix, "--overwrite")
    assert rc == 0, err
    assert policy.read_run_record(str(out_dir))["options"]["dataset"] == "other"
    # weights that record no image size, over it: the stale record goes with the replaced checkpoint
    bare = _weights_file(tmp_path / "w.safetensors", dict(_model().state_dict()))
    rc, out, err = _run(capsys, "torch2tf", bare, prefix, "--overwrite")
    assert rc == 0 and "removed" in out and policy.RUN_RECORD in out, out + err
    assert not os.path.lexists(out_dir / policy.RUN_RECORD)


def _port_train(args, monkeypatch, cwd, capsys):
    from torch_port.__main__ import main
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr()


@pytest.mark.slow  # two tiny port training runs (~10 s each on 2 cores)
def test_the_port_resumes_in_the_folder_and_the_record_guards_its_size(tmp_path, monkeypatch, capsys):
    """torch2tf into the run folder the flags name (no `.meta` here): the port resumes from it, not
    refused for the record; a resume at another --img_size is refused naming the record, as for a
    trainer's own record (a light model's weights restore at any size)."""
    make_demo_dataset(str(tmp_path), "mydata", size=32, n_train=2, n_test=1)
    folder = tmp_path / "checkpoint" / opt.model_dir(CFG)
    src = _meta_port(tmp_path / "port", cfg=CFG)
    assert _run(capsys, "torch2tf", src, str(folder) + os.sep)[0] == 0  # (a folder: the default name inside)
    assert sorted(os.listdir(folder))[-1] == policy.RUN_RECORD
    flags = ["--light", "True", "--dataset", "mydata", "--ch", "2", "--n_dis", "4", "--n_critic", "3",
             "--gan_type", "hinge", "--smoothing", "False", "--cam_weight", "100", "--augment_flag", "False",
             "--iteration", "4", "--epoch", "1", "--save_freq", "100", "--print_freq", "100", "--device", "cpu",
             "--threads", "1"]
    rc, got = _port_train(flags + ["--img_size", "48"], monkeypatch, tmp_path, capsys)
    assert rc == 2 and policy.RUN_RECORD in got.err and "--img_size 32" in got.err, (got.out[-3000:], got.err[-2000:])
    rc, got = _port_train(flags + ["--img_size", "32"], monkeypatch, tmp_path, capsys)
    assert rc == 0, got.err[-3000:]
    assert any(n.endswith(".model-4.safetensors") for n in os.listdir(folder)), os.listdir(folder)


def test_continue_run_keeps_the_runs_own_record(tmp_path, capsys):
    """`--continue_run` writes beside the port checkpoint it converts: the record there is that
    run's, written when it started, and stays as it is."""
    from ugatit_common import run_lock
    src = _meta_port(tmp_path / "port", cfg=CFG)
    with run_lock.acquire(str(tmp_path / "port")) as owner:
        policy.write_run_record(str(tmp_path / "port"), dict(CFG, lr=0.5), "torch_port", owner)
    before = (tmp_path / "port" / policy.RUN_RECORD).read_bytes()
    rc, out, err = _run(capsys, "torch2tf", src, tmp_path / "port" / "UGATIT_light.model", "--continue_run")
    assert rc == 0, err
    assert (tmp_path / "port" / policy.RUN_RECORD).read_bytes() == before

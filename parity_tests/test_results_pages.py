"""What users look at: the test phase's results page and `--input` translation
(`python -m torch_port --phase test`), Morph interpolate / translate (strips, GIFs, grids, the
index page): every input listed, every link resolving, bad flags one `error:` line and exit 2.
Tiny models (32 px, ch 2-4) made in seconds."""
from __future__ import annotations

import html
import os
import re
import urllib.parse

import cv2
import numpy as np
import pytest
import torch

from parity_tests.test_morph import _one_thread  # noqa: F401 - autouse: one CPU thread per test
from ugatit_common import options as opt


def _photo(path, seed=0, size=40):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return str(path)


@pytest.fixture(scope="module")
def port_ckpt(tmp_path_factory):
    """A port checkpoint folder (untrained weights, tiny)."""
    from torch_port import build_ugatit
    from torch_port import checkpoint as ck
    folder = tmp_path_factory.mktemp("port") / "ck"
    folder.mkdir()
    cfg = opt.config_from(light=True, img_size=32, ch=2, n_dis=4, dataset="t")
    torch.manual_seed(0)
    ck.save(str(folder), "UGATIT_light", 7, build_ugatit(cfg), {"config": ck.plain_config(cfg), "run": "r1",
                                                                "counter": 7, "G_optim": {}, "D_optim": {}})
    return str(folder)


def _links(page_path):
    """The files every src / href of the page names (relative to the page's folder, as a browser
    resolves them), as file-system paths (bytes decoded as os.fsdecode would)."""
    with open(page_path, encoding="utf-8") as fh:
        text = fh.read()
    out = []
    for m in re.finditer(r"(?:src|href)='([^']*)'", text):
        raw = urllib.parse.unquote_to_bytes(html.unescape(m.group(1)))
        out.append(os.path.join(os.path.dirname(page_path), os.fsdecode(raw)))
    return out


def _port_test(args, cwd, monkeypatch):
    from torch_port.__main__ import main
    monkeypatch.chdir(cwd)
    return main(["--phase", "test", "--device", "cpu", "--threads", "1"] + args)


def test_input_folder_name_with_glob_characters(port_ckpt, tmp_path, monkeypatch, capsys):
    """`--input 'photos [2020]'`: the folder's name is taken literally (it was a glob pattern:
    'the folder holds no files')."""
    photos = tmp_path / "photos [2020]"
    for i in range(2):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    rc = _port_test(["--checkpoint", port_ckpt, "--input", str(photos), "--result_dir", str(out)], tmp_path,
                    monkeypatch)
    err = capsys.readouterr().err
    assert rc == 0, err
    (page,) = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f == "index.html"]
    links = _links(page)
    assert len(links) == 4 and all(os.path.isfile(p) for p in links)
    assert sorted(os.path.basename(p) for p in links) == ["p0.png", "p0.png", "p1.png", "p1.png"]


@pytest.fixture(scope="module")
def morph_ckpt(tmp_path_factory):
    """A config-C Morph checkpoint folder (1 iteration on the demo set, 32 px)."""
    from morph.train import train
    from ugatit_common.demo_data import make_demo_dataset
    root = str(tmp_path_factory.mktemp("morph"))
    make_demo_dataset(root, "demo", 32, n_train=2, n_test=1)
    cfg = opt.config_from(dataset="demo", epoch=1, iteration=1, print_freq=1000, save_freq=1000, decay_flag=False,
                          light=True, ch=4, n_dis=4, img_size=32, morph_config="C",
                          checkpoint_dir=os.path.join(root, "ckpt"), result_dir=os.path.join(root, "res"),
                          log_dir=os.path.join(root, "logs"), sample_dir=os.path.join(root, "samples"))
    torch.manual_seed(0)
    out = train(cfg, device=torch.device("cpu"), seed=0, base=root, log=lambda m: None)
    return out["checkpoint_dir"]


def _morph(args, capsys):
    from morph.__main__ import main
    capsys.readouterr()
    rc = main(args + ["--device", "cpu"])
    return rc, capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["interpolate", "--steps", "10000"], ["interpolate", "--steps", "101"], ["interpolate", "--steps", "1"],
    ["interpolate", "--steps", "0"], ["interpolate", "--samples", "0"], ["interpolate", "--samples", "100000000"],
    ["translate", "--direction", "a2b", "--samples", "10000"], ["translate", "--direction", "a2b", "--samples", "0"],
], ids=lambda a: "-".join(a).replace("--", ""))
def test_morph_counts_out_of_range_are_refused_before_any_work(morph_ckpt, tmp_path, capsys, argv):
    """`interpolate --steps 10000` computed 10000 frames for minutes and wrote a strip 10001 tiles
    wide (at 256 px past PNG's width limit) and a 40-minute GIF; `--samples 10^8` a w code of 10^8
    draws. Each is one `error:` line naming the flag, exit 2, nothing written."""
    photo = _photo(tmp_path / "in" / "p.png")
    out = tmp_path / "out"
    rc, cap = _morph(argv + ["--checkpoint", morph_ckpt, "--input", photo, "--result_dir", str(out)], capsys)
    flag = argv[-2]
    assert rc == 2, cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and f"{flag}={argv[-1]}" in lines[0], cap.err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--iterations", "0"], ["--steps", "1"]], ids=["iterations0", "steps1"])
def test_morph_demo_bad_counts_are_refused_before_it_writes(tmp_path, capsys, argv):
    """`python -m morph demo DIR --iterations 0`: one line naming --iterations (it named the
    trainer's --iteration) and nothing written (the data set was written first)."""
    rc, cap = _morph(["demo", str(tmp_path / "dm")] + argv, capsys)
    lines = cap.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and f"{argv[0]}={argv[1]}" in lines[0], cap.err
    assert not (tmp_path / "dm").exists()


def test_morph_step_limits_are_served(morph_ckpt, tmp_path, capsys):
    """The ends of the allowed range work: --steps 2 and --steps 100 (a GIF of the input and 100
    frames, captions distinct)."""
    from PIL import Image
    photo = _photo(tmp_path / "in" / "p.png")
    for steps in (2, 100):
        out = tmp_path / f"out{steps}"
        rc, cap = _morph(["interpolate", "--steps", str(steps), "--samples", "1", "--checkpoint", morph_ckpt,
                          "--input", photo, "--result_dir", str(out)], capsys)
        assert rc == 0, cap.err
        with Image.open(out / "p.gif") as im:
            assert im.n_frames == steps + 1


def _digests(folder):
    import hashlib
    out = {}
    for r, _, fs in os.walk(folder):
        for f in fs:
            p = os.path.join(r, f)
            with open(p, "rb") as fh:
                out[os.path.realpath(p)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _second_checkpoint(port_ckpt, tmp_path):
    """Another port checkpoint of the same config with other weights (a later training's)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ugatit_common.checkpoint_policy import safetensors_metadata
    other = tmp_path / "ck2"
    shutil.copytree(port_ckpt, other)
    w = str(other / "UGATIT_light.model-7.safetensors")
    state, meta = load_file(w), safetensors_metadata(w)
    g = torch.Generator().manual_seed(1)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and k.startswith("generator")
                 else v) for k, v in state.items()}
    save_file(state, w, metadata=meta)
    return str(other)


@pytest.mark.parametrize("batch", [None, 2])
def test_stopped_rerun_page_never_mixes_two_runs(port_ckpt, tmp_path, monkeypatch, capsys, batch):
    """A test phase rerun into the same results folder (another checkpoint), stopped by Ctrl-C
    after its first image: the page left lists only images that exist, all of one run (it was the
    first run's page, its rows now pointing at the second run's pictures for the images already
    redone)."""
    import torch_port.translate as tr
    import ugatit_common.results as results
    photos = tmp_path / "photos"
    for i in range(4):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    extra = [] if batch is None else ["--batch", str(batch)]
    base = ["--input", str(photos), "--result_dir", str(out)] + extra
    assert _port_test(["--checkpoint", port_ckpt] + base, tmp_path, monkeypatch) == 0, capsys.readouterr().err
    (page,) = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f == "index.html"]
    first = _digests(out)
    second_ck = _second_checkpoint(port_ckpt, tmp_path)

    written, real_save = [], results.save_image

    def save_then_stop(image, path):
        if written:  # the second image of the rerun: Ctrl-C
            raise KeyboardInterrupt
        written.append(os.path.realpath(path))
        return real_save(image, path)
    monkeypatch.setattr(tr, "save_image", save_then_stop)
    import torch_port.batch_translate as bt
    monkeypatch.setattr(bt, "save_image", save_then_stop)
    rc = _port_test(["--checkpoint", second_ck] + base, tmp_path, monkeypatch)
    assert rc == 130 and written, capsys.readouterr().err
    now = _digests(out)
    assert now[written[0]] != first[written[0]]  # the rerun did replace a picture
    links = [os.path.realpath(p) for p in _links(page) if "/a2b/" in p.replace(os.sep, "/")]
    assert links and all(os.path.isfile(p) for p in links)
    from_first = [p for p in links if now[p] == first.get(p)]
    assert not from_first or len(from_first) == len(links), "the page mixes the two runs' pictures"
    assert set(links) == set(written)  # the pictures this run wrote before it stopped
    with open(page, encoding="utf-8") as fh:
        assert "Incomplete" in fh.read()
    monkeypatch.setattr(tr, "save_image", real_save)
    monkeypatch.setattr(bt, "save_image", real_save)
    assert _port_test(["--checkpoint", second_ck] + base, tmp_path, monkeypatch) == 0
    with open(page, encoding="utf-8") as fh:
        assert "Incomplete" not in fh.read()
    assert len(_links(page)) == 8 and all(os.path.isfile(p) for p in _links(page))


@pytest.mark.parametrize("batch", [None, 2])
def test_rerun_whose_first_picture_fails_keeps_the_earlier_page(port_ckpt, tmp_path, monkeypatch, capsys, batch):
    """A test phase rerun whose first picture cannot be written (a full disk) wrote no picture:
    the earlier run's page stays as it was, byte for byte (it was replaced by an empty page
    marked incomplete)."""
    import errno

    import torch_port.batch_translate as bt
    import torch_port.translate as tr
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    base = ["--checkpoint", port_ckpt, "--input", str(photos), "--result_dir", str(out)] + (
        [] if batch is None else ["--batch", str(batch)])
    assert _port_test(base, tmp_path, monkeypatch) == 0, capsys.readouterr().err
    first = _digests(out)

    def disk_full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tr, "save_image", disk_full)
    monkeypatch.setattr(bt, "save_image", disk_full)
    assert _port_test(base, tmp_path, monkeypatch) == 2
    assert capsys.readouterr().err.count("error:") == 1
    assert _digests(out) == first  # the page and every picture as the first run left them


@pytest.mark.parametrize("batch", [None, 2])
def test_a_file_where_a_direction_folder_goes_stops_before_any_picture(port_ckpt, tmp_path, monkeypatch, capsys,
                                                                       batch):
    """A file of the user's named b2a in the results folder: one `error:` line naming it, exit 2,
    before any picture (the a2b pictures were written and the earlier page replaced first)."""
    photos = tmp_path / "dataset" / "t"
    for d in ("testA", "testB"):
        _photo(photos / d / f"{d}.png")
    out = tmp_path / "out"
    base = ["--checkpoint", port_ckpt, "--dataset", "t", "--light", "True", "--img_size", "32", "--ch", "2",
            "--n_dis", "4", "--result_dir", str(out)] + ([] if batch is None else ["--batch", str(batch)])
    assert _port_test(base, tmp_path, monkeypatch) == 0, capsys.readouterr().err
    (folder,) = {os.path.dirname(os.path.dirname(p)) for p in _digests(out) if "a2b" in p}
    import shutil
    shutil.rmtree(os.path.join(folder, "b2a"))
    with open(os.path.join(folder, "b2a"), "w") as fh:
        fh.write("mine")
    first = _digests(out)
    assert _port_test(base, tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "b2a" in err and "--result_dir" in err, err
    assert _digests(out) == first


def test_stopped_interpolate_rerun_page_never_mixes_two_runs(morph_ckpt, tmp_path, monkeypatch, capsys):
    """`python -m morph interpolate` rerun into the same folder (another --seed: other w codes),
    stopped by Ctrl-C during its second input: the index left lists only files that exist, all of
    one run (it was the first run's index, its first row now showing the rerun's strip)."""
    import morph.interpolate as mi
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    base = ["interpolate", "--steps", "3", "--samples", "1", "--checkpoint", morph_ckpt, "--input", str(photos),
            "--result_dir", str(out)]
    rc, cap = _morph(base + ["--seed", "0"], capsys)
    assert rc == 0, cap.err
    page = str(out / "index.html")
    first = _digests(out)
    written, real_strip = [], mi.write_strip

    def strip_then_stop(frames, path, x=None):
        if written:
            raise KeyboardInterrupt
        written.append(os.path.realpath(path))
        return real_strip(frames, path, x=x)
    monkeypatch.setattr(mi, "write_strip", strip_then_stop)
    rc, cap = _morph(base + ["--seed", "1"], capsys)
    assert rc == 130, cap.err
    now = _digests(out)
    assert now[written[0]] != first[written[0]]  # the rerun did replace a strip
    links = [os.path.realpath(p) for p in _links(page) if os.path.dirname(os.path.realpath(p)) == os.path.realpath(out)]
    assert links and all(os.path.isfile(p) for p in links)
    from_first = [p for p in links if now[p] == first.get(p)]
    assert not from_first or len(from_first) == len(links), "the page mixes the two runs' files"
    assert [p for p in links if p.endswith("_strip.png")] == written
    assert sorted(os.listdir(out)) == sorted(map(os.path.basename, first))  # no temp file left
    monkeypatch.setattr(mi, "write_strip", real_strip)
    rc, cap = _morph(base + ["--seed", "1"], capsys)
    assert rc == 0, cap.err
    assert sorted(os.listdir(out)) == sorted(map(os.path.basename, first))  # the same names: no index_1.html
    with open(page, encoding="utf-8") as fh:
        assert "Incomplete" not in fh.read()
    assert len(_links(page)) == 9 and all(os.path.isfile(p) for p in _links(page))


def test_interpolate_rerun_whose_first_strip_fails_keeps_the_earlier_page(morph_ckpt, tmp_path, monkeypatch, capsys):
    """`python -m morph interpolate` rerun whose first strip cannot be written (a full disk,
    `ulimit -f`) wrote no output: the earlier run's page stays as it was, byte for byte, as the
    port's test phase keeps it (test_rerun_whose_first_picture_fails_keeps_the_earlier_page); it
    was replaced by an empty page marked incomplete, the earlier run's files listed nowhere. A
    first run failing so leaves no page, record or folder behind (README "Checkpoint policy",
    Outputs)."""
    import errno

    import morph.interpolate as mi
    photos = tmp_path / "photos"
    for i in range(2):
        _photo(photos / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    base = ["interpolate", "--steps", "3", "--samples", "1", "--checkpoint", morph_ckpt, "--input", str(photos),
            "--result_dir"]
    rc, cap = _morph(base + [str(out)], capsys)
    assert rc == 0, cap.err
    first = _digests(out)
    assert any(p.endswith("index.html") for p in first)

    def disk_full(frames, path, x=None):
        raise OSError(errno.EFBIG, "File too large")
    real_strip = mi.write_strip
    monkeypatch.setattr(mi, "write_strip", disk_full)
    rc, cap = _morph(base + [str(out), "--seed", "1"], capsys)
    assert rc == 2 and cap.err.count("error:") == 1, cap.err
    assert _digests(out) == first  # the page, the record and every output as the first run left them
    rc, cap = _morph(base + [str(tmp_path / "new")], capsys)
    assert rc == 2 and cap.err.count("error:") == 1, cap.err
    assert not (tmp_path / "new").exists()
    # the first strip written over the earlier run's, then its GIF failing: the earlier page is not put
    # back (it would show this run's strip as the earlier run's); this run's page, marked incomplete, stays
    monkeypatch.setattr(mi, "write_strip", real_strip)
    monkeypatch.setattr(mi, "write_gif", disk_full)
    rc, cap = _morph(base + [str(out), "--seed", "1"], capsys)
    assert rc == 2 and cap.err.count("error:") == 1, cap.err
    now = _digests(out)
    strip = next(p for p in first if p.endswith("_strip.png"))
    page = next(p for p in first if p.endswith("index.html"))
    assert now[strip] != first[strip] and now[page] != first[page], "the earlier page was put back"


def test_morph_input_listing_leaves_the_input_folders_output_record_as_it_is(tmp_path):
    """Morph interpolate / translate list an input folder (skipping the outputs its record names)
    without writing to it: a name recorded there before its file exists (another run writing
    into that folder) stays recorded."""
    import json

    from morph.interpolate import list_inputs
    from ugatit_common.output_names import RECORD
    _photo(tmp_path / "p0.png")
    _photo(tmp_path / "p0_strip.png", seed=1)
    (tmp_path / RECORD).write_text(json.dumps({"files": ["p0_strip.png", "p1_strip.png"]}))
    before = (tmp_path / RECORD).read_bytes()
    assert list_inputs(str(tmp_path)) == [str(tmp_path / "p0.png")]
    assert (tmp_path / RECORD).read_bytes() == before


def test_morph_demo_rerun_says_what_it_did(tmp_path, capsys):
    """`python -m morph demo DIR` run again: the checkpoint has done its iterations, so it trains
    none and says so (it printed 'trained 0 iterations: mean G loss first 1: 0.00, last 1: 0.00');
    its page lists the demo's test images, every link resolving."""
    from morph.__main__ import main
    argv = ["demo", str(tmp_path / "d"), "--iterations", "1", "--ch", "2", "--steps", "2", "--device", "cpu"]
    for run in range(2):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "0.00, last" not in out and ("no iteration left" in out) == (run == 1), out
    page = tmp_path / "d" / "results" / "morph" / "index.html"
    links = _links(str(page))
    tests = os.listdir(tmp_path / "d" / "dataset" / "demo" / "testA")
    assert len(links) == 3 * len(tests) and all(os.path.isfile(p) for p in links)


@pytest.mark.slow  # TF, the port and Morph trained and tested (~90 s on 2 cores)
def test_demo_lists_its_pages_and_every_link_resolves(tmp_path):
    """`python -m ugatit_common.demo DIR`: the final 'Look at' list names pages (it named two
    folders), each one there, every image link of each page resolving."""
    import subprocess
    import sys

    from parity_tests.conftest import ROOT
    proc = subprocess.run([sys.executable, "-m", "ugatit_common.demo", str(tmp_path / "run"), "--iteration", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = proc.stdout.split("Done. Look at:\n", 1)[1].strip().splitlines()
    assert len(listed) == 4
    for line in listed:
        path = line.split(": ", 1)[1]
        assert path.endswith(".html") and os.path.isfile(path), line
        assert all(os.path.exists(p) for p in _links(path)), line


@pytest.mark.tf
def test_tf_reference_rerun_whose_first_picture_fails_keeps_the_earlier_page(tmp_path, monkeypatch, capsys):
    """tf_reference's test phase rerun, its first picture not written (a full disk): the earlier
    page and pictures stay byte for byte (the page was replaced by an empty incomplete one)."""
    import errno
    import shutil

    import tf_reference.train as tft
    from parity_tests import golden
    from parity_tests.conftest import GOLDEN
    from tf_reference.__main__ import main as tf_main
    cfg = opt.config_from(golden.record()["config"])
    for d in ("testA", "testB"):
        _photo(tmp_path / "dataset" / cfg["dataset"] / d / f"{d}0.png", seed=0, size=cfg["img_size"])
    shutil.copytree(os.path.join(GOLDEN, "final"), tmp_path / "checkpoint" / opt.model_dir(cfg))
    monkeypatch.chdir(tmp_path)
    args = ["--phase", "test", "--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]),
            "--ch", str(cfg["ch"]), "--n_dis", str(cfg["n_dis"])]
    assert tf_main(args) == 0, capsys.readouterr().err
    first = _digests(tmp_path / "results")

    def disk_full(image, path):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tft, "save_image", disk_full)
    assert tf_main(args) == 2
    assert _digests(tmp_path / "results") == first


@pytest.mark.tf
def test_tf_reference_test_phase_at_the_open_files_limit_stops_instead_of_skipping(tmp_path, monkeypatch, capsys):
    """tf_reference's test phase, an input read failing on `ulimit -n` (EMFILE: the machine's limit,
    ugatit_common.images.read_error): it said "warning: skipping X: not a readable image (OSError)"
    for every input, then that none could be read. Now one `error:` line naming the file and the
    limit, exit 2, as the port's test phase and Morph say it."""
    import errno
    import shutil

    import ugatit_common.images as images
    from parity_tests import golden
    from parity_tests.conftest import GOLDEN
    from tf_reference.__main__ import main as tf_main
    cfg = opt.config_from(golden.record()["config"])
    for d in ("testA", "testB"):
        _photo(tmp_path / "dataset" / cfg["dataset"] / d / f"{d}0.png", seed=0, size=cfg["img_size"])
    shutil.copytree(os.path.join(GOLDEN, "final"), tmp_path / "checkpoint" / opt.model_dir(cfg))
    monkeypatch.chdir(tmp_path)

    def at_the_limit(path):  # as _file_bytes raises it when np.fromfile meets EMFILE (test_image_inputs.py)
        raise images.read_error(path, OSError(errno.EMFILE, "Too many open files"))
    monkeypatch.setattr(images, "_file_bytes", at_the_limit)
    args = ["--phase", "test", "--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]),
            "--ch", str(cfg["ch"]), "--n_dis", str(cfg["n_dis"])]
    assert tf_main(args) == 2
    err = capsys.readouterr().err
    assert "warning" not in err and err.count("error:") == 1, err
    assert "testA0.png': Too many open files: the limit on open files per process was reached" in err, err


@pytest.mark.tf
@pytest.mark.parametrize("stop", ["right_after_the_first_picture", "at_the_third_picture"])
def test_stopped_tf_reference_rerun_page_never_mixes_two_runs(tmp_path, monkeypatch, capsys, stop):
    """tf_reference's test phase, rerun into its results folder and stopped by Ctrl-C: right after
    its first picture was written (the first run's finished page stayed, one row now showing the
    rerun's picture), or at its third (the second row, added within the page's refresh interval,
    was never saved): the page left lists only pictures this run wrote, all of them once added,
    marked incomplete."""
    import shutil

    import tf_reference.train as tft
    from parity_tests import golden
    from parity_tests.conftest import GOLDEN
    from tf_reference.__main__ import main as tf_main
    cfg = opt.config_from(golden.record()["config"])
    for d, n in (("testA", 3), ("testB", 1)):
        for i in range(n):
            _photo(tmp_path / "dataset" / cfg["dataset"] / d / f"{d}{i}.png", seed=i, size=cfg["img_size"])
    shutil.copytree(os.path.join(GOLDEN, "final"), tmp_path / "checkpoint" / opt.model_dir(cfg))
    monkeypatch.chdir(tmp_path)
    args = ["--phase", "test", "--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]),
            "--ch", str(cfg["ch"]), "--n_dis", str(cfg["n_dis"])]
    assert tf_main(args) == 0, capsys.readouterr().err
    (page,) = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "results") for f in fs if f == "index.html"]
    assert len(_links(page)) == 8
    written, real_save = [], tft.save_image

    def save_then_stop(image, path):
        if stop == "at_the_third_picture" and len(written) == 2:
            raise KeyboardInterrupt
        written.append(os.path.realpath(path))
        real_save(image, path)
        if stop == "right_after_the_first_picture":
            raise KeyboardInterrupt
    monkeypatch.setattr(tft, "save_image", save_then_stop)
    assert tf_main(args) == 130
    links = [os.path.realpath(p) for p in _links(page) if "/a2b/" in p.replace(os.sep, "/")]
    assert set(links) <= set(written), "the page lists the first run's pictures"
    if stop == "at_the_third_picture":
        assert set(links) == set(written) and len(written) == 2
    with open(page, encoding="utf-8") as fh:
        assert "Incomplete" in fh.read()


def test_results_sweep_removes_only_a_killed_writers_temp_files(port_ckpt, tmp_path, monkeypatch, capsys):
    """Before writing, the test phase sweeps its results folders of what a killed earlier test
    phase left; it took any name of the checkpoint folders' temp patterns and removed folders
    whole: a `.tmp-cache/` folder there went with everything in it (shutil.rmtree of a folder no
    command of this project makes), and so did an earlier run's picture of an input named
    `cat.model-5_temp.png` (TF's temp-file pattern). Now only the atomic writers' temp files of
    a writer that is gone are removed there."""
    from parity_tests.test_file_names import _dead_pid
    photos, more = tmp_path / "photos", tmp_path / "more"
    _photo(photos / "cat.model-5_temp.png", seed=1)
    _photo(more / "dog.png", seed=2)
    out = tmp_path / "out"
    base = ["--checkpoint", port_ckpt, "--result_dir", str(out)]
    assert _port_test(base + ["--input", str(photos)], tmp_path, monkeypatch) == 0, capsys.readouterr().err
    (res,) = {os.path.dirname(r) for r, _, fs in os.walk(out) if "cat.model-5_temp.png" in fs}
    cache = os.path.join(res, ".tmp-cache")
    os.makedirs(cache)
    with open(os.path.join(cache, "notes.txt"), "w") as fh:
        fh.write("mine")
    killed = os.path.join(res, "a2b", f".tmp-{_dead_pid()}-dog.png")  # a test phase killed mid-write
    with open(killed, "wb") as fh:
        fh.write(b"half a png")
    assert _port_test(base + ["--input", str(more)], tmp_path, monkeypatch) == 0, capsys.readouterr().err
    assert os.path.isfile(os.path.join(cache, "notes.txt"))
    assert os.path.isfile(os.path.join(res, "a2b", "cat.model-5_temp.png"))
    assert not os.path.exists(killed) and os.path.isfile(os.path.join(res, "a2b", "dog.png"))


@pytest.mark.tf
def test_tf_reference_test_phase_of_unreadable_images_only_is_one_error_line(tmp_path, monkeypatch, capsys):
    """tf_reference's test phase whose test images are all unreadable: one `error:` line naming the
    file and why, exit 2, and no results folder left (it wrote no page, empty or not); with a
    readable picture added it translates it, and makes no b2a/ for a domain without test images."""
    import shutil

    from parity_tests import golden
    from parity_tests.conftest import GOLDEN
    from tf_reference.__main__ import main as tf_main
    cfg = opt.config_from(golden.record()["config"])
    test_a = tmp_path / "dataset" / cfg["dataset"] / "testA"
    test_a.mkdir(parents=True)
    (test_a / "bad.png").write_bytes(b"not an image")
    shutil.copytree(os.path.join(GOLDEN, "final"), tmp_path / "checkpoint" / opt.model_dir(cfg))
    monkeypatch.chdir(tmp_path)
    args = ["--phase", "test", "--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]),
            "--ch", str(cfg["ch"]), "--n_dis", str(cfg["n_dis"])]
    capsys.readouterr()
    assert tf_main(args) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "cannot read image" in errors[0] and "bad.png" in errors[0], errors
    assert not (tmp_path / "results").exists(), [r for r, _, _ in os.walk(tmp_path / "results")]
    _photo(test_a / "good.png", size=cfg["img_size"])
    assert tf_main(args) == 0, capsys.readouterr().err
    made = os.listdir(tmp_path / "results" / opt.model_dir(cfg))
    assert "a2b" in made and "index.html" in made and "b2a" not in made, made


def test_a_stopped_run_puts_the_earlier_page_back_only_when_it_changed_no_picture(tmp_path):
    """ResultsPage.stopped(): the earlier run's page is put back only when this run listed no row
    and changed none of the pictures it announced. A run that never started leaves the earlier
    page as it was (not removed); one that added a row (add without before_output) keeps it; one
    that rewrote the first of two announced pictures does not put back a page listing it; a
    picture announced without its path (nothing tells whether it changed) neither."""
    from ugatit_common.atomic import write_bytes_atomic
    from ugatit_common.results import ResultsPage
    out = tmp_path / "out"
    out.mkdir()
    page_path, pic = out / "index.html", out / "a.png"
    earlier = b"<html>the earlier run's page</html>"
    page_path.write_bytes(earlier)
    pic.write_bytes(b"earlier picture")
    ResultsPage(str(out)).stopped()  # never started
    assert page_path.read_bytes() == earlier
    page = ResultsPage(str(out))
    page.add("a.png", str(pic), str(pic))
    page.stopped()
    assert "src='a.png'" in page_path.read_text() and "Incomplete" in page_path.read_text()
    page_path.write_bytes(earlier)
    page = ResultsPage(str(out))
    page.before_output(str(pic))
    page.before_output(str(out / "b.png"))
    write_bytes_atomic(str(pic), b"a rerun picture")
    page.stopped()
    assert page_path.read_bytes() != earlier and "Incomplete" in page_path.read_text()
    page_path.write_bytes(earlier)
    page = ResultsPage(str(out))
    page.before_output()
    page.stopped()
    assert page_path.read_bytes() != earlier and "Incomplete" in page_path.read_text()

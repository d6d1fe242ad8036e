"""Input file names as users have them: names that are not UTF-8 (bytes from another system's
encoding: OpenCV's imread crashed the process on them), names too long for an output name once a
suffix is added, and results written beside the user's own files (Morph interpolate / translate
write into `--result_dir` itself: a user's file there is never replaced, and an earlier run's
outputs are not read as inputs)."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from parity_tests.conftest import GOLDEN, ROOT
from ugatit_common.images import ImageReadError, read_color
from ugatit_common.output_names import NAME_MAX, OutputNames, OutputRecord

LATIN1 = os.fsdecode(b"caf\xe9.png")  # "café.png" written in Latin-1: not UTF-8
OFFICIAL_DIR = "UGATIT_light_g_lsgan_4resblock_5dis_1_1_10_10_1000_sn_smoothing"  # the golden run's model_dir


def _picture(seed, h=40, w=50):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_read_color_is_cv2_imread(tmp_path):
    """read_color (np.fromfile + cv2.imdecode) gives cv2.imread(IMREAD_COLOR)'s pixels for every
    kind of file the test phase meets: grey, RGBA, 16-bit, palette GIF, EXIF-rotated JPEG, BMP;
    an empty or non-image file is an ImageReadError naming it."""
    from PIL import Image
    rgb = _picture(0)
    files = {"gray.png": rgb[:, :, 0], "rgba.png": np.dstack([rgb, rgb[:, :, :1]]),
             "sixteen.png": rgb.astype(np.uint16) * 257 + 3, "plain.bmp": rgb}
    for name, a in files.items():
        assert cv2.imwrite(str(tmp_path / name), a)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif)
    for name in sorted(os.listdir(tmp_path)):
        want = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)
        got = read_color(tmp_path / name)
        assert want is not None and got.dtype == np.uint8 and np.array_equal(got, want), name
    assert read_color(tmp_path / "rotated.jpg").shape == (50, 40, 3)  # the orientation was applied
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    for name, reason in (("empty.png", "empty file"), ("text.png", "not a decodable image"), ("none.png", "no such")):
        with pytest.raises(ImageReadError, match=reason) as e:
            read_color(tmp_path / name)
        assert name in str(e.value)


def test_output_names_fit_the_file_system_limit():
    """A stem too long once a suffix is added is cut (at a character boundary) and tagged with its
    hash: every output name fits NAME_MAX bytes, two long names sharing their start stay distinct,
    and short names are as before."""
    names = OutputNames()
    long_a, long_b = "x" * 251 + "a.gif", "x" * 251 + "b.gif"
    a, b = names.path("out", long_a), names.path("out", long_b)
    assert a != b and all(len(os.fsencode(os.path.basename(p))) <= NAME_MAX for p in (a, b))
    assert os.path.basename(a).startswith("x" * 200) and a.endswith(".gif.png")
    assert names.path("out", "photo.jpg") == os.path.join("out", "photo.jpg")
    wide = "é" * 127 + ".png"  # 254 bytes: a cut must not split a two-byte character
    stem = names.stem("out", wide, ("_strip.png", "_smoothness.json"))
    assert len(os.fsencode(stem + "_smoothness.json")) <= NAME_MAX
    assert "\udcc3" not in stem and stem.startswith("é" * 50)
    assert names.stem("out", "cat.png", ("_strip.png",)) == "cat"


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_dead_temps_leaves_running_writers_alone(tmp_path):
    """Temp files (`.tmp-<pid>@<host id>-...`; below, older versions' `.tmp-<pid>-...`) of writers
    that are gone, or older than a day, are removed; one of a running process, and files of other
    names, stay; the results folder's sweep of any temp name (checkpoint_policy.sweep_temp without
    an owner) leaves a running writer's too. Another host's: test_shared_folder.py."""
    import time

    from ugatit_common.atomic import STALE_S, atomic_output, host_id, sweep_dead_temps
    with atomic_output(str(tmp_path / "x.png")) as tmp:
        assert os.path.basename(tmp).startswith(f".tmp-{os.getpid()}@{host_id()}-")
    dead, live = _dead_pid(), os.getppid()
    names = {f".tmp-{dead}-a.png": False, f".tmp-{live}-b.png": True, f".tmp-{live}-old.png": False,
             ".tmp-notes.txt": True, "photo.png": True}
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    old = time.time() - STALE_S - 60
    os.utime(tmp_path / f".tmp-{live}-old.png", (old, old))
    assert sorted(sweep_dead_temps(str(tmp_path))) == sorted(n for n, stays in names.items() if not stays)
    assert all((tmp_path / n).exists() == stays for n, stays in names.items())
    # the results folder's own sweep (any temp name) leaves a running writer's alone too
    from ugatit_common.checkpoint_policy import sweep_temp
    assert sweep_temp(str(tmp_path), log=lambda m: None) == [".tmp-notes.txt"]
    assert (tmp_path / f".tmp-{live}-b.png").exists()


def _official_checkpoint(tmp_path):
    ckpt = tmp_path / "downloads" / OFFICIAL_DIR
    shutil.copytree(os.path.join(GOLDEN, "final"), ckpt)
    return ckpt


def test_test_phase_translates_names_that_are_not_utf8_or_too_long(tmp_path):
    """`python -m torch_port --phase test --input FOLDER` with a Latin-1 name, a name of 255 bytes
    whose output name (+ .png) would not fit, and a plain name: exit 0, every image translated
    (each output equals the plain-named copy's), the page links the Latin-1 name by its bytes. The
    streams are strict UTF-8, as under a UTF-8 locale (the name is printed as its bytes)."""
    ckpt = _official_checkpoint(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    long_gif = "y" * 251 + ".gif"
    cv2.imwrite(str(photos / "plain.png"), _picture(1, 80, 96))
    shutil.copy(photos / "plain.png", os.path.join(photos, LATIN1))
    from PIL import Image
    Image.fromarray(_picture(2, 80, 96)).convert("P").convert("RGB").save(photos / "same.gif")
    shutil.copy(photos / "same.gif", photos / long_gif)
    out = tmp_path / "out"
    left = out / OFFICIAL_DIR / "a2b" / f".tmp-{_dead_pid()}-plain.png"  # of a test phase killed mid-write
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a png")
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([sys.executable, "-m", "torch_port", "--phase", "test", "--device", "cpu", "--checkpoint",
                           str(ckpt), "--input", str(photos), "--img_size", "64", "--result_dir", str(out)],
                          cwd=tmp_path, capture_output=True, env=env, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err[-3000:]
    results = out / OFFICIAL_DIR / "a2b"
    written = sorted(os.listdir(results))
    assert len(written) == 4, written  # the killed run's temp file is gone
    assert all(len(os.fsencode(n)) <= NAME_MAX for n in written)
    assert (results / LATIN1).read_bytes() == (results / "plain.png").read_bytes()
    long_out = [n for n in written if n.startswith("y" * 100)]
    assert len(long_out) == 1 and (results / long_out[0]).read_bytes() == (results / "same.gif.png").read_bytes()
    page = (out / OFFICIAL_DIR / "index.html").read_bytes()
    assert b"a2b/caf%E9.png" in page and b"charset='utf-8'" in page
    assert b"Processing A image: " in proc.stdout and b"caf\xe9.png" in proc.stdout  # the name's own bytes


@pytest.mark.tf
def test_tf_reference_reads_names_that_are_not_utf8(tmp_path):
    """tf_reference's test loader (the official load_test_data) reads a Latin-1 name, as the same
    file under a plain name."""
    from tf_reference.data import load_test_image
    cv2.imwrite(str(tmp_path / "plain.png"), _picture(3))
    shutil.copy(tmp_path / "plain.png", os.path.join(tmp_path, LATIN1))
    a, b = load_test_image(os.path.join(tmp_path, LATIN1), 32), load_test_image(str(tmp_path / "plain.png"), 32)
    assert a.shape == (1, 32, 32, 3) and np.array_equal(a, b)


def _morph_model():
    from morph import MorphUGATIT
    from parity_tests.test_morph import NET
    torch.manual_seed(0)
    m = MorphUGATIT(dict(NET, morph_config="C")).eval()
    m.z_generator = torch.Generator().manual_seed(1)
    return m


def test_morph_results_beside_the_users_files(tmp_path):
    """Morph interpolate writing into the folder of its inputs, which holds the user's own
    `cat.gif`, `index.html` and `cat_smoothness.json` (the names its outputs would take) and a
    Latin-1 name: twice. The user's files are never replaced (the outputs take `cat_1*`,
    `index_1.html`), the second run replaces the first run's outputs instead of reading them as
    inputs, and the page links the Latin-1 name by its bytes."""
    from morph.interpolate import interpolate_images, list_inputs
    from parity_tests.test_morph import SIZE
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "cat.png"), _picture(4, SIZE, SIZE))
    shutil.copy(folder / "cat.png", os.path.join(folder, LATIN1))
    mine = {"cat.gif": b"GIF89a the user's own animation", "index.html": b"<html>my album</html>",
            "cat_smoothness.json": b'{"mine": 1}'}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    model = _morph_model()
    before = None
    for run in range(2):
        inputs = list_inputs(str(folder))
        # no output is read as an input; the user's cat.gif is one (it does not decode: skipped, said)
        assert sorted(os.path.basename(p) for p in inputs) == sorted(["cat.gif", "cat.png", LATIN1]), inputs
        rows = interpolate_images(model, inputs, str(folder), steps=3, samples=2, log=None)
        assert sorted(r["name"] for r in rows) == sorted(["cat_1", os.path.splitext(LATIN1)[0]])
        assert all((folder / n).read_bytes() == data for n, data in mine.items())  # the user's files, untouched
        files = sorted(os.listdir(folder))
        assert before is None or files == before  # the rerun replaced its own outputs, added none
        before = files
    assert "index_1.html" in files and "cat_1.gif" in files and "cat_1_strip.png" in files
    record = OutputRecord(str(folder))
    assert record.mine(str(folder / "cat_1.gif")) and not record.mine(str(folder / "cat.gif"))
    page = (folder / "index_1.html").read_bytes()
    assert b"caf%E9_strip.png" in page and b"charset='utf-8'" in page


def test_an_unreadable_test_image_is_named_with_its_reason(tmp_path):
    """The error of a test phase that could read none of its inputs names the file and why (one
    input), or how many and the first one's reason."""
    from ugatit_common.images import none_readable
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    one = none_readable([str(tmp_path / "text.png")])
    assert "text.png" in one and "not a decodable image" in one
    two = none_readable([str(tmp_path / "empty.png"), str(tmp_path / "text.png")])
    assert two.startswith("none of the 2 test images") and "empty.png" in two and "empty file" in two


def test_checkpoint_folder_whose_name_is_not_utf8(tmp_path):
    """Training with a --checkpoint_dir whose name is not UTF-8 (the safetensors library reads
    UTF-8 paths only): the run resumes from its own checkpoint, and the test phase and Morph's
    --init_from read it (they said "none can be used" / not a readable file)."""
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    ck = os.fsdecode(b"ck\xff")
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    tiny = ["--light", "True", "--dataset", "demo", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--device", "cpu",
            "--threads", "1"]

    def run(*argv, module="torch_port"):
        proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, capture_output=True, env=env,
                              timeout=300)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, err[-3000:]
        return proc.stdout.decode("utf-8", "replace") + err
    train = ["--iteration", "2", "--augment_flag", "False", "--save_freq", "2", "--checkpoint_dir", ck] + tiny
    run(*train, "--epoch", "1")
    said = run(*train, "--epoch", "2")
    assert "Success to read UGATIT_light.model-3" in said, said[-2000:]
    assert "Test finished" in run("--phase", "test", "--checkpoint_dir", ck, *tiny)
    folder = os.path.join(ck, "UGATIT_light_demo_lsgan_4resblock_4dis_1_1_10_10_1000_sn_smoothing")
    said = run("train", "--init_from", folder, "--iteration", "1", "--epoch", "1", "--augment_flag", "False",
               "--checkpoint_dir", "mck", *tiny[:-4], module="morph")
    assert "init" in said.lower(), said[-2000:]


def test_forget_missing_after_the_record_was_deleted_meanwhile(tmp_path):
    """An output recorded but never written, the record file deleted meanwhile (by the user):
    forgetting the name neither raises nor writes a record back (nothing of ours is there)."""
    from ugatit_common.output_names import RECORD
    folder = tmp_path / "out"
    folder.mkdir()
    record = OutputRecord(str(folder))
    record.add([str(folder / "a.png")])  # recorded before it is written; never written
    assert (folder / RECORD).exists()
    os.remove(folder / RECORD)
    record.forget_missing()
    assert not (folder / RECORD).exists() and not record.mine(str(folder / "a.png"))


def test_outputs_never_differ_by_case_alone(tmp_path):
    """`A.png` and `a.jpg` in one folder (both can be there on macOS and Windows, whose file systems
    ignore case): Morph named their outputs `A_strip.png` and `a_strip.png`, one file there, so the
    second input's strip, GIF and figure silently replaced the first's. Now the second takes `a_1`;
    the port's `a2b/` names (the input's name kept) likewise never differ by case alone."""
    from morph.interpolate import interpolate_images, list_inputs
    from parity_tests.test_morph import SIZE
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    cv2.imwrite(str(folder / "A.png"), _picture(5, SIZE, SIZE))
    cv2.imwrite(str(folder / "a.jpg"), _picture(6, SIZE, SIZE))
    rows = interpolate_images(_morph_model(), list_inputs(str(folder)), str(out), steps=2, samples=1, log=None)
    assert sorted(r["name"] for r in rows) == ["A", "a_1"]
    files = os.listdir(out)
    assert len({f.casefold() for f in files}) == len(files) == 1 + 3 * 2 + 1, files  # page, 3 per input, record
    names = OutputNames(["in/X.gif", "in/x.GIF"])
    assert [os.path.basename(names.path("a2b", p)) for p in ("in/X.gif", "in/x.GIF")] == ["X.gif.png", "x_1.GIF.png"]
    later = OutputNames()  # an input added after the start (Morph's --input inside the output folder)
    later.add_inputs(["out/A.png"])
    assert later.path("out", "in/a.png", ext=".png") == os.path.join("out", "a_1.png")


def test_listing_a_folder_as_input_leaves_its_record_alone(tmp_path):
    """Morph's `list_inputs(F)` (F: `--input`, not yet known to be the folder it writes) read F's
    record by opening it for writing's sake: it dropped the names not yet on disk - the outputs a
    command writing into F at that moment had recorded before writing them - so once written they
    were no longer its outputs: the next run read `cat.gif` and `cat_strip.png` as input photos
    (and never replaced them). Now listing only reads; the record stays as the writer left it."""
    from morph.interpolate import list_inputs
    from ugatit_common.output_names import RECORD
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "cat.png"), _picture(7))
    writer = OutputRecord(str(folder))  # a command writing into the folder
    outs = [folder / "cat_strip.png", folder / "cat.gif", folder / "cat_smoothness.json"]
    writer.add([str(o) for o in outs])  # recorded before they are written (morph.interpolate._one_input)
    recorded = (folder / RECORD).read_bytes()
    assert [os.path.basename(p) for p in list_inputs(str(folder))] == ["cat.png"]  # another command lists it
    assert (folder / RECORD).read_bytes() == recorded
    for o in outs:  # the writer's files land
        o.write_bytes(b"written")
    assert [os.path.basename(p) for p in list_inputs(str(folder))] == ["cat.png"]
    assert all(OutputRecord(str(folder)).mine(str(o)) for o in outs)

"""Input pipelines: `torch_port/data.py` vs `tf_reference/data.py` (live TF) vs the official golden.

Measured on this machine (TF 2.21 CPU, OpenCV 5.0 with libjpeg-turbo 3.1):
- tf1_resize_bilinear vs tf.compat.v1.image.resize_images (bilinear): bit-exact (0.0) — same
  float32 formula, same operation order; the test allows 1e-5 only for FMA-contracting builds.
- train pipeline (augment off), PNG: 0.0. JPEG: TF's decode_jpeg defaults to the *fast* integer
  IDCT, OpenCV uses the accurate one: decoded uint8 differ by up to a few levels (6 on the test
  image, mean ~1). TF with dct_method='INTEGER_ACCURATE' equals OpenCV bit for bit, and the torch
  transform on TF-decoded pixels equals TF's pipeline exactly; the default-mode difference is a
  documented, measured deviation of the port (see test_jpeg_decoding_difference_is_the_idct).
- golden real_A / real_B from trainA.png / trainB.png: 0.0 on both sides.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from torch_port import data as tdata  # noqa: E402
from ugatit_common import demo_data, results  # noqa: E402


def _golden_dir():
    for cand in (os.path.join(ROOT, "parity_tests", "fixtures", "official_golden_light64"),
                 os.path.join(ROOT, "..", "shared", "reference", "official_golden_light64")):
        if os.path.isfile(os.path.join(cand, "real_A.npy")):
            return os.path.normpath(cand)
    return None


GOLDEN = _golden_dir()
needs_golden = pytest.mark.skipif(GOLDEN is None, reason="official_golden_light64 not found")


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf  # (tests marked tf: skipped by conftest where TF is absent)
    tf.compat.v1.disable_v2_behavior()
    return tf


@pytest.fixture(scope="module")
def tfdata(tf):
    from tf_reference import data
    return data


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A smooth PNG, a JPEG of the same content, and odd PNG flavours."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(123)
    base = cv2.GaussianBlur(rng.integers(0, 256, (71, 67, 3), dtype=np.uint8), (7, 7), 0)
    paths = {}
    for name, arr in (("rgb.png", base), ("rgb.jpg", base),
                      ("gray.png", rng.integers(0, 256, (23, 31), dtype=np.uint8)),
                      ("rgba.png", rng.integers(0, 256, (23, 31, 4), dtype=np.uint8)),
                      ("gray16.png", rng.integers(0, 65536, (23, 31), dtype=np.uint16)),
                      ("rgb16.png", rng.integers(0, 65536, (23, 31, 3), dtype=np.uint16)),
                      ("rgba16.png", rng.integers(0, 65536, (23, 31, 4), dtype=np.uint16))):
        p = str(d / name)
        assert cv2.imwrite(p, arr)
        paths[name] = p
    return paths


def _run(tf, build):
    g = tf.Graph()
    with g.as_default():
        fetches = build()
    with tf.compat.v1.Session(graph=g) as sess:
        return sess, g, fetches


# (a) ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf_resizer(tf):
    g = tf.Graph()
    with g.as_default():
        ph = tf.compat.v1.placeholder(tf.uint8, [None, None, 3])
        size = tf.compat.v1.placeholder(tf.int32, [2])
        out = tf.compat.v1.image.resize_images(ph, size)  # default: bilinear, TF1 semantics
    sess = tf.compat.v1.Session(graph=g)
    yield lambda a, h, w: sess.run(out, {ph: a, size: [h, w]})
    sess.close()


@pytest.mark.tf
@settings(max_examples=25, deadline=None)
@given(in_h=st.integers(1, 90), in_w=st.integers(1, 90), out_h=st.integers(1, 90), out_w=st.integers(1, 90),
       seed=st.integers(0, 2 ** 31 - 1))
def test_resize_matches_tf1(tf_resizer, in_h, in_w, out_h, out_w, seed):
    # Same formula (src = dst * in/out, floor/min neighbours, x-lerp then y-lerp) in float32:
    # measured bit-exact; 1e-5 leaves room only for FMA contraction on other builds.
    a = np.random.default_rng(seed).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    want = tf_resizer(a, out_h, out_w)
    got = tdata.tf1_resize_bilinear(a, out_h, out_w)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# (b) ------------------------------------------------------------------------------------------
def _tf_pipeline_outputs(tf, tfdata, files, img_size):
    g = tf.Graph()
    with g.as_default():
        nexts = [tfdata.train_iterator([f], img_size, 3, False, 1, 1, seed=0) for f in files]
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run(nexts)


@pytest.mark.tf
def test_train_pipeline_png_matches_tf(tf, tfdata, images):
    (tf_out,) = _tf_pipeline_outputs(tf, tfdata, [images["rgb.png"]], 64)
    ds = tdata.ImageFolderDataset([images["rgb.png"]], 64, augment=False, seed=0)
    got = ds[0].numpy().transpose(1, 2, 0)[None]
    assert tf_out.shape == got.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(got, tf_out, rtol=0, atol=1e-5)
    assert np.abs(got - tf_out).max() == 0.0  # measured bit-exact


@pytest.mark.tf
def test_train_pipeline_jpeg_transform_matches_tf(tf, tfdata, images):
    """The transform after decoding is exact on JPEG input too (fed TF's own decoded pixels)."""
    path = images["rgb.jpg"]
    g = tf.Graph()
    with g.as_default():
        dec = tf.compat.v1.image.decode_jpeg(tf.compat.v1.read_file(path), channels=3)
        nxt = tfdata.train_iterator([path], 64, 3, False, 1, 1, seed=0)
    with tf.compat.v1.Session(graph=g) as sess:
        tf_pixels, tf_out = sess.run([dec, nxt])
    got = tdata.train_transform(tf_pixels, 64, False).transpose(1, 2, 0)[None]
    np.testing.assert_allclose(got, tf_out, rtol=0, atol=1e-5)


@pytest.mark.tf
def test_jpeg_decoding_difference_is_the_idct(tf, tfdata, images):
    """TF decode_jpeg default (fast integer IDCT) vs OpenCV (accurate IDCT): measured, bounded,
    and explained — with dct_method='INTEGER_ACCURATE' TF equals OpenCV bit for bit."""
    path = images["rgb.jpg"]
    g = tf.Graph()
    with g.as_default():
        raw = tf.compat.v1.read_file(path)
        default = tf.compat.v1.image.decode_jpeg(raw, channels=3)
        accurate = tf.compat.v1.image.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")
        nxt = tfdata.train_iterator([path], 64, 3, False, 1, 1, seed=0)
    with tf.compat.v1.Session(graph=g) as sess:
        d, a, tf_out = sess.run([default, accurate, nxt])
    ours = tdata.decode_image(path)
    assert np.array_equal(ours, a), "OpenCV and TF's accurate IDCT should agree exactly"
    pix = np.abs(ours.astype(int) - d.astype(int)).max()
    got = tdata.ImageFolderDataset([path], 64, False)[0].numpy().transpose(1, 2, 0)[None]
    pipe = np.abs(got - tf_out).max()
    print(f"JPEG decode (TF default fast IDCT vs OpenCV): max {pix} levels; "
          f"pipeline output max abs diff {pipe:.6f}")
    # Known deviation of the port, not a tolerance: fast vs accurate IDCT differ by a few levels.
    assert pix <= 8, f"JPEG decoders differ by {pix} levels, more than the IDCT accounts for"
    assert pipe <= pix / 127.5 + 1e-6


# (c) ------------------------------------------------------------------------------------------
@needs_golden
@pytest.mark.tf
def test_golden_real_images_tf(tf, tfdata):
    out_a, out_b = _tf_pipeline_outputs(
        tf, tfdata, [os.path.join(GOLDEN, "trainA.png"), os.path.join(GOLDEN, "trainB.png")], 64)
    for got, name in ((out_a, "real_A"), (out_b, "real_B")):
        want = np.load(os.path.join(GOLDEN, name + ".npy"))
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.abs(got - want).max() <= 1e-6, name  # measured 0.0


@needs_golden
def test_golden_real_images_torch():
    for dom in ("A", "B"):
        ds = tdata.ImageFolderDataset([os.path.join(GOLDEN, f"train{dom}.png")], 64, augment=False)
        got = ds[0].numpy().transpose(1, 2, 0)[None]
        want = np.load(os.path.join(GOLDEN, f"real_{dom}.npy"))
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-6, dom  # measured 0.0


# (d) ------------------------------------------------------------------------------------------
@needs_golden
@pytest.mark.tf
def test_test_loaders_equal(tfdata):
    path = os.path.join(GOLDEN, "trainA.png")
    ref = tfdata.load_test_image(path, 64)
    assert ref.dtype == np.float64 and ref.shape == (1, 64, 64, 3)
    # The official formula, spelled out: cv2 read, BGR->RGB, cv2.resize INTER_LINEAR, / 127.5 - 1.
    official = cv2.resize(cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
                          (64, 64), interpolation=cv2.INTER_LINEAR)[None] / 127.5 - 1
    assert np.array_equal(ref, official)
    ours = tdata.test_image(path, 64)
    assert tuple(ours.shape) == (1, 3, 64, 64) and str(ours.dtype) == "torch.float32"
    assert np.array_equal(ours.numpy().transpose(0, 2, 3, 1), ref.astype(np.float32))
    # The test loader (half-pixel centres) is not the train pipeline (TF1 resize): they differ.
    assert np.abs(ref - np.load(os.path.join(GOLDEN, "real_A.npy"))).max() > 1e-3


# (e) ------------------------------------------------------------------------------------------
def test_torch_augmentation_statistics():
    img_size, n = 64, 2000
    a = tdata.augment_size(img_size)
    assert a == 79 and tdata.augment_size(256) == 286
    rng = np.random.default_rng(0)
    flips, oy, ox = [], [], []
    for _ in range(n):  # the draws train_transform makes, in its order
        flips.append(rng.random() < 0.5)
        y, x = rng.integers(0, a - img_size + 1, size=2)
        oy.append(y)
        ox.append(x)
    assert abs(np.mean(flips) - 0.5) < 0.05
    k = a - img_size + 1
    for off in (np.array(oy), np.array(ox)):
        assert off.min() == 0 and off.max() == a - img_size
        counts = np.bincount(off, minlength=k)
        chi2 = ((counts - n / k) ** 2 / (n / k)).sum()
        assert chi2 < 37.7  # chi-square, 15 dof, p = 0.001
    # And train_transform really uses those draws: identical rng -> identical output; the crop is
    # a window of the resized (flipped) image.
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = tdata.train_transform(img, img_size, True, np.random.default_rng(7))
    r = np.random.default_rng(7)
    flip = r.random() < 0.5
    y, x = r.integers(0, a - img_size + 1, size=2)
    base = tdata.normalise(tdata.tf1_resize_bilinear(img, img_size, img_size))
    base = tdata.tf1_resize_bilinear(base[:, ::-1] if flip else base, a, a)
    assert np.array_equal(out, base[y:y + img_size, x:x + img_size].transpose(2, 0, 1))


@pytest.mark.tf
def test_tf_augmentation_support(tf, tfdata):
    """Sample 200 official augmentations; recover each flip and crop offset by matching."""
    img_size = 64
    a = tdata.augment_size(img_size)
    img = np.random.default_rng(5).uniform(-1, 1, (img_size, img_size, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        out = tfdata.augmentation(tf.constant(img), a, seed=1234)
    with tf.compat.v1.Session(graph=g) as sess:
        samples = [sess.run(out) for _ in range(200)]
    bases = [tdata.tf1_resize_bilinear(img, a, a), tdata.tf1_resize_bilinear(img[:, ::-1], a, a)]
    flips, oys, oxs = [], [], []
    for s in samples:
        found = None
        for f, b in enumerate(bases):
            for y, x in zip(*np.nonzero(np.all(b == s[0, 0], axis=-1))):
                if y <= a - img_size and x <= a - img_size and np.array_equal(
                        b[y:y + img_size, x:x + img_size], s):
                    found = (f, y, x)
        assert found is not None, "a TF augmentation is not a flip + window of the resized image"
        flips.append(found[0])
        oys.append(found[1])
        oxs.append(found[2])
    for off in (oys, oxs):
        assert min(off) == 0 and max(off) == a - img_size
    assert 0.35 < np.mean(flips) < 0.65


@pytest.mark.tf
def test_tf_augment_coin_is_per_graph_build(tf, tfdata, images):
    """The official build-time coin: augmentation on => every image augmented, off => none."""
    import random

    class Fixed(random.Random):
        def __init__(self, p):
            super().__init__(0)
            self.p = p

        def random(self):
            return self.p

    path = images["rgb.png"]
    g = tf.Graph()
    with g.as_default():
        f = tf.constant(path)
        off = tfdata.image_processing(f, 64, 3, True, py_random=Fixed(0.4))
        plain = tfdata.image_processing(f, 64, 3, False)
        on = tfdata.image_processing(f, 64, 3, True, py_random=Fixed(0.6))
    with tf.compat.v1.Session(graph=g) as sess:
        o, p = sess.run([off, plain])
        ons = [sess.run(on) for _ in range(8)]
    assert np.array_equal(o, p)
    assert sum(not np.array_equal(x, p) for x in ons) >= 7  # crops at (0,0) unflipped are rare


@pytest.mark.tf
def test_tf_train_iterator_with_augmentation_runs(tf, tfdata, images):
    files = [images["rgb.png"], images["rgb.jpg"], images["gray.png"]]
    g = tf.Graph()
    with g.as_default():
        nxt = tfdata.train_iterator(files, 64, 3, True, 2, len(files), seed=1, force_augment=True)
    with tf.compat.v1.Session(graph=g) as sess:
        outs = [sess.run(nxt) for _ in range(3)]
    assert all(o.shape == (2, 64, 64, 3) and o.dtype == np.float32 for o in outs)
    assert all(o.min() >= -1.0 and o.max() <= 1.0 for o in outs)


# (f) ------------------------------------------------------------------------------------------
def test_demo_dataset(tmp_path):
    p1 = demo_data.make_demo_dataset(str(tmp_path / "r1"), "demo", size=32, n_train=5, n_test=3, seed=4)
    p2 = demo_data.make_demo_dataset(str(tmp_path / "r2"), "demo", size=32, n_train=5, n_test=3, seed=4)
    assert p1 == os.path.join(str(tmp_path / "r1"), "dataset", "demo")
    counts = {"trainA": 5, "trainB": 5, "testA": 3, "testB": 3}
    means = {}
    for folder, n in counts.items():
        f1 = sorted(os.listdir(os.path.join(p1, folder)))
        assert len(f1) == n and all(f.endswith(".png") for f in f1)
        assert f1 == sorted(os.listdir(os.path.join(p2, folder)))
        imgs = []
        for f in f1:
            b1 = open(os.path.join(p1, folder, f), "rb").read()
            assert b1 == open(os.path.join(p2, folder, f), "rb").read()
            im = tdata.decode_image(os.path.join(p1, folder, f))
            assert im.shape == (32, 32, 3)
            imgs.append(im.reshape(-1, 3).mean(0))
        means[folder] = np.mean(imgs, axis=0)
    # Idempotent: a re-run skips existing files (same mtime) and leaves no temp files.
    mt = os.stat(os.path.join(p1, "trainA", sorted(os.listdir(os.path.join(p1, "trainA")))[0])).st_mtime_ns
    demo_data.make_demo_dataset(str(tmp_path / "r1"), "demo", size=32, n_train=5, n_test=3, seed=4)
    assert os.stat(os.path.join(p1, "trainA", sorted(os.listdir(os.path.join(p1, "trainA")))[0])).st_mtime_ns == mt
    assert not any(f.startswith(".tmp") for folder in counts for f in os.listdir(os.path.join(p1, folder)))
    # Domains differ: mean colour distance (RGB, 0..255).
    dist = np.linalg.norm(means["trainA"] - means["trainB"])
    assert dist > 60, dist
    assert np.linalg.norm(means["trainA"] - means["testA"]) < dist / 2
    # Another seed gives other images.
    p3 = demo_data.make_demo_dataset(str(tmp_path / "r3"), "demo", size=32, n_train=1, n_test=0, seed=5)
    f = os.listdir(os.path.join(p3, "trainA"))[0]
    assert open(os.path.join(p3, "trainA", f), "rb").read() != open(os.path.join(p1, "trainA", f), "rb").read()


def test_demo_cli(tmp_path):
    assert demo_data.main(["--root", str(tmp_path), "--name", "x", "--size", "16", "--n_train", "2",
                           "--n_test", "1"]) == 0
    assert len(os.listdir(tmp_path / "dataset" / "x" / "testB")) == 1


# (g) ------------------------------------------------------------------------------------------
def test_corrupt_files_skipped_and_all_corrupt_raises(tmp_path, images):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cut = tmp_path / "truncated.png"
    data = open(images["rgb.png"], "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.warns(RuntimeWarning) as rec:
        ds = tdata.ImageFolderDataset([images["rgb.png"], str(bad), str(empty), str(cut)], 32, False)
    msgs = " ".join(str(w.message) for w in rec)
    assert "broken.png" in msgs and "empty.jpg" in msgs and "truncated.png" in msgs
    assert ds.files == [images["rgb.png"]] and len(ds) == 1
    with pytest.raises(tdata.ImageReadError) as ei:
        tdata.decode_image(str(bad))
    assert "broken.png" in str(ei.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(tdata.ImageReadError) as ei:
            tdata.ImageFolderDataset([str(bad), str(empty)], 32, False)
    assert str(tmp_path) in str(ei.value)


@pytest.mark.tf
@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "gray16.png", "rgb16.png", "rgba16.png", "rgb.png"])
def test_odd_pngs_decode_like_tf(tf, images, name):
    path = images[name]
    g = tf.Graph()
    with g.as_default():
        raw = tf.compat.v1.read_file(path)
        outs = [tf.compat.v1.image.decode_jpeg(raw, channels=3), tf.compat.v1.image.decode_png(raw, channels=3)]
    with tf.compat.v1.Session(graph=g) as sess:
        via_jpeg, via_png = sess.run(outs)
    ours = tdata.decode_image(path)
    assert ours.dtype == np.uint8 and ours.shape == via_png.shape and ours.shape[2] == 3
    assert np.array_equal(ours, via_png)
    assert np.array_equal(ours, via_jpeg)


# loader + results ------------------------------------------------------------------------------
def test_infinite_loader_shards_and_reshuffles(tmp_path):
    root = demo_data.make_demo_dataset(str(tmp_path), "s", size=16, n_train=7, n_test=0)
    files = sorted(os.path.join(root, "trainA", f) for f in os.listdir(os.path.join(root, "trainA")))
    ds = tdata.ImageFolderDataset(files, 16, augment=False)
    firsts = {float(ds[i][0, 0, 0]) + 10 * float(ds[i][1, 3, 5]) for i in range(7)}
    assert len(firsts) == 7  # the key identifies the image

    def keys(batch):
        return [float(b[0, 0, 0]) + 10 * float(b[1, 3, 5]) for b in batch]

    seen = []
    for rank in (0, 1):
        it = tdata.infinite_loader(ds, 2, seed=3, rank=rank, world_size=2)
        passes = [keys(next(it)) for _ in range(4)]  # shard of 4 (rank 0) / 3 (rank 1) -> 2 / 1 batches
        assert all(len(p) == 2 for p in passes)
        seen.append(passes)
    r0_pass0 = set(seen[0][0] + seen[0][1])
    r1_pass0 = set(seen[1][0])
    assert not (r0_pass0 & r1_pass0)  # disjoint shards
    it = tdata.infinite_loader(ds, 7, seed=3)
    order = [keys(next(it)) for _ in range(4)]
    assert all(sorted(o) == sorted(order[0]) for o in order)
    assert len({tuple(o) for o in order}) > 1  # reshuffled between passes


class _PidItems(torch.utils.data.Dataset):
    """Item (i, pass p) -> [100 p + i, pid of the process that read it]."""

    def __len__(self):
        return 3

    def item(self, i, p):
        return torch.tensor([100 * p + i, os.getpid()])


def test_infinite_loader_workers_start_once_and_keep_the_stream():
    """--num_workers N: one set of N worker processes serves every pass (a 3-image data set is
    passed over 8 times here), and each rank's batches are the item stream's, in order, with or
    without workers: pass p's seeded permutation after pass p - 1's, global batches of
    batch_size x world_size consecutive items, rank r taking items r, r + world_size, ..."""
    stream = [100 * p + int(i) for p in range(20) for i in np.random.default_rng([5, p]).permutation(3)]
    for world_size, rank, start in ((1, 0, 0), (2, 1, 2)):
        global_bs = 2 * world_size
        want = [stream[b * global_bs + rank:(b + 1) * global_bs:world_size] for b in range(start, start + 12)]
        for workers in (0, 2):
            it = tdata.infinite_loader(_PidItems(), 2, seed=5, num_workers=workers, rank=rank,
                                       world_size=world_size, start=start)
            batches = [next(it) for _ in range(12)]
            it.close()
            assert [[int(v) for v in b[:, 0]] for b in batches] == want, (world_size, workers)
            pids = {int(v) for b in batches for v in b[:, 1]}
            assert pids == ({os.getpid()} if workers == 0 else pids - {os.getpid()}) and len(pids) <= max(1, workers)


def test_results_writers(tmp_path):
    x = np.linspace(-1, 1, 8 * 8 * 3).reshape(8, 8, 3)
    p = results.save_image(x, str(tmp_path / "out" / "a.png"))
    want = cv2.cvtColor((((x + 1.) / 2) * 255.0).astype("uint8"), cv2.COLOR_RGB2BGR)  # official
    assert np.array_equal(cv2.imread(p, cv2.IMREAD_UNCHANGED), want)
    g = results.save_grid([x[None].repeat(2, 0), x], str(tmp_path / "out" / "g.png"), ncols=2)
    assert cv2.imread(g).shape == (16, 16, 3)
    page = results.ResultsPage(str(tmp_path / "out"), img_size=8)
    page.add("a.png", str(tmp_path / "in" / "a.png"), p)
    html = open(page.close()).read()
    assert "<th>name</th><th>input</th><th>output</th>" in html
    assert "src='../in/a.png'" in html and "src='a.png'" in html
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]


@pytest.mark.tf
def test_train_pipelines_read_a_name_that_is_not_utf8(tf, tfdata, images, tmp_path):
    """A training image whose name is not UTF-8 (Latin-1 bytes): TF's pipeline (given the name's
    bytes) and the port's read it as the same file under a plain name."""
    import shutil
    odd = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9.png"))
    shutil.copy(images["rgb.png"], odd)
    want, got = _tf_pipeline_outputs(tf, tfdata, [images["rgb.png"], odd], 32)
    np.testing.assert_array_equal(got, want)
    port = tdata.ImageFolderDataset([odd], 32, augment=False, seed=0)[0]
    assert (port == tdata.ImageFolderDataset([images["rgb.png"]], 32, augment=False, seed=0)[0]).all()


def _tf_decode(tf, path):
    """The official pipeline's decode of the file at `path` (decode_jpeg, 3 channels)."""
    g = tf.Graph()
    with g.as_default():
        dec = tf.compat.v1.image.decode_jpeg(tf.compat.v1.read_file(path), channels=3)
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run(dec)


@pytest.mark.tf
def test_animated_gifs_are_dropped_as_the_official_pipeline_stops_on_them(tf, tfdata, tmp_path):
    """The training image rule (ugatit_common.images.check_train_image, shared by both
    frameworks) drops exactly the GIFs the official pipeline cannot take: an animated GIF stops
    TF's training iterator (decode_jpeg: "animated gifs can only be decoded by decode_gif"),
    mid-run; a single-frame GIF decodes to OpenCV's pixels and is kept."""
    from PIL import Image

    from ugatit_common.images import ImageReadError, check_train_image, decode_image
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    animated, single = str(tmp_path / "multi.gif"), str(tmp_path / "one.gif")
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    frames[0].save(single)

    with pytest.raises(tf.errors.InvalidArgumentError, match="animated"):
        _tf_decode(tf, animated)
    with pytest.raises(ImageReadError, match="animated GIF .3 frames."):
        check_train_image(animated)
    check_train_image(single)
    np.testing.assert_array_equal(_tf_decode(tf, single), decode_image(single))


@pytest.mark.tf
def test_gifs_whose_frame_is_not_their_screen_are_dropped_by_both_frameworks(tf, tfdata, tmp_path, capsys):
    """TF decodes a GIF's frame, OpenCV its logical screen: a frame smaller than the screen (or a
    damaged screen size) gave the two frameworks different training pictures; a screen of
    65535 x 4095 made Pillow refuse to count the frames (a decompression bomb) where TF decodes
    the frame, and 65535 x 65535 (or a PNG declaring 60000 x 60000) made OpenCV raise, which
    stopped both frameworks with an internal error. Now each is one warning naming the file, in
    both frameworks, and the run goes on with the rest; a test-phase read is one ImageReadError."""
    import struct
    import zlib

    from PIL import Image

    from tf_reference.train import readable_images
    from ugatit_common.images import ImageReadError, check_train_image, decode_image, read_color
    rng = np.random.default_rng(0)
    single = str(tmp_path / "one.gif")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).convert("P").save(single)
    raw = open(single, "rb").read()

    def with_screen(name, w, h):
        path = str(tmp_path / name)
        with open(path, "wb") as fh:
            fh.write(raw[:6] + struct.pack("<HH", w, h) + raw[10:])
        return path
    larger, bomb, huge = with_screen("larger.gif", 64, 48), with_screen("bomb.gif", 65535, 4095), \
        with_screen("huge.gif", 65535, 65535)
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[16:24] = struct.pack(">II", 60000, 60000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    huge_png = str(tmp_path / "huge.png")
    with open(huge_png, "wb") as fh:
        fh.write(bytes(png))

    frame = _tf_decode(tf, single)
    for path in (larger, bomb, huge):  # TF: the frame, whatever the screen says
        np.testing.assert_array_equal(_tf_decode(tf, path), frame)
    assert decode_image(larger).shape == (48, 64, 3)  # OpenCV: the screen - another picture
    with pytest.raises(Image.DecompressionBombError), Image.open(bomb) as im:
        im.n_frames
    for path, words in ((larger, ("50x40 at 0,0", "64x48")), (bomb, ("65535x4095",)), (huge, ("65535x65535",)),
                        (huge_png, ("CV_IO_MAX_IMAGE_PIXELS",))):
        with pytest.raises(ImageReadError) as e:
            check_train_image(path)
        assert e.value.path == path and all(w in e.value.reason for w in words), e.value.reason
    for path in (huge, huge_png):  # the official test loader's read (cv2.imread): skipped with its reason
        with pytest.raises(ImageReadError, match="CV_IO_MAX_IMAGE_PIXELS"):
            read_color(path)
    files = [single, larger, bomb, huge, huge_png]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        port = tdata.ImageFolderDataset(files, 32, augment=False, seed=0)
    capsys.readouterr()
    kept = readable_images(files)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert port.files == kept == [single]
    said = [str(w.message) for w in said]
    for warned in (said, lines):
        assert len(warned) == 4 and all(repr(f) in w for f, w in zip(files[1:], warned)), warned


def test_a_gif_over_pillows_bomb_size_gives_no_anonymous_warning(tmp_path, monkeypatch):
    """Counting a large GIF's frames (Pillow) printed Pillow's DecompressionBombWarning, which
    names no file, for a picture OpenCV and TF decode; the rule's own result is unchanged: a
    single frame is used, an animated one still refused. (Pillow's limit is lowered so a small
    picture stands for one over 89 megapixels.)"""
    import warnings

    from PIL import Image

    from ugatit_common.images import ImageReadError, check_train_image
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).convert("P") for _ in range(2)]
    single, animated = str(tmp_path / "one.gif"), str(tmp_path / "two.gif")
    frames[0].save(single)
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2000 pixels: over it, under twice it (a warning)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        check_train_image(single)
        with pytest.raises(ImageReadError, match="animated GIF .2 frames."):
            check_train_image(animated)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)], \
        [str(w.message) for w in seen]

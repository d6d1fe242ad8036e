"""`python -m tf_reference` prints what matters and nothing a user would read as a failure: no
oneDNN banner, no TF1 deprecation notices, no grappler remapper error. The remapper is switched
off for training graphs (tf_reference.compat.train_session_config); these tests prove that this
changes no number and that real errors still come through."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from parity_tests.conftest import ROOT
from ugatit_common import options as opt

pytestmark = pytest.mark.tf

NOISE = re.compile(r"oneDNN custom operations|InitializeLog|deprecat|remapper|Mutation::Apply|^[EW]\d{4} ",
                   re.M | re.I)
TINY = dict(light=True, ch=2, n_dis=4, img_size=32, sn=True, smoothing=True, batch_size=1)


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "tf_reference"] + args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)


def test_test_phase_console_is_clean(tmp_path):
    """The test phase on the golden final/ checkpoint (the training phase's console is checked by
    test_tf_reference_golden.py::test_golden_training_through_command_line with NOISE)."""
    import shutil
    from parity_tests import golden
    from parity_tests.conftest import GOLDEN
    cfg = opt.config_from(golden.record()["config"])
    for d in ("testA", "testB"):
        os.makedirs(tmp_path / "dataset" / cfg["dataset"] / d)
        shutil.copy(os.path.join(GOLDEN, "trainA.png"), tmp_path / "dataset" / cfg["dataset"] / d / f"{d}.png")
    shutil.copytree(os.path.join(GOLDEN, "final"), tmp_path / "checkpoint" / opt.model_dir(cfg))
    args = ["--phase", "test", "--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]),
            "--ch", str(cfg["ch"]), "--n_dis", str(cfg["n_dis"])]
    test = _run(args, tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert not NOISE.search(test.stderr), test.stderr[-3000:]
    assert "Test finished" in test.stdout


def test_real_errors_still_reach_the_console(tmp_path):
    """Filtering is by known noise lines only: a failing run still says why."""
    proc = _run(["--dataset", "nope", "--light", "True"], tmp_path)
    assert proc.returncode == 2 and "dataset/nope/trainA" in proc.stderr


@pytest.mark.slow
def test_training_numbers_do_not_depend_on_the_remapper():
    """One D run and one G run of the training graph, once with TF's default session options and
    once with train_session_config: losses and every updated variable bit-identical."""
    from tf_reference.compat import tf, train_session_config
    from tf_reference.model import UGATITGraph
    cfg = opt.config_from(**TINY)
    rng = np.random.default_rng(0)
    shape = [1, cfg["img_size"], cfg["img_size"], 3]
    feeds = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2)]
    results = []
    for config in (None, train_session_config()):
        g = tf.Graph()
        with g.as_default():
            tf.set_random_seed(0)
            a, b = tf.placeholder(tf.float32, shape), tf.placeholder(tf.float32, shape)
            m = UGATITGraph(cfg).build_train(a, b)
            with tf.Session(config=config) as sess:
                sess.run(tf.global_variables_initializer())
                feed = {m.lr: cfg["lr"], a: feeds[0], b: feeds[1]}
                _, d_loss = sess.run([m.D_optim, m.Discriminator_loss], feed)
                _, g_loss = sess.run([m.G_optim, m.Generator_loss], feed)
                values = sess.run({v.op.name: v for v in tf.global_variables()})
        results.append((d_loss, g_loss, values))
    (d0, g0, v0), (d1, g1, v1) = results
    assert d0 == d1 and g0 == g1
    assert set(v0) == set(v1)
    differ = [k for k in v0 if not np.array_equal(v0[k], v1[k])]
    assert not differ, differ[:10]


@pytest.mark.slow
def test_recorded_forward_does_not_depend_on_the_remapper(monkeypatch):
    """The parity harness records every layer's output (an Identity beside each activation), which
    makes the remapper fail the same way: session_config switches it off there, bit-identically;
    the test phase's graph (nothing recorded) keeps TF's defaults and their fusions."""
    import tf_reference.compat as compat
    from parity_tests.harness import input_image, random_tf_weights, tf_forward
    from tf_reference.model import UGATITGraph
    cfg = opt.config_from(**dict(TINY, sn=False))
    weights, x = random_tf_weights(cfg, 0), input_image(cfg, 0)
    ours = tf_forward(weights, cfg, x)
    monkeypatch.setattr(compat, "session_config", lambda graph=None, config=None: config or compat.tf.ConfigProto())
    default = tf_forward(weights, cfg, x)
    assert set(ours) == set(default) and all(np.array_equal(ours[k], default[k]) for k in ours)
    g = compat.tf.Graph()
    with g.as_default():
        UGATITGraph(opt.config_from(**dict(TINY, phase="test"))).build_test()
    assert not compat.remapper_would_fail(g)
    assert compat.session_config(g).graph_options.rewrite_options.remapping == 0  # DEFAULT: fusions kept


@pytest.mark.slow
def test_training_that_goes_non_finite_stops_with_exit_3(tmp_path):
    """tf_reference on an all-black training domain (the instance norms of a constant image: a
    non-finite Adam slot within a few steps, the losses still finite), a checkpoint every step:
    exit 3 with one error line naming the tensor, and every checkpoint left in the folder holds
    finite values only (none written after the values went non-finite), as the port stops."""
    import cv2

    from ugatit_common.demo_data import make_demo_dataset
    from ugatit_common.tf_checkpoint import BundleReader
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    train_a = tmp_path / "dataset" / "demo" / "trainA"
    for f in os.listdir(train_a):
        os.remove(train_a / f)
    cv2.imwrite(str(train_a / "black.png"), np.zeros((32, 32, 3), np.uint8))
    proc = _run(["--dataset", "demo", "--light", "True", "--img_size", "32", "--ch", "4", "--n_dis", "4", "--epoch",
                 "1", "--iteration", "6", "--save_freq", "1", "--print_freq", "100", "--augment_flag", "False"],
                tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 3 and len(errors) == 1 and ("non-finite" in errors[0] or "nan" in errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr and "Graph execution" not in proc.stderr
    folder = tmp_path / "checkpoint" / opt.model_dir(opt.config_from(dataset="demo", light=True, n_dis=4))
    indexes = sorted(folder.glob("*.index")) if folder.is_dir() else []
    for index in indexes:
        with BundleReader(str(index)[:-len(".index")]) as r:
            for name in r.keys():
                assert np.isfinite(np.asarray(r.read(name), dtype=np.float64)).all(), (index.name, name)
    print(f"stopped: {errors[0][:120]}; {len(indexes)} finite checkpoint(s) left")


@pytest.mark.slow
@pytest.mark.parametrize("module", ["tf_reference", "torch_port"])
def test_samples_resumed_with_n_critic_and_batch_2(tmp_path, module):
    """Samples as the official loop writes them: `real_A_<epoch 3 digits>_<idx+1 5 digits>.png`
    and `fake_B_...`, the newest G step's whole batch in one column ([batch_size, 1]: 2 x 32 px
    high at batch 2). A run resumed where its first step is D-only (n_critic 2, counter 4) has no
    G batch yet when the first sample is due: the official loop stops on a NameError; both
    frameworks skip that sample and go on (tf_reference stopped with exit 1)."""
    import cv2

    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=4, n_test=1)
    flags = ["--dataset", "demo", "--light", "True", "--img_size", "32", "--ch", "2", "--n_dis", "4", "--iteration",
             "3", "--n_critic", "2", "--batch_size", "2", "--augment_flag", "False"]
    if module == "torch_port":
        flags += ["--device", "cpu", "--threads", "1"]

    def run(*more):
        proc = subprocess.run([sys.executable, "-m", module] + flags + list(more), cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    run("--epoch", "1", "--print_freq", "100")  # ends with the checkpoint of counter 4
    run("--epoch", "2", "--print_freq", "1")    # resumes at counter 4: a D-only step first
    cfg = opt.config_from(dataset="demo", light=True, n_dis=4, n_critic=2)
    folder = tmp_path / "samples" / opt.model_dir(cfg)
    names = sorted(n for n in os.listdir(folder) if n.startswith(("real_A", "fake_B")))
    # tf_reference resumes from the counter as officially (epoch 1, batch 1: counter 4 there is D-only, its
    # sample skipped; counter 5 at batch 2 has G); the port from its stored position (epoch 1, batch 0: D-only,
    # skipped; batch 1 has G; batch 2 is D-only and samples the newest G batch, as the official loop does)
    done = ["00003"] if module == "tf_reference" else ["00002", "00003"]
    assert names == sorted(f"{k}_001_{i}.png" for k in ("real_A", "fake_B") for i in done), names
    for n in names:
        assert cv2.imread(str(folder / n)).shape == (64, 32, 3), n


@pytest.mark.slow
def test_tf_reference_refuses_to_resume_at_another_image_size(tmp_path):
    """A light model's weights restore at any size, so without a check tf_reference went on at
    another --img_size; its .meta records the run's size: exit 2 naming both, nothing trained (the
    port refuses it too; the test phase builds at the flag's size, as officially)."""
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    flags = ["--dataset", "demo", "--light", "True", "--ch", "2", "--n_dis", "4", "--iteration", "1",
             "--augment_flag", "False"]
    assert _run(flags + ["--img_size", "32", "--epoch", "1"], tmp_path).returncode == 0
    folder = tmp_path / "checkpoint" / opt.model_dir(opt.config_from(dataset="demo", light=True, n_dis=4))
    before = sorted(os.listdir(folder))
    proc = _run(flags + ["--img_size", "64", "--epoch", "2"], tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "--img_size=64" in errors[0] and "img_size=32" in errors[0], errors
    assert sorted(os.listdir(folder)) == before


@pytest.mark.slow
def test_a_checkpoint_without_its_meta_still_refuses_another_image_size(tmp_path):
    """TF's Saver writes a checkpoint's .meta last: a full disk or a kill there leaves .data and
    .index without it, and the run resumes from them. A light model's weights restore at any
    size, and only the .meta recorded the run's, so tf_reference (and the port continuing the TF
    run) went on silently at another --img_size. The run's other checkpoints record it: exit 2,
    one error line naming the checkpoint, both sizes and the record, nothing written. (A flag
    that changes the weights' shapes, --ch here, is refused by the variables' check; --light,
    --n_res and --n_dis name another checkpoint folder.)"""
    from ugatit_common.demo_data import make_demo_dataset
    make_demo_dataset(str(tmp_path), "demo", 32, n_train=2, n_test=1)
    flags = ["--dataset", "demo", "--light", "True", "--n_dis", "4", "--augment_flag", "False", "--save_freq", "1",
             "--print_freq", "100"]
    proc = _run(flags + ["--ch", "2", "--img_size", "32", "--iteration", "2", "--epoch", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "checkpoint" / opt.model_dir(opt.config_from(dataset="demo", light=True, n_dis=4))
    os.remove(folder / "UGATIT_light.model-3.meta")   # model-3: .data, .index and `checkpoint` naming it
    before = sorted(os.listdir(folder))
    port = ["--device", "cpu", "--threads", "1"]
    for module, extra, words in (
            ("tf_reference", ["--ch", "2", "--img_size", "64"],
             ("--img_size=64", "img_size=32", "UGATIT_light.model-3", "no .meta", "UGATIT_light.model-2.meta")),
            ("torch_port", ["--ch", "2", "--img_size", "64"] + port,
             ("--img_size=64", "img_size=32", "UGATIT_light.model-3", "no .meta", "UGATIT_light.model-2.meta")),
            ("tf_reference", ["--ch", "4", "--img_size", "32"], ("UGATIT_light.model-3", "--ch", "shape"))):
        proc = subprocess.run([sys.executable, "-m", module] + flags + extra + ["--iteration", "2", "--epoch", "2"],
                              cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                              timeout=600)
        errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, (module, proc.stderr[-3000:])
        assert all(w in errors[0] for w in words), (module, errors[0])
        assert sorted(os.listdir(folder)) == before, module


def test_a_tensorflow_op_error_is_one_short_line_naming_the_file(tmp_path):
    """A failed graph-mode write (tf_reference's Saver past `ulimit -f`: "...tempstate...; File too
    large") made an `error:` line of several thousand characters: TF's message holds the op's
    Python stack before the cause and its creation stack after it. The line is now the cause."""
    import tensorflow as tf
    from ugatit_common.cli_errors import one_line
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    g = tf.Graph()
    with g.as_default():
        op = tf.io.write_file(str(blocker / "x"), "abc")
        with tf.compat.v1.Session(graph=g) as sess:
            with pytest.raises(tf.errors.OpError) as e:
                sess.run(op)
    assert "Original stack trace" in str(e.value) and "defined at (most recent call last)" in str(e.value)
    assert one_line(e.value) == f"{blocker / 'x'}; Not a directory", one_line(e.value)


def test_an_op_error_with_two_detected_nodes_keeps_the_cause_after_the_last():
    """A message with two `Detected at node ... defined at` stacks (a made-up message in the layout
    tf_error_text reads; no TensorFlow needed): the cause follows the last `Node:` line, and the
    line is that cause alone, no `File ...` line of an earlier stack in it."""
    from ugatit_common.cli_errors import tf_error_text
    stack = "\n".join(f'  File "/usr/lib/python3/x{i}.py", line {i}, in f{i}' for i in range(3))
    raw = ("Graph execution error:\n\nDetected at node 'a' defined at (most recent call last):\n" + stack +
           "\nNode: 'a'\nDetected at node 'b' defined at (most recent call last):\n" + stack +
           "\nNode: 'b'\nckpt/x.tempstate; File too large\n\t [[{{node b}}]]\n\nOriginal stack trace for 'b':\n" + stack)
    assert " ".join(tf_error_text(raw).split()) == "ckpt/x.tempstate; File too large"

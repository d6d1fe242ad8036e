"""tf_reference against the unmodified official code: graph variables, the 3-iteration
golden run (through the command line, from the PNGs) and the test-phase outputs."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from parity_tests import golden
from parity_tests.conftest import FIXTURES, GOLDEN, ROOT
from ugatit_common import options as opt

pytestmark = pytest.mark.tf


def manifest(name):
    out = {}
    with open(os.path.join(FIXTURES, name)) as f:
        for line in f:
            var, shape = line.split(" ", 1)
            out[var] = [int(s) for s in shape.strip()[1:-1].split(",") if s.strip()]
    return out


def graph_variables(cfg, phase):
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    g = tf.Graph()
    with g.as_default():
        m = UGATITGraph(cfg)
        if phase == "train":
            shape = [cfg["batch_size"], cfg["img_size"], cfg["img_size"], 3]
            m.build_train(tf.placeholder(tf.float32, shape), tf.placeholder(tf.float32, shape))
        else:
            m.build_test()
        return {v.op.name: v.shape.as_list() for v in tf.global_variables()}


@pytest.mark.parametrize("light,phase,manifest_name", [
    pytest.param(True, "train", "official_variables_light256_train.txt", marks=pytest.mark.slow),
    (False, "test", "official_variables_full256_test.txt"),
])
def test_graph_variables_equal_official_manifest(light, phase, manifest_name):
    # building the graph is enough: the full model's 268 M-weight MLP layers are never initialised
    got = graph_variables(opt.config_from(light=light, img_size=256, phase=phase), phase)
    want = manifest(manifest_name)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want


def _golden_workdir(tmp_path, cfg):
    for d in ("trainA", "trainB"):
        os.makedirs(tmp_path / "dataset" / cfg["dataset"] / d)
    shutil.copy(os.path.join(GOLDEN, "trainA.png"), tmp_path / "dataset" / cfg["dataset"] / "trainA")
    shutil.copy(os.path.join(GOLDEN, "trainB.png"), tmp_path / "dataset" / cfg["dataset"] / "trainB")
    ckpt = tmp_path / "checkpoint" / opt.model_dir(cfg)
    shutil.copytree(os.path.join(GOLDEN, "init"), ckpt)
    return ckpt


def golden_cli_args(cfg, iterations=3):
    return ["--light", "True", "--dataset", cfg["dataset"], "--img_size", str(cfg["img_size"]), "--ch",
            str(cfg["ch"]), "--n_dis", str(cfg["n_dis"]), "--augment_flag", "False", "--epoch", "1",
            "--iteration", str(iterations)]


def parse_iteration_lines(stdout):
    steps = []
    for line in stdout.splitlines():
        if line.startswith("Epoch: ["):
            d = float(line.split("d_loss:")[1].split(",")[0])
            g = float(line.split("g_loss:")[1])
            steps.append((d, g))
    return steps


def test_golden_training_through_command_line(tmp_path):
    """init/ + 3 iterations on trainA.png/trainB.png reproduce record.json and final/."""
    rec = golden.record()
    cfg = opt.config_from(rec["config"])
    ckpt = _golden_workdir(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", "tf_reference"] + golden_cli_args(cfg), cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from parity_tests.test_tf_console import NOISE  # no banner, deprecation or grappler error lines
    assert not NOISE.search(proc.stderr), proc.stderr[-3000:]
    steps = parse_iteration_lines(proc.stdout)
    assert len(steps) == 3
    for (d, g), ref in zip(steps, rec["steps"]):
        # the line prints 8 decimals of float32 values: 1e-5 relative covers the print rounding
        assert d == pytest.approx(ref["d_loss"], rel=1e-5)
        assert g == pytest.approx(ref["g_loss"], rel=1e-5)

    from torch_port.tf_bundle import BundleReader
    with BundleReader(str(ckpt / "UGATIT_light.model-3")) as r:
        got = dict(r.items())
    with BundleReader(os.path.join(GOLDEN, "final")) as r:
        ref = dict(r.items())
    failures, rows = golden.compare_checkpoint(got, ref, cfg["lr"])
    print(golden.summarize(rows))
    assert not failures, "\n".join(failures[:20])


def test_golden_test_phase_outputs():
    """final/ → generator_B(test_input) = test_a2b, generator_A = test_b2a, discriminator_A outputs."""
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    cfg = opt.config_from(golden.record()["config"], phase="test")
    x = golden.load("test_input.npy")
    g = tf.Graph()
    with g.as_default():
        m = UGATITGraph(cfg).build_test()
        logits, cams, _, _ = m.discriminator(m.test_domain_A, scope="discriminator_A")
        saver = tf.train.Saver()
        with tf.Session() as sess:
            saver.restore(sess, os.path.join(GOLDEN, "final", "UGATIT.model-3"))
            a2b, b2a = sess.run([m.test_fake_B, m.test_fake_A], {m.test_domain_A: x, m.test_domain_B: x})
            out = sess.run(logits + cams, {m.test_domain_A: x})
    # against tf_reference's float64 run of final/, the golden's own float32 error as the measure
    got = dict(zip(["test_a2b", "test_b2a", "test_dA_local", "test_dA_global", "test_dA_cam_local",
                    "test_dA_cam_global"], [a2b, b2a] + list(out)))
    bad = golden.judge_test_phase(got)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_wrong_light_flag_names_the_variables(tmp_path):
    """A light checkpoint resumed as the full model: one clear error, no traceback."""
    rec = golden.record()
    cfg = opt.config_from(rec["config"], light=False)
    _golden_workdir(tmp_path, cfg)
    args = golden_cli_args(cfg)
    args[1] = "False"
    proc = subprocess.run([sys.executable, "-m", "tf_reference"] + args, cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    assert proc.returncode == 2
    assert "does not match the configured model" in proc.stderr and "MLP" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tf_reference", "--dataset", "nope", "--light", "True"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and "dataset/nope/trainA" in proc.stderr and "Traceback" not in proc.stderr

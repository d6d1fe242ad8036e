"""Tiny official-format TF checkpoints written by tf_reference, for the config-inference tests.

Every checkpoint is saved by `tf.train.Saver` as the official code saves, so the folder holds
`<model_name>.model-N.{index,data-00000-of-00001,meta}` + `checkpoint` under
`<root>/checkpoint/<model_dir>/` (the official layout):

- `write_forward_checkpoint`: the official test-phase graph (`build_test`: the `test_domain_A/B`
  placeholders and both generators) plus both discriminators on those inputs; the official
  initialisers, then every variable perturbed (harness.random_tf_weights does the same) so that
  biases, gamma/beta, rho and u all matter. About 2 s per checkpoint.
- `write_train_checkpoint`: the official train graph exactly as `tf_reference.train.train`
  builds it (two `train_iterator`s, `UGATITGraph.build_train`, Adam, summaries, the Saver,
  `tf_reference.train.save`), initialised, saved without a training step. About 10 s.
- `python -m tf_reference --iteration 1` (the command line itself) is what `start_official_cli`
  starts, for the one test that goes the whole way.

    python -m parity_tests.tf_checkpoints ROOT    # writes every COMBO (forward) into ROOT
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np

from ugatit_common import options as opt
from ugatit_common import run_lock

DATASET = "tiny_set_x"  # an underscore in the name: the model_dir parser must cope
# light/full x smoothing x sn x two image sizes (n_dis 4 at 32 px, 5 at 64 px: the smallest that fit)
COMBOS = [dict(light=light, smoothing=smoothing, sn=sn, img_size=size, n_dis=4 if size == 32 else 5, ch=2)
          for light, smoothing, sn, size in itertools.product((True, False), (True, False), (True, False), (32, 64))]


def combo_name(c: dict) -> str:
    return (f"{'light' if c['light'] else 'full'}-{'smooth' if c['smoothing'] else 'nosmooth'}-"
            f"{'sn' if c['sn'] else 'nosn'}-{c['img_size']}")


def full_config(root: str, **kw) -> dict:
    cfg = opt.config_from(dict(dataset=DATASET, augment_flag=False, epoch=1, iteration=1,
                               checkpoint_dir=os.path.join(root, "checkpoint"), result_dir=os.path.join(root, "results"),
                               log_dir=os.path.join(root, "logs"), sample_dir=os.path.join(root, "samples")), **kw)
    return opt.validate(cfg)


def make_dataset(root: str, size: int = 40) -> str:
    from ugatit_common.demo_data import make_demo_dataset
    return make_demo_dataset(root, DATASET, size=size, n_train=2, n_test=1)


def _perturb(sess, tf, seed: int) -> None:
    """Official initial values, then rho uniform in [0, 1] and biases/gamma/beta moved (as
    harness.random_tf_weights): every kind of variable then changes the outputs."""
    rng = np.random.default_rng(seed)
    variables = tf.global_variables()
    values = sess.run(variables)
    feed = {}
    for v, value in zip(variables, values):
        leaf = v.op.name.rsplit("/", 1)[-1]
        if leaf == "rho":
            value = rng.uniform(0.0, 1.0, value.shape)
        elif leaf in ("bias", "beta", "gamma"):
            value = value + rng.normal(0.0, 0.1, value.shape)
        feed[v.initial_value] = np.asarray(value, value.dtype if hasattr(value, "dtype") else np.float32)
    sess.run([v.initializer for v in variables], feed)


def write_forward_checkpoint(root: str, cfg: dict, seed: int = 0, step: int = 1) -> str:
    """The test-phase graph + both discriminators, perturbed weights, saved by tf.train.Saver."""
    from tf_reference import train as phases
    from tf_reference.compat import tf
    from tf_reference.model import UGATITGraph
    g = tf.Graph()
    with g.as_default():
        tf.set_random_seed(seed)
        m = UGATITGraph(dict(cfg, phase="test")).build_test()
        m.discriminator(m.test_domain_A, scope="discriminator_A")
        m.discriminator(m.test_domain_B, scope="discriminator_B")
        saver = tf.train.Saver()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            _perturb(sess, tf, seed)
            folder = opt.run_paths(cfg).checkpoint
            with run_lock.acquire(folder) as owner:  # a checkpoint folder is written by its owner only
                return phases.save(sess, saver, cfg, folder, step, owner)


def write_train_checkpoint(root: str, cfg: dict, seed: int = 0, step: int = 1, force_augment=None) -> str:
    """The official train graph as tf_reference.train.train builds it, initialised and saved.
    `force_augment`: the official build-time augmentation coin's side (train_iterator's)."""
    from tf_reference import train as phases
    from tf_reference.compat import tf
    files_A = opt.domain_files(cfg, "trainA", root)
    files_B = opt.domain_files(cfg, "trainB", root)
    n = max(len(files_A), len(files_B))
    g = tf.Graph()
    with g.as_default():
        tf.set_random_seed(seed)
        _, saver, _, init = phases.build_train_graph(cfg, files_A, files_B, n, force_augment=force_augment)
        with tf.Session() as sess:
            sess.run(init)
            _perturb(sess, tf, seed)
            folder = opt.run_paths(cfg).checkpoint
            with run_lock.acquire(folder) as owner:  # a checkpoint folder is written by its owner only
                return phases.save(sess, saver, cfg, folder, step, owner)


def official_cli_args(cfg: dict) -> list[str]:
    """`python -m tf_reference` flags that reproduce `cfg`."""
    keys = ("light", "dataset", "epoch", "iteration", "gan_type", "smoothing", "ch", "n_dis", "n_critic", "sn",
            "img_size", "augment_flag", "adv_weight", "cycle_weight", "identity_weight", "cam_weight",
            "checkpoint_dir", "result_dir", "log_dir", "sample_dir", "print_freq", "save_freq")
    return [a for k in keys for a in (f"--{k}", str(cfg[k]))]


def start_official_cli(root: str, cfg: dict) -> subprocess.Popen:
    """Start `python -m tf_reference` (train phase) in `root`, as a user runs it; its output goes
    to `root/cli.out` and `root/cli.err` (files: a full pipe would stall it). Wait with `.wait()`."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    with open(os.path.join(root, "cli.out"), "w") as out, open(os.path.join(root, "cli.err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "tf_reference"] + official_cli_args(cfg), cwd=root, env=env,
                                stdout=out, stderr=err)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = os.path.abspath(argv[0] if argv else "tiny_checkpoints")
    for c in COMBOS:
        print(write_forward_checkpoint(root, full_config(root, **c)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

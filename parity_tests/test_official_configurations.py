"""Official TF checkpoints of option combinations the other suites leave out, through the whole
chain: a seeded random sample (three GAN losses, one with a gradient penalty: three chains, a
minute each, the CI budget's share; every GAN loss is read from a .meta by test_config_inference's
test_every_gan_loss_is_recognised) over image sizes that are multiples of 4 but not powers of two, ch 4-8, n_dis 4-6, batch_size 1-3, loss weights of 0, n_critic up to 5, GP_ld,
augmentation on (its build-time coin forced to augment, so the input pipeline is in the graph) -
each the official train graph (tf_reference: Adam, summaries, the Saver) at random init, saved as
the official code saves it. For each:

- tf2torch reads every setting from the official folder (nothing guessed, nothing unrecorded),
  and from the files alone in a folder of another name (only n_critic, which the folder name
  alone records, is unrecorded);
- the port built from that inferred config equals TF layer by layer (harness.py's criteria:
  float64 semantics, float32 against the float64 truth, as test_config_inference's);
- the safetensors file (with --with_optimizer) goes back through torch2tf to a checkpoint whose
  every variable - weights, Adam slots, powers, spectral-norm u - equals the original bit for bit,
  whose config is read again whole (the run record torch2tf writes);
- tf2onnx exports the A->B generator, verified against the port and tf_reference.

The existing suites cover ch 2 at 32 / 64 px, batch 1, default weights (test_config_inference),
and power-of-two sizes (test_network_parity)."""
from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest

import weights_convert as wc
from ugatit_common import options as opt
from ugatit_common.tf_checkpoint.config import MODEL_KEYS, TRAINING_KEYS

SEED, CHAINS = 0, 3
KEYS = MODEL_KEYS + ("dataset",) + TRAINING_KEYS
PENALTY_LOSSES = ("wgan-gp", "wgan-lp", "dragan")  # the losses whose graph holds a gradient penalty


def _combos(seed: int = SEED, n: int = CHAINS) -> list[dict]:
    rng = random.Random(seed)
    gans = list(opt.GAN_TYPES)
    rng.shuffle(gans)
    out = []
    for i, gan in enumerate(gans[:n]):
        n_dis = 6 if i == 0 else rng.choice([4, 4, 5])
        sizes = [s for s in range(opt.min_img_size(n_dis), 65, 4) if s & (s - 1)] or [opt.min_img_size(n_dis)]
        out.append(dict(gan_type=gan, light=rng.random() < 0.5 if n_dis < 6 else True, n_dis=n_dis,
                        img_size=rng.choice(sizes), ch=rng.choice([4, 6, 8]), sn=rng.random() < 0.5,
                        smoothing=rng.random() < 0.5, n_critic=rng.choice([1, 2, 5]), batch_size=rng.choice([1, 2, 3]),
                        adv_weight=rng.choice([0, 1, 2]), cycle_weight=rng.choice([0, 5, 10]),
                        identity_weight=rng.choice([0, 3, 10]), cam_weight=rng.choice([0, 100, 1000]),
                        GP_ld=rng.choice([1, 10]), augment_flag=True))
    return out


COMBOS = _combos()


def _name(c: dict) -> str:
    return (f"{c['gan_type']}-{'light' if c['light'] else 'full'}-{c['img_size']}px-ch{c['ch']}-dis{c['n_dis']}-"
            f"{'sn' if c['sn'] else 'nosn'}-{'smooth' if c['smoothing'] else 'nosmooth'}-b{c['batch_size']}")


def test_the_sample_covers_what_the_other_suites_do_not():
    """The table keeps its reach (a change of SEED or of _combos must not lose it): three GAN losses,
    one with a gradient penalty, light and full, sn and smoothing on and off, sizes that are not
    powers of two, n_dis 4 to 6, ch above 2, a batch above 1, n_critic above 1, a zero loss weight
    of each kind."""
    assert len({c["gan_type"] for c in COMBOS}) == len(COMBOS) == CHAINS
    assert any(c["gan_type"] in PENALTY_LOSSES for c in COMBOS) and set(PENALTY_LOSSES) <= set(opt.GAN_TYPES)
    for key in ("light", "sn", "smoothing"):
        assert {c[key] for c in COMBOS} == {True, False}, key
    assert all(c["img_size"] & (c["img_size"] - 1) for c in COMBOS if c["n_dis"] < 6)
    assert {c["n_dis"] for c in COMBOS} == {4, 5, 6}
    assert min(c["ch"] for c in COMBOS) >= 4 and max(c["batch_size"] for c in COMBOS) > 1
    assert max(c["n_critic"] for c in COMBOS) > 1
    for key in ("adv_weight", "cycle_weight", "identity_weight", "cam_weight"):
        assert 0 in {c[key] for c in COMBOS}, key
    for c in COMBOS:  # every one is a configuration the official graph builds
        opt.validate(opt.config_from(c))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from parity_tests import tf_checkpoints as T
    root = str(tmp_path_factory.mktemp("official_configs"))
    T.make_dataset(root, size=70)
    return root


def _all_variables(path: str) -> dict:
    from ugatit_common.tf_checkpoint.bundle import BundleReader
    with BundleReader(path) as r:
        return {n: r.read(n) for n in r.keys()}


@pytest.mark.tf
@pytest.mark.slow  # a train graph, four forward graphs, a second train graph (torch2tf's .meta): 1-3 min each
@pytest.mark.parametrize("combo", COMBOS, ids=[_name(c) for c in COMBOS])
def test_an_official_checkpoint_goes_through_the_chain(combo, data_root, tmp_path, capsys):
    from parity_tests import tf_checkpoints as T
    from parity_tests.harness import compare_networks, failures
    cfg = T.full_config(data_root, **combo)
    folder = os.path.dirname(T.write_train_checkpoint(data_root, cfg, seed=COMBOS.index(combo), step=41,
                                                      force_augment=True))
    want = {k: cfg[k] for k in KEYS}

    # the official folder: everything recorded, nothing guessed
    info = wc.read_tf_config_info(folder)
    assert {k: info.config.get(k) for k in KEYS} == want
    assert not info.guessed and not info.unrecorded
    # the files alone, in a folder of another name: the .meta and the weights record all but n_critic
    alone = tmp_path / "renamed" / "my_model"
    shutil.copytree(folder, alone)
    info = wc.read_tf_config_info(str(alone))
    assert {k: info.config.get(k) for k in KEYS if k not in ("dataset", "n_critic")} == \
        {k: v for k, v in want.items() if k not in ("dataset", "n_critic")}
    assert not info.guessed and info.unrecorded == ["n_critic"]

    # the port of the inferred config equals TF, layer by layer
    got, _ = wc.tf_to_torch(folder, quiet=True)
    rows = compare_networks(folder, got)
    assert sum(r["output"] for r in rows.values()) == 12
    bad = failures(rows)
    assert not bad, "\n".join(bad[:10])

    # tf2torch with the optimizer, torch2tf back: every variable bit for bit, the config whole
    st = tmp_path / "model.safetensors"
    capsys.readouterr()
    assert wc.main(["tf2torch", folder, str(st), "--with_optimizer"]) == 0, capsys.readouterr().err
    back = tmp_path / "back" / "UGATIT.model"
    assert wc.main(["torch2tf", str(st), str(back)]) == 0, capsys.readouterr().err
    original, again = _all_variables(folder), _all_variables(str(back.parent))
    assert sorted(again) == sorted(original)
    assert [n for n in original if not np.array_equal(original[n], again[n])] == []
    info = wc.read_tf_config_info(str(back.parent))
    assert {k: info.config.get(k) for k in KEYS} == want and not info.guessed and not info.unrecorded

    # the generator exported to ONNX, verified against the port and tf_reference
    capsys.readouterr()
    rc = wc.main(["tf2onnx", folder, str(tmp_path / "a2b.onnx"), "--direction", "a2b"])
    out = capsys.readouterr()
    assert rc == 0 and os.path.isfile(tmp_path / "a2b.onnx"), out.err
    assert "verified (tf_reference: compared)" in out.out, out.out

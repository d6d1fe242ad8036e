"""Every layer of both generators and both discriminators: tf_reference vs torch_port with
converted weights, across configurations (criteria in parity_tests/harness.py: float64 semantics,
and the float32 error against the float64 truth within max(3x TF's own, the rounding floor))."""
import pytest
from hypothesis import example, given, strategies as st

from parity_tests.harness import compare_networks, failures, random_tf_weights, table
from ugatit_common.options import config_from

pytestmark = pytest.mark.tf

FIXED = [
    dict(light=True, ch=4, n_dis=4, img_size=32, sn=True, smoothing=True),
    dict(light=False, ch=4, n_dis=4, img_size=32, sn=True, smoothing=False),
    dict(light=True, ch=2, n_dis=5, img_size=64, sn=False, smoothing=True),
]


def check(overrides, seed=0):
    cfg = config_from(**overrides)
    rows = compare_networks(random_tf_weights(cfg, seed), cfg, seed=seed)
    bad = failures(rows)
    judged = [r for r in rows.values() if "budget" in r]
    if judged:
        w32 = max(judged, key=lambda r: r["port_rms"] / r["budget"])
        print(f"{overrides} seed {seed}: worst float32 rms / budget {w32['port_rms'] / w32['budget']:.3f} "
              f"({w32['torch_name']}), worst float64 diff / tol {max(r['err64'] / r['tol64'] for r in judged):.2e}")
    assert rows and not bad, table({k: v for k, v in rows.items() if not v["ok"]})
    # every layer of every network was paired by the naming rule
    assert sum(r["output"] for r in rows.values()) == 12
    return rows


@pytest.mark.parametrize("overrides", FIXED, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_every_layer_fixed_configs(overrides):
    rows = check(overrides)
    assert len(rows) > 100


@given(light=st.booleans(), ch=st.sampled_from([2, 3, 4]), n_dis=st.sampled_from([4, 5]),
       sn=st.booleans(), smoothing=st.booleans(), seed=st.integers(0, 2 ** 16))
# a CI failure: float32 rounding amplified through a 2-channel light decoder (fallback criterion)
@pytest.mark.slow
@example(light=True, ch=2, n_dis=4, sn=False, smoothing=True, seed=65536)
def test_every_layer_hypothesis(light, ch, n_dis, sn, smoothing, seed):
    size = 2 ** (n_dis + 1)
    check(dict(light=light, ch=ch, n_dis=n_dis, img_size=size, sn=sn, smoothing=smoothing), seed)

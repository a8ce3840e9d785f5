import numpy as np
import pytest

from gfl.fl.codec import params_hash
from gfl.fl.strategies import STRATEGIES, ClientUpdate, StrategyError, make_strategy

G = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3, np.int64)}


def ups():
    # three clients, deltas chosen for easy hand arithmetic; addresses out of order on purpose
    return [
        ClientUpdate("0xc", 2, {"w": np.array([3.0, 0.0], np.float32), "n": np.array(2)}),
        ClientUpdate("0xa", 1, {"w": np.array([0.0, 3.0], np.float32), "n": np.array(2)}),
        ClientUpdate("0xb", 1, {"w": np.array([-3.0, 30.0], np.float32), "n": np.array(2)}),
    ]


def agg(name, updates=None, **kw):
    return make_strategy(name, kw).aggregate(G, updates or ups())


def test_fedavg_sample_weighted():
    out = agg("fedavg")
    # delta = (2*[3,0] + [0,3] + [-3,30]) / 4 = [0.75, 8.25]
    assert np.array_equal(out["w"], np.array([1.75, 10.25], np.float32))
    assert out["w"].dtype == np.float32 and out["n"] == 5 and out["n"].dtype == np.int64
    assert np.array_equal(agg("fedprox", mu=0.1)["w"], out["w"])


def test_sample_counts_are_capped_on_chain_not_by_the_strategy():
    """max_samples is a job setting the contract enforces (tests/chain); a strategy takes the
    committed counts as they are and refuses the old per-strategy setting with one line."""
    liar = [*ups()[1:], ClientUpdate("0xc", 10**9, ups()[0].update)]
    assert np.allclose(agg("fedavg", liar)["w"], [4.0, 2.0], atol=1e-6)
    with pytest.raises(StrategyError, match="no setting"):
        make_strategy("fedavg", {"max_samples": 2})


def test_fedavgm_momentum_and_state_roundtrip():
    s = make_strategy("fedavgm", {"momentum": 0.5, "server_lr": 2.0})
    a = s.aggregate(G, ups())
    assert np.allclose(a["w"], [1 + 1.5, 2 + 16.5])  # v = d; w + 2*v
    state = s.state_dict()
    s2 = make_strategy("fedavgm", {"momentum": 0.5, "server_lr": 2.0})
    s2.load_state_dict(state)
    b1, b2 = s.aggregate(G, ups()), s2.aggregate(G, ups())
    assert np.allclose(b1["w"], [1 + 2 * 1.125, 2 + 2 * 12.375])  # v = 0.5*d + d
    assert params_hash(b1) == params_hash(b2)


@pytest.mark.parametrize(
    "name, v1",
    [
        ("fedadam", lambda d, tau: 0.99 * tau**2 + 0.01 * d * d),
        ("fedyogi", lambda d, tau: tau**2 - 0.01 * d * d * np.sign(tau**2 - d * d)),
        ("fedadagrad", lambda d, tau: tau**2 + d * d),
    ],
)
def test_fedopt_first_step_by_hand(name, v1):
    tau, eta = 1e-3, 0.1
    d = np.array([0.75, 8.25])
    beta1 = 0.0 if name == "fedadagrad" else 0.9
    m = (1 - beta1) * d
    expect = np.array([1.0, 2.0]) + eta * m / (np.sqrt(v1(d, tau)) + tau)
    s = make_strategy(name, {})
    out = s.aggregate(G, ups())
    assert np.allclose(out["w"], expect.astype(np.float32))
    s2 = make_strategy(name, {})
    s2.load_state_dict(s.state_dict())
    assert params_hash(s.aggregate(out, ups())) == params_hash(s2.aggregate(out, ups()))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_reduced_delta_is_rounded_to_each_tensors_precision(name):
    """Section 6, step 4: a float32 tensor's reduced delta is a float32 value (held as
    float64), an integer tensor's keeps its float64 mean, and the server step starts from
    the rounded value."""
    tiny = np.float32(2.0**-30)  # 0.5 + 2^-31 is no float32: it rounds to 0.5
    pair = [
        ClientUpdate("0xa", 1, {"w": np.array([1.0, 1.0], np.float32), "n": np.array(1)}),
        ClientUpdate("0xb", 1, {"w": np.array([tiny, 0.0], np.float32), "n": np.array(2)}),
    ]
    if name in ("krum", "multikrum"):
        pair = pair[:1]  # one update: Krum picks it (its values are float32 already)
    reduced = make_strategy(name, {}).reduce(G, pair)
    assert reduced["w"].dtype == np.float64
    assert np.array_equal(reduced["w"].astype(np.float32).astype(np.float64), reduced["w"])
    if len(pair) == 2:
        assert reduced["w"][0] == 0.5 and reduced["n"] == 1.5  # not 0.5 + 2^-31; 1.5 kept
    whole = make_strategy(name, {}).aggregate_delta(G, pair)
    stepped = make_strategy(name, {}).server_step(reduced)
    assert all(whole[k].tobytes() == stepped[k].tobytes() for k in G)


def test_median_and_trimmed_mean():
    assert np.array_equal(agg("median")["w"], np.array([1.0, 5.0], np.float32))  # median [0, 3]
    five = [
        *ups(),
        ClientUpdate("0xd", 1, {"w": np.array([100.0, -100.0], np.float32), "n": np.array(0)}),
        ClientUpdate("0xe", 1, {"w": np.array([1.0, 1.0], np.float32), "n": np.array(0)}),
    ]
    # beta=0.2 trims one value from each end per coordinate, averages the middle three
    out = agg("trimmed_mean", five, beta=0.2)
    x = sorted([3.0, 0.0, -3.0, 100.0, 1.0])[1:4]
    y = sorted([0.0, 3.0, 30.0, -100.0, 1.0])[1:4]
    assert np.allclose(out["w"], [1 + sum(x) / 3, 2 + sum(y) / 3])


def test_krum_picks_the_central_update_and_multikrum_averages():
    five = [
        ClientUpdate(f"0x{i}", 1, {"w": np.array(v, np.float32), "n": np.array(0)})
        for i, v in enumerate([[0, 0], [1, 0], [0, 1], [1, 1], [50, 50]])
    ]
    # f=1: each scores its n-f-2 = 2 nearest; [1,0],[0,1],[0,0],[1,1] all score 2; lowest
    # canonical index among ties wins -> 0x0 ([0,0])
    assert np.array_equal(agg("krum", five, f=1)["w"], np.array([1, 2], np.float32))
    out = agg("multikrum", five, f=1)  # m = n - f = 4: the outlier is excluded
    assert np.allclose(out["w"], [1.5, 2.5])


def test_bad_updates_are_dropped_the_same_way_everywhere():
    bad = [
        *ups(),
        ClientUpdate("0xd", 5, {"w": np.array([np.nan, 0], np.float32), "n": np.array(0)}),
        ClientUpdate("0xe", 5, {"w": np.zeros(3, np.float32), "n": np.array(0)}),
        ClientUpdate("0xA", 5, {"w": np.zeros(2, np.float32), "n": np.array(0)}),
    ]
    assert np.array_equal(agg("fedavg", bad)["w"], agg("fedavg")["w"])
    with pytest.raises(StrategyError):
        agg("fedavg", bad[3:5])
    with pytest.raises(StrategyError, match="no setting"):
        make_strategy("fedavg", {"eta": 1})
    with pytest.raises(StrategyError, match="unknown"):
        make_strategy("fedsgd", {})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_is_order_independent_and_bit_deterministic(name):
    rng = np.random.default_rng(3)
    g = {
        "a": rng.standard_normal((40, 30)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }
    us = [
        ClientUpdate(
            f"0x{i:02x}",
            int(rng.integers(1, 100)),
            {k: (rng.standard_normal(v.shape) * 0.01).astype(np.float32) for k, v in g.items()},
        )
        for i in range(7)
    ]
    kw = {"f": 1} if "krum" in name else {}
    h1 = params_hash(make_strategy(name, kw).aggregate(g, us))
    h2 = params_hash(make_strategy(name, kw).aggregate(g, list(reversed(us))))
    assert h1 == h2


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_strategy_is_stateful_exactly_when_its_server_step_leaves_state(name):
    # (a member that adopts a round recomputes it only for these: gfl.scheduler.runner)
    g = {"w": np.ones(4, dtype=np.float32)}
    us = [ClientUpdate(f"0x{i:02x}", 10, {"w": np.full(4, i + 1, np.float32)}) for i in range(5)]
    strategy = make_strategy(name, {"f": 1} if "krum" in name else {})
    strategy.aggregate(g, us)
    assert strategy.stateful == bool(strategy.state_dict())

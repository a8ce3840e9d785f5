"""config.toml: the written defaults parse back; mistakes are refused naming the key."""

from __future__ import annotations

import tomllib

import pytest

from gfl.errors import ConfigError
from gfl.node.config import (
    Config,
    load_config,
    parse_config,
    render_config,
    update_config,
    write_config,
)

PEER_ID = "16Uiu2HAm6Uw21mhHZ9Cm7S2gSCJQNE9cvyiGzGgAY3KuzJobm1TZ"


def test_rendered_config_parses_back_to_the_same_values(tmp_path):
    data = {
        "mnist": "/data/mnist",
        "digits": {"partition": "iid", "index": 1, "of": 3},
        "odd name": "x",
    }
    config = Config(data=data).replace(
        "net", listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[f"/ip4/1.2.3.4/tcp/1/p2p/{PEER_ID}"]
    )
    text = render_config(config)
    for section in ("[node]", "[net]", "[api]", "[chain]", "[data]", "[jobs]", "[train]"):
        assert section in text
    assert parse_config(tomllib.loads(text)) == config
    assert parse_config({}) == Config()
    write_config(tmp_path / "c.toml", config)
    assert load_config(tmp_path / "c.toml") == config


def test_update_config_changes_one_key(tmp_path):
    path = tmp_path / "c.toml"
    write_config(path, Config())
    update_config(path, "chain", registry="0x" + "ab" * 20)
    assert load_config(path).chain.registry == "0x" + "ab" * 20
    with pytest.raises(ConfigError, match=r"unknown key chain\.nope"):
        update_config(path, "chain", nope=1)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"net": {"mdns": "yes"}}, "net.mdns must be a boolean, not a string"),
        ({"api": {"port": True}}, "api.port must be an integer, not a boolean"),
        ({"api": {"port": 70000}}, "api.port must be between 0 and 65535"),
        ({"net": {"listen": ["/ip4/1.2.3.4/tcp/1", 5]}}, r"net.listen\[1\] must be a string"),
        ({"net": {"listen": ["ip4"]}}, "is not a multiaddr"),
        ({"jobs": {"max_concurrent": 0}}, "jobs.max_concurrent must be at least 1"),
        ({"net": {"blob_keep_s": -1}}, "net.blob_keep_s must be 0 or more"),
        ({"net": {"blob_keep_s": float("nan")}}, "net.blob_keep_s must be 0 or more"),
        ({"api": 3}, r"\[api\] must be a table"),
        ({"train": {"gpu": 1}}, "unknown key train.gpu"),
        ({"chain": {"registry": "0xzz"}}, "chain.registry must be a contract address"),
        ({"chain": {"registry": "0x" + "ab" * 19}}, "chain.registry must be a contract address"),
        ({"net": {"listen": ["/ip9/x"]}}, r"net.listen: '/ip9/x' is not a multiaddr"),
        ({"net": {"listen": ["/ip4/1.2.3.4/udp/1"]}}, "is not /ip4|ip6/HOST/tcp/PORT"),
        ({"net": {"bootstrap": ["/ip4/1.2.3.4/tcp/1"]}}, "net.bootstrap: .* lacks /p2p/<peer id>"),
        ({"net": {"bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/x"]}}, "net.bootstrap: .* not a multiaddr"),
        ({"data": {"digits": {"index": 3, "of": 3}}}, r"data.digits.index must be between 0 and"),
        ({"data": {"digits": {"index": -1, "of": 3}}}, r"data.digits.index must be between 0 and"),
        ({"data": {"digits": {"index": 0, "of": 0}}}, r"data.digits.of must be at least 1"),
        ({"data": {"digits": {"index": 1}}}, r"data.digits.index must be between 0 and"),
        ({"data": {"digits": {"of": "3"}}}, r"data.digits.of must be an integer"),
    ],
)
def test_mistakes_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_float_keys_accept_integers():
    assert parse_config({"api": {"heartbeat_s": 2}}).api.heartbeat_s == 2.0

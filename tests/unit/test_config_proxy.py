"""`proxy:` on a host: defaults, the forms of `listen` and `units`, and what `check`
shows (the errors are in tests/configs/bad/proxy*.yaml)."""

from __future__ import annotations

from bridge.cli import render_plan
from bridge.config import parse_config
from bridge.model import Proxy

POINTS = "points: [{name: a, table: holding, address: 0, type: uint16}]"


def _hosts(*proxies: str) -> str:
    hosts = "\n".join(
        f"  - {{name: h{i}, address: 10.0.0.{i + 1}, proxy: {p}}}" for i, p in enumerate(proxies)
    )
    return (
        f"version: 1\nhosts:\n{hosts}\n"
        f"devices:\n  - {{name: 'd{{unit}}', host: h0, units: '3,1', {POINTS}}}\n"
    )


def test_defaults_and_forms() -> None:
    config = parse_config(
        _hosts("{}", "{listen: 5021, writes: true, units: '7-9', clients: 2}",
               "{listen: '[::1]:5022', units: [4, 2]}"),
        env={},
    )  # fmt: skip
    h0, h1, h2 = (h.proxy for h in config.hosts)
    assert h0 == Proxy()  # 127.0.0.1:5020, reads only, the devices' units, 8 clients
    assert h0 is not None and h0.units is None and h0.loopback
    assert h1 == Proxy(address="127.0.0.1", port=5021, writes=True, units=(7, 8, 9), clients=2)
    assert h2 == Proxy(address="::1", port=5022, units=(2, 4))
    assert config.hosts[0].proxy is not None


def test_check_shows_each_proxy_and_warns_beyond_loopback() -> None:
    config = parse_config(_hosts("{}", "{listen: '0.0.0.0:5021', units: 5, writes: true}"), env={})
    text = render_plan(config)
    assert "  proxy on 127.0.0.1:5020: units 1,3, reads only, up to 8 clients" in text
    assert "  proxy on 0.0.0.0:5021: units 5, reads and writes, up to 8 clients" in text
    assert "WARNING: host h1: the proxy on 0.0.0.0:5021 is reachable from other machines" in text

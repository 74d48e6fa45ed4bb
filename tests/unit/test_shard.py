"""Sharding a fleet: the stable hash, one shard's configuration, every shard's share."""

from __future__ import annotations

from collections import Counter

import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError
from bridge.model import BridgeConfig, Shard
from bridge.shard import (
    imbalance,
    layout_refusal,
    other_layouts,
    parse_count,
    parse_shard,
    select,
    shard_of,
    shares,
)
from bridge.topics import topics_of

NAMES = [f"gw-{i}" for i in range(1, 21)] + ["plant-a/rs485", "Köln Süd", "x"]

# Where these hosts go with 4 shards. Pinned: a shard's hosts must never move because
# of a change to the code, a Python version or a process's hash seed
# (tests/integration/test_shard_hash.py recomputes them in other interpreters).
PINNED_4 = {name: shard_of(name, 4) for name in NAMES}


@pytest.mark.parametrize(
    ("text", "expected"), [("2/4", (2, 4)), ("1/1", (1, 1)), (" 3 / 8 ", (3, 8))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    "text",
    ["0/4", "5/4", "1/0", "2", "a/b", "-1/4", "1/300", "2/4/8", "",
     # Digits of other scripts: int() takes them, a shard layout must not.
     "\uff11/\uff12", "1/\uff12", "\u0661/\u0662", "\u00b9/\u00b2", "1\u00a0/2"],
)  # fmt: skip
def test_bad_shard_values(text: str) -> None:
    with pytest.raises(ValueError, match=r"shard|K/N"):
        parse_shard(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", 4), (" 12\t", 12), ("\uff14", None), ("\u00b2", None), ("", None), ("-2", None)],
)
def test_parse_count_takes_ascii_digits_only(text: str, expected: int | None) -> None:
    assert parse_count(text) == expected


def test_known_assignments() -> None:
    # Computed once with this implementation (SHA-256, jump consistent hash); a change
    # here means every sharded fleet would move hosts on upgrade.
    assert [shard_of(f"gw-{i}", 4) for i in range(1, 9)] == [4, 2, 4, 4, 2, 4, 4, 4]
    assert [shard_of(f"gw-{i}", 2) for i in range(1, 9)] == [1, 2, 2, 2, 2, 1, 1, 2]
    assert shard_of("gw-1", 1) == 1


def test_hosts_spread_evenly_over_many_names() -> None:
    counts = Counter(shard_of(f"host-{i:04d}", 4) for i in range(2000))
    assert set(counts) == {1, 2, 3, 4}
    assert all(400 <= n <= 600 for n in counts.values()), counts


def test_one_more_shard_moves_hosts_only_into_the_new_shard() -> None:
    names = [f"host-{i:04d}" for i in range(2000)]
    moved = 0
    for name in names:
        before, after = shard_of(name, 4), shard_of(name, 5)
        assert after in (before, 5), name
        moved += after != before
    assert 300 <= moved <= 500  # about a fifth


FLEET = """
version: 1
mqtt: {client_id: plant, base_topic: site}
metrics: {listen: 127.0.0.1:9108}
hosts:
  - {name: gw-1, address: 10.0.0.1}
  - {name: gw-2, address: 10.0.0.2}
  - {name: gw-3, address: 10.0.0.3}
  - {name: gw-4, address: 10.0.0.4}
  - {name: gw-5, address: 10.0.0.5}
devices:
  - {name: "a{unit}", host: gw-1, units: 1-2, interval: 1s, points: [{name: x, table: holding, address: 0, type: uint16}]}
  - {name: "b{unit}", host: gw-2, units: 1-3, interval: 2s, points: [{name: x, table: holding, address: 0, type: uint16}]}
  - {name: "c{unit}", host: gw-3, units: 1-1, interval: 1s, points: [{name: x, table: holding, address: 0, type: uint16}]}
  - {name: "d{unit}", host: gw-4, units: 1-4, interval: 1s, points: [{name: x, table: holding, address: 0, type: uint16}]}
"""  # noqa: E501


def _fleet(text: str = FLEET) -> BridgeConfig:
    return parse_config(text, env={})


def test_a_shard_runs_its_hosts_with_all_their_devices() -> None:
    fleet = _fleet()
    parts = [select(fleet, k, 2) for k in (1, 2)]
    for k, part in enumerate(parts, 1):
        assert part.shard == Shard(k, 2, "plant")
        assert {h.name for h in part.hosts} == {
            h.name for h in fleet.hosts if shard_of(h.name, 2) == k
        }
        assert {d.host for d in part.devices} <= {h.name for h in part.hosts}
        assert part.mqtt.client_id == f"plant-shard-{k}of2"
        assert part.mqtt.base_topic == "site"  # devices keep their topics
        assert topics_of(part).bridge_state == f"site/bridge/{k}of2/state"
        assert topics_of(part).bridge_health == f"site/bridge/{k}of2/health"
        assert topics_of(part).state("a1") == "site/a1"
        assert part.metrics is not None and part.metrics.port == 9107 + k
        assert part.elsewhere == {d.name for d in fleet.devices} - {d.name for d in part.devices}
    # together: every device exactly once
    names = [d.name for part in parts for d in part.devices]
    assert sorted(names) == sorted(d.name for d in fleet.devices)
    assert topics_of(fleet).bridge_state == "site/bridge/state"


def test_a_shard_is_its_own_sparkplug_edge_node_with_its_own_files() -> None:
    """Sparkplug wants one MQTT session per edge node, and a buffer database or a bdSeq
    file shared by two processes would replay or count the other's: each is per shard."""
    fleet = _fleet(
        FLEET
        + "sparkplug: {group_id: plant, edge_node_id: edge, state_file: /var/lib/mb/sp.bdseq}\n"
        + "buffer: {path: /var/lib/mb/buffer.db}\n"
    )
    parts = [select(fleet, k, 3) for k in (1, 2, 3)]
    nodes = [p.sparkplug for p in parts]
    assert [n.edge_node_id for n in nodes if n] == ["edge-1of3", "edge-2of3", "edge-3of3"]
    assert [n.group_id for n in nodes if n] == ["plant"] * 3
    assert [n.state_file for n in nodes if n] == [f"/var/lib/mb/sp.{k}of3.bdseq" for k in (1, 2, 3)]
    assert [p.buffer.path for p in parts if p.buffer] == [
        f"/var/lib/mb/buffer.{k}of3.db" for k in (1, 2, 3)
    ]
    assert fleet.sparkplug is not None and fleet.sparkplug.edge_node_id == "edge"


def test_a_metrics_port_past_65535_is_a_config_error() -> None:
    fleet = _fleet(FLEET.replace("127.0.0.1:9108", "127.0.0.1:65535"))
    select(fleet, 1, 2)  # shard 1 keeps the port
    with pytest.raises(ConfigError, match="does not exist"):
        select(fleet, 2, 2)


def test_shard_ports_false_keeps_every_shard_on_the_port() -> None:
    """One shard per pod (deploy/kubernetes): every shard on the configured port, which
    is where the probes and Prometheus look."""
    fleet = _fleet(
        FLEET.replace("listen: 127.0.0.1:9108}", "listen: 0.0.0.0:9108, shard_ports: false}")
    )
    for k in (1, 2, 3):
        part = select(fleet, k, 3)
        assert part.metrics is not None and part.metrics.port == 9108
    fleet = _fleet(FLEET.replace("127.0.0.1:9108}", "65535, shard_ports: false}"))
    assert select(fleet, 2, 2).metrics is not None  # no port past 65535 either


def test_shares_add_up_to_the_fleet() -> None:
    fleet = _fleet()
    parts = shares(fleet, 3)
    assert [p.shard.index for p in parts] == [1, 2, 3]
    assert sum(p.devices for p in parts) == len(fleet.devices) == 10
    # gw-5 has no devices: in no share's hosts
    assert sorted(h for p in parts for h in p.hosts) == ["gw-1", "gw-2", "gw-3", "gw-4"]
    # a1, a2, c1 and d1..d4 every 1 s, b1..b3 every 2 s: one block each
    assert sum(p.requests_per_second for p in parts) == pytest.approx(8.5)
    assert imbalance(parts) >= 1.0
    assert imbalance(shares(fleet, 1)) == 1.0


@pytest.mark.parametrize(
    ("mine", "online", "others"),
    [
        (Shard(1, 2, "f"), ["1of2", "2of2"], []),  # its own layout
        (Shard(1, 2, "f"), ["1of2"], []),  # the same shard twice: not another layout
        (Shard(1, 3, "f"), ["1of2", "2of2", "3of3"], ["1of2", "2of2"]),
        (Shard(1, 2, "f"), [""], [""]),  # the unsharded bridge
        (None, ["2of4", ""], ["2of4"]),  # unsharded: another unsharded bridge is itself
        (None, ["junk", "1ofx", "0of"], []),  # not a shard's label: not a layout
    ],
)
def test_other_layouts(mine: Shard | None, online: list[str], others: list[str]) -> None:
    assert other_layouts(mine, online) == others


def test_layout_refusal_names_both_layouts_and_the_way_out() -> None:
    assert layout_refusal(Shard(2, 2, "f"), "modbus", ["1of2", "2of2"]) is None
    why = layout_refusal(Shard(1, 3, "f"), "plant/a", ["2of2", "1of2", "3of3"])
    assert why is not None
    assert why.startswith(
        "shard 1/3 (of 3 shards) refuses to run: shards 1/2, 2/2 (of 2 shards) of another "
        "layout are online under base topic 'plant/a' (plant/a/bridge/1of2/state, "
        "plant/a/bridge/2of2/state)."
    )
    assert "mosquitto_pub -r -n -t plant/a/bridge/1of2/state" in why
    why = layout_refusal(Shard(1, 2, "f"), "modbus", [""])
    assert why is not None and "the unsharded bridge of another layout is online" in why
    why = layout_refusal(None, "modbus", ["3of4"])
    assert why is not None and why.startswith("the unsharded bridge refuses to run: shard 3/4")

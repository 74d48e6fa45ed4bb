"""Sharding a fleet over several bridge processes (`run --shard K/N`). Pure: no I/O.

Every shard reads the same configuration file and runs the hosts whose stable hash
falls in its shard, with all their devices, so each host still has exactly one
session in the whole fleet. The hash is SHA-256 of the host name (never Python's
`hash()`, which changes from process to process), mapped to a shard by jump consistent
hashing (Lamping and Veach, 2014): going from N to N+1 shards moves only the hosts
that land in the new shard, about 1/(N+1) of them.

A shard gets its own MQTT client id (`<client_id>-shard-KofN`), its own bridge topics
(`<base>/bridge/KofN/...`, `topics.topics_of`) and its metrics on `port + K - 1` (on
`port` itself with `metrics.shard_ports: false`: one shard per machine or pod);
devices keep their topics. It knows the devices of the other shards (`elsewhere`), so
it leaves their commands and their Home Assistant discovery alone. What a process keeps
for itself is per shard too: the Sparkplug edge node (`<edge_node_id>-KofN`, one MQTT
session each, as Sparkplug requires of an edge node), its bdSeq file and the buffer's
database (`<name>.KofN<ext>`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from bridge.errors import ConfigError, Problem
from bridge.messages import Gate, Incoming
from bridge.model import BridgeConfig, Shard
from bridge.payloads import ONLINE
from bridge.planner import host_load, plan_device
from bridge.topics import Topics

MAX_SHARDS = 256
# ASCII digits and spaces only: `\d` would take any script's digits (fullwidth digits, U+FF11 ...).
_SHARD_RE = re.compile(r"[ \t]*([0-9]+)[ \t]*/[ \t]*([0-9]+)[ \t]*")
_MASK64 = (1 << 64) - 1


def parse_count(text: str) -> int | None:
    """A number of shards written in ASCII digits, or None."""
    count = text.strip(" \t")
    return int(count) if count.isascii() and count.isdigit() else None


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4), ASCII digits only; ValueError with a sentence saying what is
    wrong."""
    match = _SHARD_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not K/N (e.g. 2/4: the second of four shards)")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"{text!r}: the number of shards must be 1 to {MAX_SHARDS}")
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: the shard must be 1 to {count}")
    return index, count


def _key(name: str) -> int:
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


def _jump(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket (0-based) of a 64-bit `key`."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & _MASK64
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(host: str, count: int) -> int:
    """The shard (1..count) that runs `host`: the same in every process, on every
    machine and Python version."""
    return _jump(_key(host), count) + 1


_LABEL_RE = re.compile(r"([0-9]+)of([0-9]+)")


def parse_label(label: str) -> tuple[int, int] | None:
    """A shard's topic label (``2of4``) -> (2, 4); None when it is not one."""
    match = _LABEL_RE.fullmatch(label)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def other_layouts(mine: Shard | None, online: Iterable[str]) -> list[str]:
    """The labels among `online` (bridge states that say `online`; "" is the unsharded
    bridge) that belong to another layout than `mine`: another number of shards, or
    sharded against unsharded. The same shard (or another shard of the same layout) is
    not another layout."""
    others: set[str] = set()
    for label in online:
        if label == "":
            if mine is not None:
                others.add(label)
            continue
        parsed = parse_label(label)
        if parsed is not None and (mine is None or parsed[1] != mine.count):
            others.add(label)
    return sorted(others, key=lambda label: parse_label(label) or (0, 0))


def layout_refusal(mine: Shard | None, base: str, online: Iterable[str]) -> str | None:
    """Why this process must not run beside the bridge states `online` under `base`,
    naming both layouts; None when no other layout is online. Two layouts at once split
    the hosts two ways: some hosts get two sessions (every command to their devices
    written twice), others none."""
    others = other_layouts(mine, online)
    if not others:
        return None
    me = "the unsharded bridge" if mine is None else f"shard {mine} (of {mine.count} shards)"
    layouts: dict[int, list[int]] = {}  # other layout's shard count -> its shards online
    for label in others:
        index, count = parse_label(label) or (0, 0)
        layouts.setdefault(count, []).append(index)
    them = []
    for count, indexes in sorted(layouts.items()):
        if count == 0:
            them.append("the unsharded bridge")
        else:
            shards = ", ".join(f"{k}/{count}" for k in indexes)
            them.append(f"shard{'s' if len(indexes) > 1 else ''} {shards} (of {count} shards)")
    states = [Topics(base, label or None).bridge_state for label in others]
    return (
        f"{me} refuses to run: {' and '.join(them)} of another layout "
        f"{'is' if len(others) == 1 else 'are'} online under base topic {base!r} "
        f"({', '.join(states)}). Two layouts at once poll some hosts twice and write every "
        "command to them twice. Stop every process of one layout before starting the "
        "other; if that one is stopped already (its last will never reached the broker), "
        f"clear its state: mosquitto_pub -r -n -t {states[0]}"
    )


def layout_gate(config: BridgeConfig, topics: Topics) -> Gate:
    """What the MQTT link checks at its first connect (start, and a reload that
    reconnects): the retained bridge states under the base; another layout's `online`
    closes the gate, with `layout_refusal`'s reason."""

    def judge(states: list[Incoming]) -> str | None:
        online = [
            label
            for m in states
            if (label := topics.bridge_label(m.topic)) is not None
            and m.payload.strip() == ONLINE.encode()
        ]
        return layout_refusal(config.shard, topics.base, online)

    return Gate(topics.layout_filters, judge)


def client_id(fleet_client_id: str, index: int, count: int) -> str:
    return f"{fleet_client_id}-shard-{index}of{count}"


def select(config: BridgeConfig, index: int, count: int) -> BridgeConfig:
    """Shard `index` of `count` of `config`: its hosts, their devices, its own client id,
    bridge topics and metrics port. Raises ConfigError when the metrics port it would
    get does not exist."""
    hosts = tuple(h for h in config.hosts if shard_of(h.name, count) == index)
    names = {h.name for h in hosts}
    metrics = config.metrics
    if metrics is not None and metrics.shard_ports:
        port = metrics.port + index - 1
        if port > 65535:
            problem = (
                f"metrics.listen: shard {index}/{count} serves its metrics on the port "
                f"plus {index - 1}, {port}, which does not exist; use a lower port"
            )
            raise ConfigError([Problem(config.source, None, None, "", problem)])
        metrics = replace(metrics, port=port)
    fleet = config.mqtt.client_id
    sparkplug = config.sparkplug
    if sparkplug is not None:
        sparkplug = replace(
            sparkplug,
            edge_node_id=f"{sparkplug.edge_node_id}-{index}of{count}",
            state_file=(
                None
                if sparkplug.state_file is None
                else per_shard_path(sparkplug.state_file, index, count)
            ),
        )
    buffer = config.buffer
    if buffer is not None:
        buffer = replace(buffer, path=per_shard_path(buffer.path, index, count))
    return replace(
        config,
        hosts=hosts,
        devices=tuple(d for d in config.devices if d.host in names),
        mqtt=replace(config.mqtt, client_id=client_id(fleet, index, count)),
        metrics=metrics,
        sparkplug=sparkplug,
        buffer=buffer,
        shard=Shard(index, count, fleet),
        elsewhere=frozenset(d.name for d in config.devices if d.host not in names),
    )


def per_shard_path(path: str, index: int, count: int) -> str:
    """`path` for shard `index` of `count`: `buffer.db` -> `buffer.2of3.db`. Two
    processes must never share a buffer database or a bdSeq file."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f"{stem}.{index}of{count}{ext}")


@dataclass(frozen=True)
class Share:
    """What one shard runs (for `check --shards`)."""

    shard: Shard
    hosts: tuple[str, ...]  # the hosts with devices
    devices: int
    requests_per_second: float


def shares(config: BridgeConfig, count: int) -> list[Share]:
    """Every shard's share of `config` split `count` ways."""
    loads: dict[str, float] = {}
    for host in config.hosts:
        devices = config.devices_on(host.name)
        if devices:
            plan = {d.name: plan_device(d) for d in devices}
            loads[host.name] = host_load(host, devices, plan).requests_per_second
    out = []
    for index in range(1, count + 1):
        part = select(replace(config, metrics=None), index, count)
        used = tuple(h.name for h in part.hosts if h.name in loads)
        out.append(
            Share(
                shard=Shard(index, count, config.mqtt.client_id),
                hosts=used,
                devices=len(part.devices),
                requests_per_second=sum(loads[h] for h in used),
            )
        )
    return out


def imbalance(parts: Sequence[Share]) -> float:
    """The busiest shard's requests per second over an even split's (1.0: even)."""
    total = sum(p.requests_per_second for p in parts)
    if total <= 0 or not parts:
        return 1.0
    return max(p.requests_per_second for p in parts) * len(parts) / total

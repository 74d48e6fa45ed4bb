"""The configuration's feature sections: `sparkplug` (the Sparkplug B edge node) and
`buffer` (store and forward). Read from the node tree like every section
(`config_nodes.NodeReader`); `config._Reader` takes them in."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import quote

from bridge.config_nodes import Node, NodeReader, or_default, show
from bridge.model import Buffer, Sparkplug
from bridge.sparkplug import id_problem
from bridge.topics import text_problem

# fmt: off
_BUFFER_KEYS = (
    "path", "max_bytes", "max_age", "replay_rate", "flush_interval",
)
_SPARKPLUG_KEYS = (
    "group_id", "edge_node_id", "primary_host_id", "state_file",
)
# fmt: on
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]|[bB])?")
_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip
MIN_BUFFER_BYTES = 256 * 1024  # bridge.buffer.MIN_BYTES: room for the WAL and a few pages


class FeatureReader(NodeReader):
    """`sparkplug:` and `buffer:`."""

    def sparkplug(self, node: Node, path: str) -> Sparkplug | None:
        f = self.mapping(node, path, _SPARKPLUG_KEYS)
        if f is None:
            return None
        group = self.req(f, "group_id", self.sparkplug_id)
        edge = self.req(f, "edge_node_id", self.sparkplug_id)
        host = self.get(f, "primary_host_id", self.sparkplug_id)
        state = self.get(f, "state_file", self.nonempty_text)
        if group is None or edge is None:
            return None
        if state is not None:
            base = self.base_dir or os.getcwd()
            state = os.path.normpath(os.path.join(base, os.path.expanduser(state)))
        return Sparkplug(group_id=group, edge_node_id=edge, primary_host_id=host, state_file=state)

    def buffer(self, node: Node, path: str) -> Buffer | None:
        f = self.mapping(node, path, _BUFFER_KEYS)
        if f is None:
            return None
        where = self.req(f, "path", self.nonempty_text)
        max_bytes = self.get(f, "max_bytes", self.size)
        max_age = self.get(f, "max_age", self.duration)
        rate = self.get(f, "replay_rate", self.rate)
        flush = self.get(f, "flush_interval", self.duration)
        if where is None:
            return None
        d = Buffer(path=where)
        base = self.base_dir or os.getcwd()
        return Buffer(
            path=os.path.normpath(os.path.join(base, os.path.expanduser(where))),
            max_bytes=or_default(max_bytes, d.max_bytes),
            max_age=or_default(max_age, d.max_age),
            replay_rate=or_default(rate, d.replay_rate),
            flush_interval=or_default(flush, d.flush_interval),
        )

    def size(self, node: Node, path: str) -> int | None:
        """Bytes: a number, or with a unit (kB, MB, GB; KiB, MiB, GiB), at least
        MIN_BUFFER_BYTES."""
        text = self.text(node, path)
        if text is None:
            return None
        m = _SIZE_RE.fullmatch(text.strip())
        if m is None:
            self.report(node, path, f"invalid size {show(text)} (expected e.g. 64MiB or 500MB)")
            return None
        value = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
        if value < MIN_BUFFER_BYTES:
            self.report(node, path, f"must be at least {MIN_BUFFER_BYTES // 1024}KiB")
            return None
        return value

    def sparkplug_id(self, node: Node, path: str) -> str | None:
        """A Sparkplug id: one topic level that can travel in MQTT."""
        return self.checked_text(node, path, lambda text: text_problem(text) or id_problem(text))


def state_file_for(sparkplug: Sparkplug, buffer: Buffer | None, env: Mapping[str, str]) -> str:
    """Where the edge node keeps the `bdSeq` of its latest MQTT CONNECT across restarts:
    `sparkplug.state_file` when given; else a file named after the node beside the
    buffer's database; else in the state folder systemd gives the service
    (`$STATE_DIRECTORY`, `StateDirectory=` in the unit); else under `$XDG_STATE_HOME`
    or `~/.local/state`, in `modbus-bridge/`."""
    if sparkplug.state_file is not None:
        return sparkplug.state_file
    name = "sparkplug-{}@{}.bdseq".format(
        quote(sparkplug.group_id, safe=""), quote(sparkplug.edge_node_id, safe="")
    )
    if buffer is not None:
        folder = os.path.dirname(buffer.path)
    elif env.get("STATE_DIRECTORY"):
        folder = env["STATE_DIRECTORY"].split(":")[0]
    elif env.get("XDG_STATE_HOME"):
        folder = os.path.join(env["XDG_STATE_HOME"], "modbus-bridge")
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        folder = os.path.join(home, ".local", "state", "modbus-bridge")
    return os.path.normpath(os.path.join(folder, name))

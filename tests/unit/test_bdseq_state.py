"""The Sparkplug edge node's bdSeq across restarts (Sparkplug 3.0: each MQTT CONNECT's
will carries the previous CONNECT's bdSeq plus one, starting at zero): where the file
is when nothing is configured, what it holds, and that the will of a new process
carries the next bdSeq. (tests/integration/test_sparkplug_tahu.py restarts the real
daemon, after a kill -9 and after a SIGTERM.)"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bridge.config import load_config, parse_config
from bridge.config_features import state_file_for
from bridge.model import Buffer, Sparkplug
from bridge.sparkplug import EdgeNode, SparkplugTopics, next_bd_seq, parse_bd_seq
from bridge.sparkplug_pb import decode
from bridge.spnode import BdSeqFile, SparkplugNode

CONFIG = """\
version: 1
mqtt: {{client_id: site-7}}
sparkplug: {{group_id: plant, edge_node_id: line 1{extra}}}
hosts:
  - {{name: gw, address: 10.0.0.1}}
devices:
  - name: boiler
    host: gw
    unit: 1
    points:
      - {{name: temp, table: input, address: 0, type: int16}}
"""

NODE = Sparkplug("plant", "line 1")
NAME = "sparkplug-plant@line%201.bdseq"


def test_next_bd_seq_starts_at_zero_and_wraps() -> None:
    assert next_bd_seq(None) == 0
    assert next_bd_seq(0) == 1
    assert next_bd_seq(254) == 255
    assert next_bd_seq(255) == 0
    assert [parse_bd_seq(t) for t in ("7\n", " 255 ", "256", "-1", "x", "", "٣")] == [
        7, 255, None, None, None, None, None,
    ]  # fmt: skip


def test_where_the_file_is() -> None:
    given = Sparkplug("plant", "line 1", state_file="/srv/sp.state")
    buffer = Buffer(path="/var/lib/mb/buffer.db")
    env = {"STATE_DIRECTORY": "/var/lib/modbus-bridge", "XDG_STATE_HOME": "/x", "HOME": "/h"}
    assert state_file_for(given, buffer, env) == "/srv/sp.state"
    assert state_file_for(NODE, buffer, env) == f"/var/lib/mb/{NAME}"  # beside the buffer
    assert state_file_for(NODE, None, env) == f"/var/lib/modbus-bridge/{NAME}"  # systemd's
    env.pop("STATE_DIRECTORY")
    assert state_file_for(NODE, None, env) == f"/x/modbus-bridge/{NAME}"
    env.pop("XDG_STATE_HOME")
    assert state_file_for(NODE, None, env) == f"/h/.local/state/modbus-bridge/{NAME}"
    # one file per edge node: ids that would run together stay apart
    a = state_file_for(Sparkplug("a@b", "c"), None, {"HOME": "/h"})
    b = state_file_for(Sparkplug("a", "b@c"), None, {"HOME": "/h"})
    assert a != b


def test_the_configuration_names_it(tmp_path: Path) -> None:
    config_file = tmp_path / "bridge.yaml"
    config_file.write_text(CONFIG.format(extra=", state_file: state/bdseq"))
    config = load_config(str(config_file))
    assert config.sparkplug is not None
    assert config.sparkplug.state_file == str(tmp_path / "state" / "bdseq")


def test_nothing_configured_still_has_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/somewhere")
    config = parse_config(CONFIG.format(extra=""))
    assert config.sparkplug is not None
    assert config.sparkplug.state_file == f"/somewhere/modbus-bridge/{NAME}"


def test_file_round_trip(tmp_path: Path) -> None:
    store = BdSeqFile(str(tmp_path / "deep" / "er" / "bdseq"))
    assert store.load() is None  # the first start ever
    assert store.save(0) and store.save(0)
    assert (tmp_path / "deep" / "er" / "bdseq").read_text() == "0\n"
    assert store.save(255)
    assert BdSeqFile(store.path).load() == 255
    assert not os.path.exists(store.path + ".tmp")


def test_unreadable_or_unwritable_is_said_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a number")
    caplog.set_level(logging.WARNING)
    assert BdSeqFile(str(junk)).load() is None
    assert "holds no bdSeq" in caplog.text
    caplog.clear()
    blocked = BdSeqFile(str(junk / "below-a-file"))  # its folder is a file
    assert blocked.save(1) is False
    assert blocked.save(2) is False
    assert caplog.text.count("cannot be written") == 1


class _Hub:
    def __init__(self, text: str) -> None:
        self.config = parse_config(text)


def _will_bd_seq(feature: SparkplugNode) -> int:
    assert feature.settings is not None and feature.hub.config is not None
    settings = feature.settings
    topics = SparkplugTopics(settings.group_id, settings.edge_node_id)
    feature.node = EdgeNode(topics, feature.hub.config.devices, bd_seq=feature.bd_seq)
    value = decode(feature._will().payload).metrics[0].value
    assert isinstance(value, int)
    return value


def test_a_new_process_connects_with_the_next_bd_seq(tmp_path: Path) -> None:
    state = tmp_path / "bdseq"
    text = CONFIG.format(extra=f", state_file: {state}")
    first = SparkplugNode(_Hub(text))  # type: ignore[arg-type]
    assert first.settings is not None
    first._keep_in(first.settings)
    assert _will_bd_seq(first) == 0  # nothing kept: start at zero
    assert state.read_text() == "0\n"  # kept before the CONNECT goes out
    first._on_disconnected(None)
    assert _will_bd_seq(first) == 1 and state.read_text() == "1\n"
    # the process dies (kill -9, power cut): the next one goes on from there
    second = SparkplugNode(_Hub(text))  # type: ignore[arg-type]
    assert second.settings is not None
    second._keep_in(second.settings)
    assert _will_bd_seq(second) == 2 and state.read_text() == "2\n"
    state.write_text("255\n")
    third = SparkplugNode(_Hub(text))  # type: ignore[arg-type]
    assert third.settings is not None
    third._keep_in(third.settings)
    assert _will_bd_seq(third) == 0  # wrapped

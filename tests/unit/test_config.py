"""The YAML loader: golden configs, every bad-config message, and fuzzing."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import load_config, parse_config, parse_duration, parse_rate, parse_units
from bridge.errors import ConfigError, Problem
from bridge.model import (
    BridgeConfig,
    DataType,
    Device,
    EntityCategory,
    Framer,
    HomeAssistant,
    Host,
    Mqtt,
    Order,
    Output,
    Parity,
    Point,
    SerialLink,
    StateClass,
    Table,
    TcpLink,
    Tls,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "configs"
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))

MINIMAL = """\
version: 1
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: d
    host: gw
    unit: 1
    points:
      - {name: a, table: holding, address: 0, type: uint16}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml", env=env or {})
    assert info.value.problems, "ConfigError without problems"
    return [str(p) for p in info.value.problems]


def one_device(points: str) -> str:
    """MINIMAL with other points (a YAML flow list)."""
    return MINIMAL.split("    points:", maxsplit=1)[0] + f"    points: {points}\n"


# --------------------------------------------------------------------------
# golden config


@pytest.fixture(scope="module")
def contract() -> BridgeConfig:
    env = {"MQTT_PASSWORD": "s3:cr#t ${not-a-var"}
    return load_config(CONFIGS / "good" / "contract.yaml", env=env)


def test_contract_top_level(contract: BridgeConfig) -> None:
    assert contract.version == 1
    assert contract.read_only is False
    assert contract.write_timeout == 2.0
    assert contract.health_interval == 30.0
    assert contract.source.endswith("contract.yaml")


def test_contract_mqtt_with_env_substitution(contract: BridgeConfig) -> None:
    assert contract.mqtt == Mqtt(
        host="127.0.0.1",
        port=1883,
        client_id="modbus-bridge",
        username="bridge",  # ${MQTT_USER:-bridge}, MQTT_USER unset
        password="s3:cr#t ${not-a-var",  # substituted text is not re-scanned
        base_topic="modbus",
        qos=1,
        retain=True,
        output=Output.JSON,
        keepalive=30,
        protocol=4,  # 3.1.1
        tls=Tls(  # relative file names are read from the config file's folder
            ca_file=str(CONFIGS / "good" / "tls" / "ca.pem"),
            cert_file=str(CONFIGS / "good" / "tls" / "client.pem"),
            key_file=str(CONFIGS / "good" / "tls" / "client.key"),
            insecure=False,
        ),
    )


def test_contract_hosts(contract: BridgeConfig) -> None:
    assert contract.hosts == (
        Host(
            name="gw-a",
            link=TcpLink(
                address="127.0.0.1",
                port=502,
                keepalive_idle=30,
                keepalive_interval=10,
                keepalive_count=3,
                baudrate=9600,
            ),
            timeout=1.0,
            pause=0.0,
            max_gap=10,
            write_multiple=False,
        ),
        Host(
            name="gw-b",
            link=TcpLink(address="10.0.0.7", port=5020),
            timeout=0.5,
            pause=0.02,
            max_gap=4,
            write_multiple=True,
        ),
    )


def test_contract_unit_range_expands_into_80_devices(contract: BridgeConfig) -> None:
    meters = [d for d in contract.devices if d.host == "gw-a"]
    assert [d.name for d in meters] == [f"meter-{u}" for u in range(1, 81)]
    assert [d.unit for d in meters] == list(range(1, 81))
    assert len(contract.devices) == 81
    assert contract.devices[-1].name == "boiler"


def test_contract_template_points_resolved(contract: BridgeConfig) -> None:
    common: dict[str, Any] = {"interval": 1.0, "byte_order": Order.BIG, "word_order": Order.LITTLE}
    expected = (
        Point(
            name="voltage", table=Table.INPUT, address=0, type=DataType.FLOAT32, unit="V", **common
        ),
        Point(
            name="energy",
            table=Table.HOLDING,
            address=10,
            type=DataType.UINT32,
            scale=0.01,
            precision=2,
            unit="kWh",
            **common,
        ),
        Point(
            name="mode",
            table=Table.HOLDING,
            address=20,
            type=DataType.UINT16,
            values=((0, "off"), (1, "auto"), (2, "manual")),
            **common,
        ),
        Point(name="relay", table=Table.COIL, address=0, type=DataType.BOOL, **common),
        Point(name="alarm", table=Table.HOLDING, address=21, type=DataType.UINT16, bit=3, **common),
        Point(
            name="serial", table=Table.HOLDING, address=30, type=DataType.STRING, length=8, **common
        ),
    )
    for device in contract.devices[:80]:
        assert device == Device(
            name=device.name,
            host="gw-a",
            unit=device.unit,
            interval=1.0,
            points=expected,
            max_gap=10,
            write_multiple=False,
            write_rate=None,
        )
    # the YAML 1.1 boolean `off` stays the label the user wrote
    assert contract.devices[0].point("mode").value_map[0] == "off"  # type: ignore[union-attr]


def test_contract_overrides(contract: BridgeConfig) -> None:
    boiler = contract.devices[-1]
    assert (boiler.name, boiler.host, boiler.unit, boiler.interval) == ("boiler", "gw-b", 7, 0.25)
    assert boiler.max_gap == 2  # device overrides host (4)
    assert boiler.write_multiple is True  # from host gw-b
    assert boiler.write_rate == 0.5  # 30/m
    names = [p.name for p in boiler.points]
    # `mode` replaced in place, extra points appended
    assert names == [
        "voltage",
        "energy",
        "mode",
        "relay",
        "alarm",
        "serial",
        "setpoint",
        "pump",
        "flag",
    ]
    voltage = boiler.point("voltage")
    assert voltage is not None
    assert voltage.byte_order is Order.LITTLE  # device overrides template (big)
    assert voltage.word_order is Order.LITTLE  # template
    assert voltage.interval == 0.25  # device interval
    mode = boiler.point("mode")
    assert mode == Point(
        name="mode",
        table=Table.HOLDING,
        address=20,
        type=DataType.UINT16,
        interval=0.25,
        byte_order=Order.LITTLE,
        word_order=Order.LITTLE,
        values=((0, "off"), (1, "on"), (2, "yes")),
        writable=True,
        write_table=Table.HOLDING,
        write_address=20,
    )
    setpoint = boiler.point("setpoint")
    assert setpoint == Point(
        name="setpoint",
        table=Table.HOLDING,
        address=40,
        type=DataType.INT16,
        interval=5.0,  # point overrides device
        byte_order=Order.LITTLE,
        word_order=Order.BIG,  # point overrides device/template
        scale=0.1,
        writable=True,
        minimum=5.0,
        maximum=80.0,
        write_table=Table.HOLDING,
        write_address=40,
    )
    pump = boiler.point("pump")
    assert pump is not None
    assert (pump.table, pump.type, pump.write_table, pump.write_address) == (
        Table.DISCRETE,
        DataType.BOOL,
        Table.COIL,
        8,
    )
    flag = boiler.point("flag")
    assert flag is not None
    assert (flag.bit, flag.mask_write, flag.write_table) == (15, True, Table.HOLDING)


def test_contract_env_default_overridden() -> None:
    env = {"MQTT_PASSWORD": "pw", "MQTT_USER": "alice"}
    config = load_config(CONFIGS / "good" / "contract.yaml", env=env)
    assert (config.mqtt.username, config.mqtt.password) == ("alice", "pw")


def test_contract_unset_password_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "good" / "contract.yaml", env={})
    [problem] = info.value.problems
    assert problem.path == "mqtt.password"
    assert (problem.line, problem.column) == (10, 13)
    assert "'MQTT_PASSWORD' is not set" in problem.message


@pytest.mark.parametrize("env", [{}, {"MQTT_PASSWORD": "x"}])
def test_example_config_loads(env: dict[str, str]) -> None:
    config = load_config(ROOT / "config.example.yaml", env=env)
    assert config.devices
    assert config.mqtt.password == (env.get("MQTT_PASSWORD") or None)


def test_example_config_documents_every_key() -> None:
    from bridge import config as cfg
    from bridge.config_points import POINT_YAML_KEYS

    text = (ROOT / "config.example.yaml").read_text()
    keys = {
        *cfg._ROOT_KEYS,
        *cfg._MQTT_KEYS,
        *cfg._HOMEASSISTANT_KEYS,
        *cfg._METRICS_KEYS,
        *cfg._TLS_KEYS,
        *cfg._HOST_KEYS,
        *cfg._KEEPALIVE_KEYS,
        *cfg._TEMPLATE_KEYS,
        *cfg._DEVICE_KEYS,
        *POINT_YAML_KEYS,
    }
    missing = sorted(k for k in keys if f"{k}:" not in text)
    assert not missing


def test_example_config_uses_environment_when_set() -> None:
    env = {"MQTT_USERNAME": "u", "MQTT_PASSWORD": "p:w#1"}
    config = load_config(ROOT / "config.example.yaml", env=env)
    assert (config.mqtt.username, config.mqtt.password) == ("u", "p:w#1")
    assert config.mqtt.tls is None  # shown commented out: a copy works with a plain broker


def test_load_config_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "from-os")
    config = load_config(CONFIGS / "good" / "contract.yaml")
    assert config.mqtt.password == "from-os"


# --------------------------------------------------------------------------
# bad configs: every expected line appears, and nothing else is reported


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config(path: Path) -> None:
    expected = [
        line
        for line in path.with_suffix(".expected").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    got = [str(p) for p in info.value.problems]
    for line in expected:
        assert any(line in g for g in got), f"{line!r} not in:\n" + "\n".join(got)
    assert len(got) == len(expected), "\n".join(got)


def test_bad_configs_present() -> None:
    assert len(BAD) >= 15
    for path in BAD:
        assert path.with_suffix(".expected").exists(), path


# --------------------------------------------------------------------------
# messages


def test_problem_str() -> None:
    p = Problem("config.yaml", 12, 5, "devices[2].points[5].type", "unknown type 'flaot32'")
    assert str(p) == "config.yaml:12:5: devices[2].points[5].type: unknown type 'flaot32'"
    assert str(Problem("c.yaml", 3, None, "", "bad")) == "c.yaml:3: bad"
    assert str(Problem("c.yaml", None, None, "", "cannot read")) == "c.yaml: cannot read"
    err = ConfigError([p, Problem("c.yaml", None, None, "x", "y")])
    assert str(err).splitlines() == [str(p), "c.yaml: x: y"]


def test_did_you_mean_type_with_position() -> None:
    text = one_device("[{name: a, table: holding, address: 0, type: flaot32}]")
    assert problems(text) == [
        "c.yaml:8:58: devices[0].points[0].type: unknown type 'flaot32' (did you mean 'float32'?)"
    ]


def test_did_you_mean_keys() -> None:
    text = MINIMAL.replace("version: 1", "version: 1\nread_onyl: true\nhealth: 5s")
    assert problems(text) == [
        "c.yaml:2:1: read_onyl: unknown key 'read_onyl' (did you mean 'read_only'?)",
        "c.yaml:3:1: health: unknown key 'health' (did you mean 'health_interval'?)",
    ]


def test_unknown_key_far_from_anything_has_no_suggestion() -> None:
    [msg] = problems(MINIMAL + "zzzzqqq: 1\n")
    assert msg == "c.yaml:10:1: zzzzqqq: unknown key 'zzzzqqq'"


def test_all_problems_reported_and_other_devices_still_checked() -> None:
    text = """\
version: 1
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - {name: a, host: nope, unit: 1, points: [{name: p, table: holding, address: 0, type: u16}]}
  - {name: b, host: gw, unit: 300, points: [{name: p, table: coil, address: 0}]}
  - {name: c, host: gw, unit: 3, points: [{name: p, table: holding, address: -1, type: int16}]}
  - {name: ok, host: gw, unit: 4, points: [{name: p, table: coil, address: 0}]}
"""
    got = problems(text)
    assert [g.split(": ")[1] for g in got] == [
        "devices[0].host",
        "devices[0].points[0].type",
        "devices[1].unit",
        "devices[2].points[0].address",
    ]
    assert got[0].startswith("c.yaml:5:21:")


# --------------------------------------------------------------------------
# YAML 1.1 and text handling


def test_yaml11_words_stay_text() -> None:
    text = MINIMAL.replace("name: d", "name: no").replace(
        "{name: a, table: holding, address: 0, type: uint16}",
        "{name: off, table: holding, address: 0, type: uint16, unit: on,"
        " values: {0: off, 1: on, 2: yes, 3: No, 4: 5, 5: 1.50, 6: null_ish, 0x10: hex}}",
    )
    config = parse_config(text, env={})
    device = config.devices[0]
    assert device.name == "no"
    point = device.points[0]
    assert (point.name, point.unit) == ("off", "on")
    assert point.values == (
        (0, "off"),
        (1, "on"),
        (2, "yes"),
        (3, "No"),
        (4, "5"),  # numeric labels become the text written
        (5, "1.50"),
        (6, "null_ish"),
        (16, "hex"),
    )


def test_booleans_accept_yaml11_words() -> None:
    for word, expected in [("on", True), ("Yes", True), ("off", False), ("FALSE", False)]:
        config = parse_config(MINIMAL + f"read_only: {word}\n", env={})
        assert config.read_only is expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('  port: "1883"', "mqtt.port: expected an integer, got the quoted text '1883'"),
        ("  port: on", "mqtt.port: expected an integer, got 'on'"),
        ("  retain: 1", "mqtt.retain: expected true or false, got '1'"),
        ("  port: 0x1F4x", "mqtt.port: expected an integer, got '0x1F4x'"),
        ("  port: 010", "ambiguous number '010': write 10, or 0o10 for octal"),
        ("  qos: 3", "mqtt.qos: must be between 0 and 2, got 3"),
        ("  output: JSON", "unknown output 'JSON' (did you mean 'json'?)"),
        ("  protocol: 4", "unknown protocol '4' (expected 5 or 3.1.1)"),
        ("  base_topic: a/+/b", "must not contain '+'"),
        ("  client_id: {x}", "expected text, got a mapping (quote text that starts with '{')"),
    ],
)
def test_mqtt_field_errors(line: str, message: str) -> None:
    [got] = problems(MINIMAL + "mqtt:\n" + line + "\n")
    assert message in got
    assert got.startswith("c.yaml:11:")


def test_numbers_from_environment_may_be_quoted() -> None:
    text = MINIMAL + 'mqtt:\n  port: "${PORT:-1884}"\n  qos: ${QOS}\n'
    config = parse_config(text, env={"QOS": "2"})
    assert (config.mqtt.port, config.mqtt.qos) == (1884, 2)


def test_mqtt_defaults_and_protocol_5() -> None:
    config = parse_config(MINIMAL, env={})
    assert config.mqtt == Mqtt()
    assert parse_config(MINIMAL + "mqtt: {protocol: 5}\n", env={}).mqtt.protocol == 5


def test_tls_shorthands() -> None:
    assert parse_config(MINIMAL + "mqtt: {tls: true}\n", env={}).mqtt.tls == Tls()
    assert parse_config(MINIMAL + "mqtt: {tls: false}\n", env={}).mqtt.tls is None
    assert parse_config(MINIMAL + "mqtt: {tls: {}}\n", env={}).mqtt.tls == Tls()


def test_empty_username_password_mean_none() -> None:
    text = MINIMAL + "mqtt: {username: '${U:-}', password: ''}\n"
    config = parse_config(text, env={"U": ""})
    assert (config.mqtt.username, config.mqtt.password) == (None, None)


# --------------------------------------------------------------------------
# environment substitution


def test_env_substitution_in_any_string() -> None:
    # inside a flow mapping `{...}` a `${...}` value needs quotes (YAML syntax)
    text = MINIMAL.replace("address: 10.0.0.1", "address: '${GW}'").replace(
        "name: d", "name: ${SITE:-plant}-d"
    )
    config = parse_config(text, env={"GW": "192.168.0.9"})
    assert config.hosts[0].link == TcpLink(address="192.168.0.9")
    assert config.devices[0].name == "plant-d"


def test_env_password_with_yaml_special_characters() -> None:
    text = MINIMAL + "mqtt:\n  password: ${PW}\n"
    config = parse_config(text, env={"PW": "a: b # c ${D}"})
    assert config.mqtt.password == "a: b # c ${D}"


def test_env_escape_and_defaults() -> None:
    text = MINIMAL + "mqtt:\n  password: pre$${X}post${E:-dflt}${F:-}\n"
    config = parse_config(text, env={"E": ""})  # empty counts as unset for :-
    assert config.mqtt.password == "pre${X}postdflt"


def test_env_unset_names_variable_and_path() -> None:
    [msg] = problems(MINIMAL + "mqtt:\n  password: ${SECRET_PW}\n")
    assert msg.startswith(
        "c.yaml:11:13: mqtt.password: environment variable 'SECRET_PW' is not set"
    )


def test_env_substitution_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_GW", "1.2.3.4")
    config = parse_config(MINIMAL.replace("10.0.0.1", '"${BRIDGE_TEST_GW}"'))
    assert config.hosts[0].link == TcpLink(address="1.2.3.4")


# --------------------------------------------------------------------------
# structure


def test_anchors_merge_keys_and_x_keys() -> None:
    text = """\
version: 1
x-common: &common {table: holding, type: uint16}
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - name: d
    host: gw
    unit: 1
    points:
      - {<<: *common, name: a, address: 0}
      - {<<: *common, name: b, address: 1, type: int16}
"""
    points = parse_config(text, env={}).devices[0].points
    assert [(p.name, p.table, p.address, p.type) for p in points] == [
        ("a", Table.HOLDING, 0, DataType.UINT16),
        ("b", Table.HOLDING, 1, DataType.INT16),
    ]


def test_recursive_merge_is_reported() -> None:
    text = one_device("[&p {<<: *p, name: a, table: coil, address: 0}]")
    assert problems(text) == [
        "c.yaml:8:14: devices[0].points[0]: '<<' merges a mapping into itself"
    ]


def test_device_defaults_and_write_resolution() -> None:
    text = one_device(
        "[{name: c, table: coil, address: 5, writable: true},"
        " {name: h, table: holding, address: 7, type: float32, writable: true}]"
    )
    device = parse_config(text, env={}).devices[0]
    assert device.interval == 1.0
    assert device.write_rate is None
    c, h = device.points
    assert (c.type, c.write_table, c.write_address) == (DataType.BOOL, Table.COIL, 5)
    assert (h.write_table, h.write_address) == (Table.HOLDING, 7)


def test_host_framer() -> None:
    assert parse_config(MINIMAL, env={}).hosts[0].framer is Framer.TCP
    for word, framer in (("tcp", Framer.TCP), ("rtu", Framer.RTU)):
        text = MINIMAL.replace("address: 10.0.0.1", f"address: 10.0.0.1, framer: {word}")
        assert parse_config(text, env={}).hosts[0].framer is framer


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("RTU", "hosts[0].framer: unknown framer 'RTU' (did you mean 'rtu'?)"),
        ("rtuu", "hosts[0].framer: unknown framer 'rtuu' (did you mean 'rtu'?)"),
        ("ascii", "hosts[0].framer: unknown framer 'ascii' (expected one of: tcp, rtu)"),
    ],
)
def test_host_framer_errors(word: str, message: str) -> None:
    text = MINIMAL.replace("address: 10.0.0.1", f"address: 10.0.0.1, framer: {word}")
    assert problems(text) == [f"c.yaml:3:43: {message}"]


def test_units_list_and_single_unit_name_without_placeholder() -> None:
    text = MINIMAL.replace("name: d", "name: 'dev{unit}'").replace(
        "unit: 1", "units: [1, 5, 7-9, '12']"
    )
    devices = parse_config(text, env={}).devices
    assert [(d.name, d.unit) for d in devices] == [
        ("dev1", 1),
        ("dev5", 5),
        ("dev7", 7),
        ("dev8", 8),
        ("dev9", 9),
        ("dev12", 12),
    ]
    assert devices[0].points is devices[1].points  # resolved once, shared
    single = parse_config(MINIMAL.replace("unit: 1", "units: [0]"), env={}).devices
    assert [(d.name, d.unit) for d in single] == [("d", 0)]


def test_write_rate_forms() -> None:
    for spec, rate in [("10/s", 10.0), ("30/m", 0.5), ("7200/h", 2.0), ("4", 4.0)]:
        text = MINIMAL.replace("unit: 1", f"unit: 1\n    write_rate: {spec}")
        assert parse_config(text, env={}).devices[0].write_rate == rate


def test_point_end_within_address_space() -> None:
    ok = one_device("[{name: a, table: holding, address: 65534, type: uint32}]")
    assert parse_config(ok, env={}).devices[0].points[0].end == 65536
    bad = one_device("[{name: a, table: holding, address: 65535, type: float64}]")
    [msg] = problems(bad)
    assert "the point ends at 65538, past 65535" in msg


def test_values_on_bool_points() -> None:
    text = one_device("[{name: a, table: coil, address: 0, values: {0: closed, 1: open}}]")
    assert parse_config(text, env={}).devices[0].points[0].values == ((0, "closed"), (1, "open"))
    [msg] = problems(one_device("[{name: a, table: coil, address: 0, values: {2: x}}]"))
    assert "raw value 2 does not fit a bool (0 or 1)" in msg


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    [p] = info.value.problems
    assert p.file.endswith("missing.yaml")
    assert "cannot read file" in p.message
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"version: 1\nhosts: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [p] = info.value.problems
    assert p.line == 2
    assert "UTF-8" in p.message


def test_yaml_syntax_error_position() -> None:
    [msg] = problems("version: 1\nhosts: [\n  {name: gw\n")
    assert msg.startswith("c.yaml:4:1: YAML syntax error:")
    [msg] = problems("a: 1\n---\nb: 2\n")
    assert msg == (
        "c.yaml:2:1: YAML syntax error:"
        " expected a single document in the stream, but found another document"
    )


# --------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (" 2 s ", 2.0),
        (".5s", 0.5),
        (3, 3.0),
        (0.1, 0.1),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0s", "-1s", "1d", "s", "", "1e999", "nan", "inf", True, -2])
def test_parse_duration_rejects(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_rate() -> None:
    assert parse_rate("10/s") == 10.0
    assert parse_rate("30/m") == 0.5
    assert parse_rate(2) == 2.0
    for bad in ("0/s", "10/d", "fast", -1):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_parse_units() -> None:
    assert parse_units(3) == [3]
    assert parse_units("1-80") == list(range(1, 81))
    assert parse_units([1, 5, "7-9"]) == [1, 5, 7, 8, 9]
    assert parse_units("1,5, 7-9") == [1, 5, 7, 8, 9]
    assert parse_units([0, 255]) == [0, 255]
    with pytest.raises(ValueError, match="unit 5 is listed more than once"):
        parse_units([1, "3-6", 5])
    for bad in (256, -1, "9-2", "a", "1-300", [], [True], ["1-99999999"]):
        with pytest.raises(ValueError):
            parse_units(bad)


# --------------------------------------------------------------------------
# fuzzing: nothing but ConfigError (or a config) ever comes out


def _check_only_config_error(text: str) -> None:
    try:
        config = parse_config(text, source="fuzz.yaml", env={"SET": "1"})
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert "internal error" not in p.message, p
            assert p.file == "fuzz.yaml"
            str(p)
    else:
        assert isinstance(config, BridgeConfig)


YAML_TOKENS = [
    "version: 1\n", "hosts:\n", "devices:\n", "  - ", "{", "}", "[", "]", ", ", ": ", "\n",
    "  ", "name: a", "host: gw", "address: 0", "table: coil", "type: uint16", "unit: 1",
    "units: 1-3", "points:", "values: {0: off}", "&a ", "*a", "<<: ", "!!str ", "!!int ",
    "${SET}", "${UNSET}", "$${", "'", '"', "#", "~", "null", "off", "0x10", "1e999",
    "-", "?", "|\n", ">\n", "%YAML 1.1\n", "---\n", "\t", "\x00", "\ufeff", "é",
]  # fmt: skip

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1-80", "250ms", "10/s", "off", "${SET}", "${X", "float32", "coil"]),
)
yaml_keys = st.one_of(
    st.sampled_from(
        [
            "version", "mqtt", "hosts", "devices", "templates", "name", "host", "unit",
            "units", "points", "table", "address", "type", "values", "bit", "length",
            "writable", "template", "tls", "keepalive", "<<", "interval", "write_table",
        ]
    ),
    st.text(max_size=8),
)  # fmt: skip
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(yaml_keys, inner, max_size=5),
    max_leaves=25,
)

SMALL_VALID: dict[str, Any] = {
    "version": 1,
    "mqtt": {"host": "h", "tls": {"ca_file": str(CONFIGS / "good" / "tls" / "ca.pem")}},
    "hosts": [{"name": "gw", "address": "a", "keepalive": {"idle": 5}}],
    "templates": {
        "t": {
            "byte_order": "big",
            "points": [
                {"name": "v", "table": "input", "address": 0, "type": "float32"},
                {"name": "m", "table": "holding", "address": 5, "type": "uint16",
                 "values": {0: "a"}},
            ],
        }
    },
    "devices": [
        {"name": "m{unit}", "host": "gw", "units": "1-3", "template": "t", "interval": "1s"},
        {
            "name": "x",
            "host": "gw",
            "unit": 9,
            "write_rate": "5/s",
            "points": [
                {"name": "b", "table": "holding", "address": 3, "type": "uint16", "bit": 2,
                 "writable": True, "mask_write": True},
                {"name": "s", "table": "holding", "address": 9, "type": "string", "length": 2},
            ],
        },
    ],
}  # fmt: skip


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


SMALL_PATHS = _paths(SMALL_VALID)


def test_small_valid_document_loads() -> None:
    config = parse_config(yaml.safe_dump(SMALL_VALID), env={})
    assert [d.name for d in config.devices] == ["m1", "m2", "m3", "x"]


FUZZ = settings(max_examples=examples(300))
# Each example of these reads a whole configuration (the example one: ~150 ms).
FUZZ_WHOLE = settings(max_examples=examples(60))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    _check_only_config_error(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=60))
def test_fuzz_yaml_token_soup(tokens: list[str]) -> None:
    _check_only_config_error("".join(tokens))


@FUZZ
@given(yaml_values)
def test_fuzz_yaml_documents(doc: Any) -> None:
    _check_only_config_error(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ_WHOLE
@given(st.sampled_from(SMALL_PATHS), yaml_values, st.booleans())
def test_fuzz_mutated_valid_document(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    doc = copy.deepcopy(SMALL_VALID)
    if not path:
        doc = value
    else:
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if delete:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    _check_only_config_error(yaml.safe_dump(doc, allow_unicode=True))


EXAMPLE_TEXT = (ROOT / "config.example.yaml").read_text()
edits = st.tuples(
    st.integers(0, len(EXAMPLE_TEXT)),
    st.integers(0, 5),
    st.sampled_from([*YAML_TOKENS, "x", "0", "-1", ":", "gw-a", "off"]),
)


@FUZZ_WHOLE
@given(st.lists(edits, min_size=1, max_size=4))
def test_fuzz_edited_example(changes: list[tuple[int, int, str]]) -> None:
    text = EXAMPLE_TEXT
    for pos, cut, insert in changes:
        text = text[:pos] + insert + text[pos + cut :]
    _check_only_config_error(text)


def test_null_values_count_as_absent() -> None:
    text = one_device(
        "[{name: a, table: holding, address: 0, type: },"
        " {name: b, table: holding, address: 1, type: string, length: },"
        " {name: c, table: coil, address: 2, type: , unit: }]"
    )
    assert problems(text) == [
        "c.yaml:8:14: devices[0].points[0]: missing required key 'type' (for the holding table)",
        "c.yaml:8:61: devices[0].points[1]: missing required key 'length'"
        " (registers of the string)",
    ]


def test_deep_nesting_is_a_config_error() -> None:
    _check_only_config_error("[" * 5000)
    _check_only_config_error("a: " + "[" * 900 + "]" * 900)


# --------------------------------------------------------------------------
# what `check` must catch because `run` would certainly fail


def test_long_names_are_refused_with_their_length() -> None:
    text = MINIMAL.replace("name: d", "name: " + "d" * 70_000, 1)
    with pytest.raises(ConfigError, match=r"is 70000 characters long \(at most 128\)"):
        parse_config(text, env={})


def test_tls_files_are_loaded_by_check(tmp_path: Path) -> None:
    tls = CONFIGS / "good" / "tls"
    config = tmp_path / "bridge.yaml"
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    config.write_text(
        MINIMAL + f"mqtt: {{tls: {{ca_file: missing.pem, cert_file: {tls / 'client.pem'}, "
        "key_file: not-a-cert.pem}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    got = "\n".join(str(p) for p in info.value.problems)
    assert f"{tmp_path / 'missing.pem'} does not exist" in got  # the path, resolved
    assert "mqtt.tls.cert_file" in got and "not usable for TLS" in got


def test_relative_tls_files_are_read_next_to_the_config(tmp_path: Path) -> None:
    import shutil

    shutil.copy(CONFIGS / "good" / "tls" / "ca.pem", tmp_path / "ca.pem")
    config = tmp_path / "bridge.yaml"
    config.write_text(MINIMAL + "mqtt: {tls: {ca_file: ca.pem}}\n")
    assert load_config(config, env={}).mqtt.tls == Tls(ca_file=str(tmp_path / "ca.pem"))


def test_serial_host() -> None:
    text = MINIMAL.replace(
        "  - {name: gw, address: 10.0.0.1}",
        "  - name: gw\n    serial: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0\n"
        "    baudrate: 19200\n    parity: E\n    stopbits: 1\n    bytesize: 8\n"
        "    timeout: 250ms\n    pause: 5ms",
    )
    host = parse_config(text, env={}).hosts[0]
    assert host.link == SerialLink(
        port="/dev/serial/by-id/usb-FTDI_FT232R-if00-port0",
        baudrate=19200,
        parity=Parity.EVEN,
        stopbits=1,
        bytesize=8,
    )
    assert (host.timeout, host.pause, host.rtu, host.bus_baudrate) == (0.25, 0.005, True, 19200)
    defaults = parse_config(MINIMAL.replace("address: 10.0.0.1", "serial: /dev/ttyUSB0"), env={})
    assert defaults.hosts[0].link == SerialLink("/dev/ttyUSB0", 9600, Parity.NONE, 1, 8)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: p.write_text("x"), "a regular file, not a serial device"),
        (lambda p: p.mkdir(), "a directory, not a serial device"),
        (os.mkfifo, "a FIFO (named pipe), not a serial device"),
        (None, "a memory device (like /dev/null or /dev/zero), not a serial device"),
    ],
)
def test_a_serial_path_that_exists_must_be_a_serial_device(
    tmp_path: Path, make: Any, kind: str
) -> None:
    """Issue 16, item 7: a file, a folder, /dev/null, /dev/zero or a FIFO passed check,
    and the bridge then blamed "another program using it"."""
    port = tmp_path / "ttyUSB0"
    if make is None:
        port = Path("/dev/zero")
    else:
        make(port)
    text = MINIMAL.replace("address: 10.0.0.1", f"serial: {port}")
    [problem] = problems(text)
    assert problem.startswith("c.yaml:3:24: hosts[0].serial: '")
    assert problem.endswith(f"' is {kind}")


def test_a_serial_path_that_does_not_exist_is_no_problem(tmp_path: Path) -> None:
    """An adapter that is not plugged in yet: `check` warns, the bridge retries."""
    text = MINIMAL.replace("address: 10.0.0.1", f"serial: {tmp_path / 'ttyUSB9'}")
    assert parse_config(text, env={}).hosts[0].link.port == str(tmp_path / "ttyUSB9")


# --------------------------------------------------------------------------
# Home Assistant keys and the publishing policy


HA_CONFIG = """\
version: 1
homeassistant: {enabled: true, discovery_prefix: ha, status_topic: ha/status}
hosts:
  - {name: gw, address: 10.0.0.1}
templates:
  meter:
    manufacturer: Eastron
    model: SDM630
    heartbeat: 5m
    points:
      - {name: voltage, table: input, address: 0, type: float32, unit: V,
         device_class: voltage, state_class: measurement, deadband: 0.5}
devices:
  - {name: m1, host: gw, unit: 1, template: meter, area: Plant room}
  - {name: m2, host: gw, unit: 2, template: meter, model: SDM120, heartbeat: 30s}
  - name: boiler
    host: gw
    unit: 3
    points:
      - {name: setpoint, table: holding, address: 0, type: int16, writable: true,
         display_name: Flow setpoint, icon: "mdi:thermometer", entity_category: config,
         device_class: temperature, unit: °C}
      - {name: serial, table: holding, address: 1, type: string, length: 2,
         entity_category: diagnostic, homeassistant: false}
"""


def test_homeassistant_section_and_defaults() -> None:
    assert parse_config(MINIMAL, env={}).homeassistant == HomeAssistant(
        enabled=False, discovery_prefix="homeassistant", status_topic="homeassistant/status"
    )
    config = parse_config(HA_CONFIG, env={})
    assert config.homeassistant == HomeAssistant(True, "ha", "ha/status")


def test_device_info_from_template_and_overrides() -> None:
    m1, m2, boiler = parse_config(HA_CONFIG, env={}).devices
    assert (m1.manufacturer, m1.model, m1.area, m1.heartbeat) == (
        "Eastron",
        "SDM630",
        "Plant room",
        300.0,
    )
    assert (m2.manufacturer, m2.model, m2.area, m2.heartbeat) == ("Eastron", "SDM120", None, 30.0)
    assert (boiler.manufacturer, boiler.model, boiler.area, boiler.heartbeat) == (None,) * 4


def test_point_homeassistant_keys() -> None:
    m1, _, boiler = parse_config(HA_CONFIG, env={}).devices
    voltage = m1.points[0]
    assert (voltage.device_class, voltage.state_class, voltage.deadband) == (
        "voltage",
        StateClass.MEASUREMENT,
        0.5,
    )
    assert voltage.homeassistant is True
    setpoint, serial = boiler.points
    assert (setpoint.display_name, setpoint.icon, setpoint.entity_category) == (
        "Flow setpoint",
        "mdi:thermometer",
        EntityCategory.CONFIG,
    )
    assert serial.homeassistant is False
    assert serial.entity_category is EntityCategory.DIAGNOSTIC


def test_read_only_bridge_keeps_a_valid_config_valid() -> None:
    """read_only turns a switch into a binary_sensor (bridge.discovery), but a switch's
    device class and entity category stay valid config: a safety switch must not break it."""
    text = one_device(
        "[{name: r, table: coil, address: 0, writable: true, device_class: outlet,"
        " entity_category: config}]"
    )
    for flag in ("false", "true"):
        config = parse_config(text.replace("version: 1", f"version: 1\nread_only: {flag}"), env={})
        assert config.devices[0].points[0].device_class == "outlet"


@pytest.mark.parametrize(
    ("point", "message"),
    [
        # a case per platform: the device class must be one that platform takes
        ("{table: input, address: 0, type: uint16, device_class: door}", "to a sensor"),
        ("{table: discrete, address: 0, device_class: voltage}", "to a binary_sensor"),
        (
            "{table: holding, address: 0, type: uint16, writable: true, device_class: door}",
            "to a number",
        ),
        ("{table: coil, address: 0, writable: true, device_class: door}", "to a switch"),
        (
            "{table: holding, address: 0, type: uint16, values: {0: a}, writable: true,"
            " device_class: door}",
            "to a select",
        ),
        (
            "{table: holding, address: 0, type: string, length: 2, device_class: voltage}",
            "to a sensor (a read-only string)",
        ),
        (
            "{table: holding, address: 0, type: uint16, values: {0: a}, device_class: voltage}",
            "to a sensor (a read-only point with values); it takes: enum",
        ),
    ],
)
def test_device_class_must_fit_the_platform(point: str, message: str) -> None:
    [msg] = problems(one_device(f"[{{name: p, {point[1:]}]"))
    assert "does not apply " + message in msg


@pytest.mark.parametrize(
    "point",
    [
        "{table: holding, address: 0, type: uint16, device_class: power, unit: kW,"
        " state_class: measurement, deadband: 10}",
        "{table: holding, address: 0, type: uint32, device_class: energy, unit: kWh,"
        " state_class: total_increasing}",
        "{table: holding, address: 0, type: uint16, device_class: power_factor}",
        "{table: holding, address: 0, type: uint16, device_class: monetary, unit: EUR,"
        " state_class: total}",
        "{table: holding, address: 0, type: string, length: 4, device_class: timestamp}",
        "{table: discrete, address: 0, device_class: door, entity_category: diagnostic}",
        "{table: coil, address: 0, writable: true, device_class: outlet, entity_category: config}",
        "{table: holding, address: 0, type: uint16, values: {0: a}, device_class: enum}",
        "{table: holding, address: 0, type: float32, deadband: 0}",
    ],
)
def test_homeassistant_keys_accepted(point: str) -> None:
    parse_config(one_device(f"[{{name: p, {point[1:]}]"), env={})


@pytest.mark.parametrize(
    ("listen", "address", "port", "loopback"),
    [
        ("127.0.0.1:9108", "127.0.0.1", 9108, True),
        ("9200", "127.0.0.1", 9200, True),  # a bare port: loopback
        ("'[::1]:9108'", "::1", 9108, True),
        ("0.0.0.0:9108", "0.0.0.0", 9108, False),  # the user's explicit choice
        ("'${METRICS}'", "192.0.2.7", 9100, False),
    ],
)
def test_metrics_listen(listen: str, address: str, port: int, loopback: bool) -> None:
    assert parse_config(MINIMAL, env={}).metrics is None  # off unless configured
    text = MINIMAL + f"metrics: {{listen: {listen}}}\n"
    metrics = parse_config(text, env={"METRICS": "192.0.2.7:9100"}).metrics
    assert metrics is not None
    assert (metrics.address, metrics.port, metrics.loopback) == (address, port, loopback)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("'::1:9108'", "write an IPv6 address in brackets"),
        ("localhost", "expected ADDRESS:PORT"),
        ("'a b:9108'", "'a b' is not an IP address or a host name"),
        ("0", "port 0 is outside 1..65535"),
    ],
)
def test_metrics_listen_errors(listen: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + f"metrics: {{listen: {listen}}}\n", env={})
    [problem] = info.value.problems
    assert problem.path == "metrics.listen" and problem.line is not None
    assert message in problem.message


def test_secrets_are_the_password_and_a_user_name_from_the_environment() -> None:
    text = MINIMAL + "mqtt: {username: '${MQTT_USER}', password: '${MQTT_PASSWORD}'}\n"
    config = parse_config(text, env={"MQTT_USER": "svc-7f3a", "MQTT_PASSWORD": "p:w#1"})
    assert set(config.secrets) == {"svc-7f3a", "p:w#1"}
    assert "svc-7f3a" not in repr(config) and "p:w#1" not in repr(config)
    literal = parse_config(MINIMAL + "mqtt: {username: bridge, password: pw}\n", env={})
    assert literal.secrets == ("pw",)  # a user name written in the file is no secret


def test_config_problems_never_quote_a_secret() -> None:
    # The password's variable reused where a number belongs: the message hides its value.
    text = MINIMAL.replace("address: 10.0.0.1", "address: 10.0.0.1, port: '${PW}'")
    text += "mqtt: {password: '${PW}'}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={"PW": "hunter2hunter2"})
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)

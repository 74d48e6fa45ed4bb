"""YAML configuration file -> validated `BridgeConfig`.

The loader works on the YAML *node tree* (``yaml.compose``), not on constructed
Python objects, for two reasons:

* every node keeps its line:column, so each problem points at the exact spot;
* every scalar keeps the text the user wrote. PyYAML follows YAML 1.1, where an
  unquoted ``off`` is the boolean False; read from the node it stays ``"off"``
  wherever text is expected (names, enum labels, passwords).

Every problem found is collected, and `ConfigError` lists them all at once.
``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in every
scalar value after YAML parsing (so ``:`` or ``#`` in a secret needs no quoting);
``$${`` stands for a literal ``${``.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bridge import hass
from bridge.codec import int_range
from bridge.discovery import Owner, TooLong, id_problems
from bridge.errors import ConfigError, Problem, serial_device_problem
from bridge.logs import redact
from bridge.model import (
    POINT_KEYS,
    BridgeConfig,
    DataType,
    Device,
    EntityCategory,
    Framer,
    HomeAssistant,
    Host,
    Metrics,
    Mqtt,
    Only,
    Order,
    Output,
    Parity,
    Point,
    PointKey,
    Read,
    SerialLink,
    Table,
    TcpLink,
    Tls,
)
from bridge.tls import TlsSetupError, tls_context
from bridge.topics import (
    RESERVED_DEVICE_NAMES,
    RESERVED_POINT_NAMES,
    base_topic_problem,
    level_problem,
    name_problem,
    text_problem,
)

__all__ = [
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_rate",
    "parse_units",
]

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

CONFIG_VERSION = 1
DEFAULT_INTERVAL = 1.0  # seconds, when a device gives no `interval`

# Names that cannot be an MQTT topic level of a device or a point.

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TRUE = frozenset({"true", "yes", "on"})
_FALSE = frozenset({"false", "no", "off"})

# Allowed keys per section (did-you-mean suggestions come from these).
# fmt: off
_ROOT_KEYS = (
    "version", "read_only", "write_timeout", "health_interval", "mqtt", "homeassistant", "metrics",
    "hosts", "templates", "devices",
)
_METRICS_KEYS = (
    "listen", "shard_ports",
)
_HOMEASSISTANT_KEYS = (
    "enabled", "discovery_prefix", "status_topic",
)
_MQTT_KEYS = (
    "host", "port", "client_id", "username", "password", "base_topic", "qos", "retain",
    "output", "keepalive", "protocol", "tls", "max_packet_size",
)
_TLS_KEYS = (
    "ca_file", "cert_file", "key_file", "insecure",
)
_HOST_KEYS = (
    "name", "address", "port", "serial", "framer", "timeout", "pause", "max_gap",
    "write_multiple", "baudrate", "parity", "stopbits", "bytesize", "keepalive",
    "allow_zero_tid", "spread",
)
_KEEPALIVE_KEYS = (
    "idle", "interval", "count",
)
_DEVICE_INFO_KEYS = (  # devices and templates
    "manufacturer", "model", "area", "heartbeat",
)
_TEMPLATE_KEYS = (
    "byte_order", "word_order", *_DEVICE_INFO_KEYS, "points",
)
_DEVICE_KEYS = (
    "name", "host", "unit", "units", "template", "interval", "max_gap", "write_multiple",
    "write_rate", "byte_order", "word_order", *_DEVICE_INFO_KEYS, "points",
)
# fmt: on
_POINT_KEYS = tuple(key.yaml for _, key in POINT_KEYS)  # declared on `model.Point`
_PROTOCOLS = {"5": 5, "3.1.1": 4}

_BIT_TYPES = (DataType.INT16, DataType.UINT16, DataType.BOOL)
_ADDRESS_SPACE = 65536
_MIN_PACKET = 32  # bytes: below this not even `online` on bridge/state would fit
_MIN_BAUDRATE, _MAX_BAUDRATE = 50, 4_000_000
_MAX_PACKET = 268_435_460  # MQTT's largest packet
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# --------------------------------------------------------------------------
# Public entry points


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read and validate a configuration file; raise `ConfigError` listing every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [Problem(source, None, None, "", f"cannot read file: {reason}")]
        ) from None
    return config_from_bytes(data, source=source, env=env)


def config_from_bytes(
    data: bytes, *, source: str, env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate the bytes of a configuration file read by the caller (`source` names
    it in problems); raise `ConfigError` listing every problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"not valid UTF-8 (byte {exc.start})"
        raise ConfigError([Problem(source, line, None, "", msg)]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Validate configuration text; raise `ConfigError` listing every problem."""
    environ: Mapping[str, str] = os.environ if env is None else env
    reader = _Reader(source, environ)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            if exc.context.startswith("while"):
                started = exc.context_mark
                at = f" started at line {started.line + 1}" if started is not None else ""
                message += f" ({exc.context}{at})"
            else:  # "expected a single document in the stream" + "but found another document"
                message = f"{exc.context}, {exc.problem}"
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise ConfigError(
            [Problem(source, line, column, "", f"YAML syntax error: {message}")]
        ) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ConfigError([Problem(source, None, None, "", f"YAML syntax error: {exc}")]) from None
    try:
        config = reader.root(root)
    except RecursionError:
        reader.report(None, "", "nested too deeply")
        config = None
    except Exception as exc:  # the contract: nothing but ConfigError leaves the loader
        reader.report(None, "", f"internal error while checking the config: {exc!r}")
        config = None
    if config is None and not reader.problems:
        reader.report(None, "", "internal error: no configuration and no problem found")
    if reader.problems or config is None:
        # A problem elsewhere may quote a secret's value (a password reused as a port).
        raise ConfigError(
            [
                replace(p, message=redact(p.message, reader.secrets))
                for p in reader.sorted_problems()
            ]
        )
    return config


def parse_duration(text: str | float) -> float:
    """``250ms``, ``1s``, ``2m``, ``1h`` or a bare number of seconds -> seconds (> 0)."""
    return _duration(text, allow_zero=False)


def parse_rate(text: str | float) -> float:
    """``10/s``, ``30/m``, ``100/h`` or a bare number (per second) -> per second (> 0)."""
    if isinstance(text, bool):
        raise ValueError("expected a rate such as 10/s or 30/m")
    if isinstance(text, int | float):
        value = _finite(text)
        per = 1.0
    else:
        m = _RATE_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"invalid rate {_show(text)} (expected e.g. 10/s or 30/m)")
        value = _finite(float(m.group(1)))
        per = _SECONDS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError("rate must be greater than zero")
    return value / per


def parse_endpoint(
    text: str, *, default_address: str | None = None, default_port: int | None = None
) -> tuple[str, int]:
    """`ADDRESS:PORT` -> (address, port); an IPv6 address goes in brackets. Without a
    port, `default_port` (then `text` is the address); a bare port takes
    `default_address`. Raises ValueError saying what is wrong."""
    text = text.strip()
    example = "[::1]:9108" if default_port is None else "192.0.2.10:502"
    hint = f"expected ADDRESS:PORT, e.g. {example}"
    address, sep, port_text = text.rpartition(":")
    bare_ipv6 = text.count(":") > 1 and not text.startswith("[")
    if default_port is not None and (not sep or text.endswith("]") or bare_ipv6):
        address, port_text = text, str(default_port)  # an address alone (IPv6 included)
        if bare_ipv6:
            address = f"[{address}]"
    elif not sep and default_address is not None:
        address = default_address  # a bare port
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    elif ":" in address:
        raise ValueError(f"{_show(text)}: write an IPv6 address in brackets ({hint})")
    port = _parse_int(port_text)
    if not address or port is None:
        raise ValueError(f"{_show(text)}: {hint}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    why = _address_problem(address)
    if why is not None:
        raise ValueError(f"{_show(address)} {why}")
    return address, port


def parse_units(spec: int | str | Sequence[int | str]) -> list[int]:
    """Unit ids from ``3``, ``"1-80"``, ``"1,5,7-9"`` or ``[1, 5, "7-9"]``.

    Ids are 0..255; an id given twice is an error.
    """
    items: Sequence[int | str] = [spec] if isinstance(spec, int | str) else spec
    units: list[int] = []
    for item in items:
        units.extend(_unit_item(item))
    if not units:
        raise ValueError("no unit ids given")
    dup = _first_duplicate(units)
    if dup is not None:
        raise ValueError(f"unit {dup} is listed more than once")
    return units


# --------------------------------------------------------------------------
# Scalar parsing helpers (no nodes, no positions)

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_RATE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|m|h))?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_INT_RE = re.compile(r"[+-]?(?:0|[1-9][0-9_]*|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+)")
_LEADING_ZERO_RE = re.compile(r"[+-]?0[0-9_]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?")
_UNIT_RANGE_RE = re.compile(r"(\d{1,6})\s*-\s*(\d{1,6})")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _finite(value: float) -> float:
    try:
        result = float(value)
    except OverflowError:
        raise ValueError("number too large") from None
    if not math.isfinite(result):
        raise ValueError("number must be finite")
    return result


def _duration(value: object, *, allow_zero: bool) -> float:
    hint = "expected e.g. 250ms, 1s, 2m or 1h"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration ({hint})")
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"invalid duration {_show(value)} ({hint})")
        seconds = _finite(float(m.group(1)) * _SECONDS[m.group(2) or "s"])
    else:
        seconds = _finite(value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("duration must be greater than zero" if not allow_zero else "must be >= 0")
    return seconds


def _parse_int(text: str) -> int | None:
    t = text.strip()
    if _INT_RE.fullmatch(t) is None:
        return None
    try:
        return int(t, 0)
    except ValueError:
        return None


def _parse_float(text: str) -> float | None:
    t = text.strip()
    as_int = _parse_int(t)
    try:
        if as_int is not None:
            return _finite(as_int)
        if _FLOAT_RE.fullmatch(t) is None:
            return None
        return _finite(float(t))
    except ValueError:
        return None


def _unit_item(item: object) -> list[int]:
    hint = "expected a unit id 0..255 or a range such as 1-80"
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ValueError(f"invalid unit {_show(str(item))} ({hint})")
    parts = [item] if isinstance(item, int) else [p.strip() for p in item.split(",")]
    units: list[int] = []
    for part in parts:
        if isinstance(part, int):
            lo = hi = part
        elif part.isascii() and part.isdigit() and len(part) <= 6:
            lo = hi = int(part)
        elif (m := _UNIT_RANGE_RE.fullmatch(part)) is not None:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"range '{part}' runs backwards (write {hi}-{lo})")
        else:
            raise ValueError(f"invalid unit {_show(part)} ({hint})")
        for u in (lo, hi):
            if not 0 <= u <= 255:
                raise ValueError(f"unit id {u} is outside 0..255")
        units.extend(range(lo, hi + 1))
    return units


def _first_duplicate(values: Iterable[T]) -> T | None:
    seen: set[T] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _substitute(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; ``$${`` is a literal ``${``."""
    if "${" not in text:
        return text
    out: list[str] = []
    i = 0
    while (j := text.find("${", i)) != -1:
        if j > i and text[j - 1] == "$":
            out += [text[i : j - 1], "${"]
            i = j + 2
            continue
        end = text.find("}", j + 2)
        if end == -1:
            raise ValueError("unterminated '${' (write '$${' for a literal '${')")
        inner = text[j + 2 : end]
        name, sep, default = inner.partition(":-")
        if _VAR_NAME_RE.fullmatch(name) is None:
            raise ValueError(f"invalid variable reference {_show('${' + inner + '}')}")
        if "${" in default:
            raise ValueError(f"nested variable in the default of ${{{name}}} is not supported")
        value = env.get(name)
        if sep and not value:
            value = default
        elif value is None:
            raise ValueError(
                f"environment variable '{name}' is not set"
                f" (write ${{{name}:-default}} to give a default)"
            )
        out += [text[i:j], value]
        i = end + 1
    out.append(text[i:])
    return "".join(out)


def _show(value: str) -> str:
    """A value quoted for a message, shortened and with control characters escaped."""
    if len(value) > 60:
        value = value[:57] + "..."
    if value.isprintable() and "'" not in value:
        return f"'{value}'"
    return repr(value)


def _suggest(word: str, choices: Iterable[str]) -> str:
    options = list(choices)
    by_lower = {c.lower(): c for c in options}
    match = by_lower.get(word.lower())
    if match is None:
        close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
        match = close[0] if close else None
    if match is None and len(word) >= 3:  # a prefix: `health` for `health_interval`
        starts = [c for c in options if c.startswith(word)]
        match = starts[0] if len(starts) == 1 else None
    return f" (did you mean '{match}'?)" if match is not None else ""


def _level_problem(name: str, reserved: Collection[str]) -> str | None:
    """Why `name` cannot be one MQTT topic level, or None (rules in bridge.topics)."""
    return _topic_problem(name, level_problem(name, reserved))


def _topic_problem(text: str, why: str | None) -> str | None:
    """A phrase from bridge.topics as a message: after the quoted text, if any."""
    return why if why is None or not text else f"{_show(text)} {why}"


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _show(str(node.value))


# --------------------------------------------------------------------------
# Node reading


@dataclass
class _Fields:
    """A checked YAML mapping: key -> (key node, value node)."""

    node: MappingNode
    path: str
    items: dict[str, tuple[Node, Node]]

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        """The key is given with a non-null value (`key:` alone counts as absent)."""
        return self.value(key) is not None

    def key_node(self, key: str) -> Node:
        return self.items[key][0] if key in self.items else self.node

    def value(self, key: str) -> Node | None:
        """The value node, or None when the key is absent or its value is null."""
        pair = self.items.get(key)
        if pair is None or _is_null(pair[1]):
            return None
        return pair[1]


def _child(node: Node, key: str) -> Node:
    """The value node of `key` in a mapping node, else the node itself (for positions)."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return value_node  # type: ignore[no-any-return]
    return node


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.style is None


@dataclass(frozen=True)
class _PointSpec:
    """One point as written (template or device), checked on its own: the `Point`
    fields it gives. The device fills in the rest (`_resolve`)."""

    given: Mapping[str, Any]

    @property
    def name(self) -> str:
        name: str = self.given["name"]
        return name


@dataclass(frozen=True)
class _DeviceInfo:
    """The device keys a template can give too (None: not given)."""

    manufacturer: str | None = None
    model: str | None = None
    area: str | None = None
    heartbeat: float | None = None

    def over(self, t: _DeviceInfo) -> _DeviceInfo:
        """These values, the template's `t` where these give none."""
        return _DeviceInfo(
            manufacturer=t.manufacturer if self.manufacturer is None else self.manufacturer,
            model=t.model if self.model is None else self.model,
            area=t.area if self.area is None else self.area,
            heartbeat=t.heartbeat if self.heartbeat is None else self.heartbeat,
        )


@dataclass
class _Template:
    byte_order: Order | None
    word_order: Order | None
    points: list[_PointSpec] = field(default_factory=list)
    written_points: int = 0  # entries in the YAML list, valid or not
    info: _DeviceInfo = _DeviceInfo()


class _Reader:
    """Turns the node tree into a `BridgeConfig`, collecting problems on the way."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[Problem] = []
        self._seen: set[Problem] = set()
        self._pairs_cache: dict[int, list[tuple[Node, Node]]] = {}
        self._declared_hosts: set[str] = set()  # valid or not: no "unknown host" noise
        self.secrets: set[str] = set()  # values never shown (BridgeConfig.secrets)
        # Device name -> (its index in `devices`, its entry): where an id clash is shown.
        self.device_entries: dict[str, tuple[int, Node]] = {}
        # Relative file names (TLS) are read from the configuration file's folder.
        self.base_dir = "" if source.startswith("<") else os.path.dirname(os.path.abspath(source))

    # -- problems

    def report(self, node: Node | None, path: str, message: str) -> None:
        line = column = None
        mark = getattr(node, "start_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
        problem = Problem(self.source, line, column, path, message)
        if problem not in self._seen:
            self._seen.add(problem)
            self.problems.append(problem)

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: (p.line or 0, p.column or 0))

    # -- structure

    def mapping(
        self,
        node: Node,
        path: str,
        keys: Collection[str] | None,
        *,
        extra: Callable[[str], bool] | None = None,
    ) -> _Fields | None:
        """Check `node` is a mapping with known, unique, text keys."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping, got {_kind(node)}")
            return None
        items: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in self._pairs(node, path, frozenset()):
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, f"a key must be text, not {_kind(key_node)}")
                continue
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in items:
                self.report(key_node, sub, f"duplicate key '{key}'")
                continue
            if keys is not None and key not in keys and not (extra is not None and extra(key)):
                self.report(key_node, sub, f"unknown key {_show(key)}{_suggest(key, keys)}")
                continue
            items[key] = (key_node, value_node)
        return _Fields(node, path, items)

    def _pairs(
        self, node: MappingNode, path: str, active: frozenset[int]
    ) -> list[tuple[Node, Node]]:
        """Key/value pairs with YAML merge keys (``<<: *anchor``) applied."""
        cached = self._pairs_cache.get(id(node))
        if cached is not None:
            return cached
        explicit: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG):
                explicit.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for src in sources:
                if not isinstance(src, MappingNode):
                    self.report(src, path, "'<<' merges a mapping or a list of mappings")
                elif id(src) in active or src is node:
                    self.report(src, path, "'<<' merges a mapping into itself")
                else:
                    merged.extend(self._pairs(src, path, active | {id(node)}))
        taken = {str(k.value) for k, _ in explicit if isinstance(k, ScalarNode)}
        pairs: list[tuple[Node, Node]] = []
        for key_node, value_node in merged:
            name = str(key_node.value) if isinstance(key_node, ScalarNode) else None
            if name is not None:
                if name in taken:
                    continue  # explicit keys and earlier merges win
                taken.add(name)
            pairs.append((key_node, value_node))
        pairs.extend(explicit)
        self._pairs_cache[id(node)] = pairs
        return pairs

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"expected a list, got {_kind(node)}")
            return None
        return list(node.value)

    # -- fields

    def get(self, f: _Fields, key: str, conv: Callable[[Node, str], T | None]) -> T | None:
        """An optional value: None when absent, null or invalid (invalid is reported)."""
        node = f.value(key)
        return None if node is None else conv(node, f.sub(key))

    def req(self, f: _Fields, key: str, conv: Callable[[Node, str], T | None]) -> T | None:
        """A required value: None (and a problem) when absent, null or invalid."""
        node = f.value(key)
        if node is None:
            if key in f.items:
                self.report(f.key_node(key), f.sub(key), "a value is required")
            else:
                self.report(f.node, f.path, f"missing required key '{key}'")
            return None
        return conv(node, f.sub(key))

    # -- scalars

    def subst(self, node: ScalarNode, path: str) -> str | None:
        try:
            return _substitute(str(node.value), self.env)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None

    def text(self, node: Node, path: str) -> str | None:
        if not isinstance(node, ScalarNode):
            hint = ""
            if isinstance(node, MappingNode) and node.flow_style:
                hint = " (quote text that starts with '{')"
            self.report(node, path, f"expected text, got {_kind(node)}{hint}")
            return None
        return self.subst(node, path)

    def nonempty_text(self, node: Node, path: str) -> str | None:
        value = self.text(node, path)
        if value is not None and not value.strip():
            self.report(node, path, "must not be empty")
            return None
        return value

    def checked_text(
        self, node: Node, path: str, rule: Callable[[str], str | None] = text_problem
    ) -> str | None:
        """Non-empty text that passes `rule` (by default: it can travel in MQTT)."""
        value = self.nonempty_text(node, path)
        if value is None:
            return None
        why = rule(value)
        if why is not None:
            self.report(node, path, f"{_show(value)} {why}")
            return None
        return value

    def address(self, node: Node, path: str) -> str | None:
        """A host name or an IP address."""
        return self.checked_text(node, path, _address_problem)

    def serial_port(self, node: Node, path: str) -> str | None:
        """A serial port's path. One that exists must be a serial device (a file, a
        folder, a FIFO or /dev/null there is a mistake); one that does not exist is
        fine here (an adapter that is not plugged in yet: `check` warns)."""
        text = self.checked_text(node, path)
        if text is None:
            return None
        try:
            st = os.stat(text)
        except OSError:
            return text  # missing, or not ours to look at: the session says why at run time
        why = serial_device_problem(st.st_mode, st.st_rdev)
        if why is not None:
            self.report(node, path, f"{_show(text)} is {why}")
            return None
        return text

    def readable_file(self, node: Node, path: str) -> str | None:
        """The absolute path of an existing, readable file (relative to the config's folder)."""
        text = self.nonempty_text(node, path)
        if text is None:
            return None
        full = os.path.join(self.base_dir, os.path.expanduser(text))
        if not os.path.isfile(full):
            what = "is a folder, not a file" if os.path.isdir(full) else "does not exist"
            self.report(node, path, f"{full} {what}")
            return None
        if not os.access(full, os.R_OK):
            self.report(
                node,
                path,
                f"{full} is not readable by this user (uid {os.getuid()}): check its permissions",
            )
            return None
        return full

    def _typed_text(self, node: Node, path: str, what: str) -> str | None:
        """Scalar text for a number/boolean field; quoted literals are a type error."""
        if not isinstance(node, ScalarNode):
            self.report(node, path, f"expected {what}, got {_kind(node)}")
            return None
        if node.style is not None and "${" not in str(node.value):
            self.report(
                node, path, f"expected {what}, got the quoted text {_show(str(node.value))}"
            )
            return None
        return self.subst(node, path)

    def integer(
        self, node: Node, path: str, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        text = self._typed_text(node, path, "an integer")
        if text is None:
            return None
        value = _parse_int(text)
        if value is None:
            t = text.strip()
            if _LEADING_ZERO_RE.fullmatch(t):
                digits = t.lstrip("+-").lstrip("0") or "0"
                self.report(
                    node,
                    path,
                    f"ambiguous number {_show(t)}: write {digits}, or 0o{digits} for octal",
                )
            else:
                self.report(node, path, f"expected an integer, got {_show(text)}")
            return None
        if lo is not None and hi is not None and not lo <= value <= hi:
            self.report(node, path, f"must be between {lo} and {hi}, got {value}")
            return None
        if lo is not None and value < lo:
            self.report(node, path, f"must be at least {lo}, got {value}")
            return None
        return value

    def int_in(self, lo: int, hi: int | None = None) -> Callable[[Node, str], int | None]:
        return lambda node, path: self.integer(node, path, lo, hi)

    def number(self, node: Node, path: str) -> float | None:
        text = self._typed_text(node, path, "a number")
        if text is None:
            return None
        value = _parse_float(text)
        if value is None:
            self.report(node, path, f"expected a number, got {_show(text)}")
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        text = self._typed_text(node, path, "true or false")
        if text is None:
            return None
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        self.report(node, path, f"expected true or false, got {_show(text)}")
        return None

    def choice(
        self, cls: type[E], what: str, allowed: Collection[E] | None = None
    ) -> Callable[[Node, str], E | None]:
        members = list(cls) if allowed is None else list(allowed)
        names = [str(m.value) for m in members]

        def conv(node: Node, path: str) -> E | None:
            text = self.text(node, path)
            if text is None:
                return None
            for m in members:
                if m.value == text:
                    return m
            hint = _suggest(text, names) or f" (expected one of: {', '.join(names)})"
            self.report(node, path, f"unknown {what} {_show(text)}{hint}")
            return None

        return conv

    def duration(self, node: Node, path: str, *, allow_zero: bool = False) -> float | None:
        if not isinstance(node, ScalarNode):
            self.report(node, path, f"expected a duration, got {_kind(node)}")
            return None
        text = self.subst(node, path)
        if text is None:
            return None
        try:
            return _duration(text, allow_zero=allow_zero)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None

    def pause(self, node: Node, path: str) -> float | None:
        return self.duration(node, path, allow_zero=True)

    def rate(self, node: Node, path: str) -> float | None:
        text = self.text(node, path)
        if text is None:
            return None
        try:
            return parse_rate(text)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None

    # -- sections

    def root(self, node: Node | None) -> BridgeConfig | None:
        if node is None or _is_null(node):
            self.report(node, "", "the configuration is empty")
            return None
        f = self.mapping(node, "", _ROOT_KEYS, extra=lambda k: k.startswith("x-"))
        if f is None:
            return None
        version = self.req(f, "version", self.integer)
        if version is not None and version != CONFIG_VERSION:
            self.report(
                f.value("version"),
                "version",
                f"unsupported version {version} (this bridge reads version {CONFIG_VERSION})",
            )
        read_only = self.get(f, "read_only", self.boolean)
        write_timeout = self.get(f, "write_timeout", self.duration)
        health_interval = self.get(f, "health_interval", self.duration)
        mqtt_node = f.value("mqtt")
        mqtt = Mqtt() if mqtt_node is None else self.mqtt(mqtt_node, "mqtt")
        ha_node = f.value("homeassistant")
        ha = HomeAssistant() if ha_node is None else self.homeassistant(ha_node, "homeassistant")
        metrics_node = f.value("metrics")
        metrics = None if metrics_node is None else self.metrics(metrics_node, "metrics")
        hosts = self.hosts(f)
        templates_node = f.value("templates")
        templates = {} if templates_node is None else self.templates(templates_node)
        devices = self.devices(f, hosts, templates)
        if self.problems or mqtt is None or ha is None:
            return None
        config = BridgeConfig(
            mqtt=mqtt,
            hosts=tuple(hosts.values()),
            devices=tuple(devices),
            version=CONFIG_VERSION,
            read_only=bool(read_only),
            write_timeout=2.0 if write_timeout is None else write_timeout,
            health_interval=30.0 if health_interval is None else health_interval,
            homeassistant=ha,
            metrics=metrics,
            source=self.source,
            secrets=tuple(sorted(self.secrets, key=len, reverse=True)),
        )
        self.check_ids(config)
        return None if self.problems else config

    def check_ids(self, config: BridgeConfig) -> None:
        """Names that Home Assistant discovery would map to one id, or to an entity id
        it refuses (`discovery.id_problems`), reported at the entry of the device whose
        name (or point) comes second."""

        def entry(owner: Owner) -> str:
            index = self.device_entries.get(owner.device or "", (None,))[0]
            return "" if index is None else f" (devices[{index}])"

        for found in id_problems(config):
            owner = found.owner if isinstance(found, TooLong) else found.second
            if isinstance(found, TooLong):
                message = (
                    f"{owner} gets an entity id of {len(found.ident)} characters "
                    f"({found.ident[:48]}...); Home Assistant takes at most "
                    f"{hass.MAX_ENTITY_ID} and would not create it: shorten the names"
                )
            elif found.what == "entity id":
                message = (
                    f"{owner} gets the entity id {found.ident}, as {found.first}"
                    f"{entry(found.first)} does: Home Assistant would call one of them "
                    f"{found.ident}_2; rename one"
                )
            else:
                loss = "replace the other" if found.what == "discovery topic" else "be dropped"
                message = (
                    f"{owner} and {found.first}{entry(found.first)} get the same Home "
                    f"Assistant {found.what} ({found.ident}): one would {loss}; rename one"
                )
            index, node = self.device_entries.get(owner.device or "", (None, None))
            if node is None or index is None:
                self.report(None, "devices", message)
            else:
                self.report(_child(node, "name"), f"devices[{index}].name", message)

    def homeassistant(self, node: Node, path: str) -> HomeAssistant | None:
        f = self.mapping(node, path, _HOMEASSISTANT_KEYS)
        if f is None:
            return None
        d = HomeAssistant()
        enabled = self.get(f, "enabled", self.boolean)
        prefix = self.get(f, "discovery_prefix", self.topic)
        status = self.get(f, "status_topic", self.topic)
        return HomeAssistant(
            enabled=d.enabled if enabled is None else enabled,
            discovery_prefix=d.discovery_prefix if prefix is None else prefix,
            status_topic=d.status_topic if status is None else status,
        )

    def metrics(self, node: Node, path: str) -> Metrics | None:
        f = self.mapping(node, path, _METRICS_KEYS)
        if f is None:
            return None
        metrics = self.req(f, "listen", self.listen)
        shard_ports = self.get(f, "shard_ports", self.boolean)
        if metrics is not None and shard_ports is not None:
            metrics = replace(metrics, shard_ports=shard_ports)
        return metrics

    def listen(self, node: Node, path: str) -> Metrics | None:
        """`ADDRESS:PORT` (an IPv6 address in brackets), or a bare port on loopback."""
        text = self.nonempty_text(node, path)
        if text is None:
            return None
        try:
            address, port = parse_endpoint(text, default_address=Metrics.address)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None
        return Metrics(address=address, port=port)

    def topic(self, node: Node, path: str) -> str | None:
        """A topic without wildcards or empty levels (rules in bridge.topics)."""
        text = self.text(node, path)
        if text is None:
            return None
        why = _topic_problem(text, base_topic_problem(text))
        if why is not None:
            self.report(node, path, why)
            return None
        return text

    def device_info(self, f: _Fields) -> _DeviceInfo:
        return _DeviceInfo(
            manufacturer=self.get(f, "manufacturer", self.nonempty_text),
            model=self.get(f, "model", self.nonempty_text),
            area=self.get(f, "area", self.nonempty_text),
            heartbeat=self.get(f, "heartbeat", self.duration),
        )

    def mqtt(self, node: Node, path: str) -> Mqtt | None:
        f = self.mapping(node, path, _MQTT_KEYS)
        if f is None:
            return None
        d = Mqtt()
        host = self.get(f, "host", self.address)
        port = self.get(f, "port", self.int_in(1, 65535))
        client_id = self.get(f, "client_id", lambda n, p: self.checked_text(n, p, name_problem))
        username = self.get(f, "username", self.text)
        username_node = f.value("username")
        if username and isinstance(username_node, ScalarNode) and "${" in str(username_node.value):
            self.secrets.add(username)  # from the environment: a secret like the password
        if username:
            why = text_problem(username)
            if why is not None:
                self.report(f.value("username"), f.sub("username"), f"the user name {why}")
        password = self.get(f, "password", self.text)
        if password:
            self.secrets.add(password)
        base_topic = self.get(f, "base_topic", self.text)
        if base_topic is not None:
            why = _topic_problem(base_topic, base_topic_problem(base_topic))
            if why is not None:
                self.report(f.value("base_topic"), f.sub("base_topic"), why)
        qos = self.get(f, "qos", self.int_in(0, 2))
        retain = self.get(f, "retain", self.boolean)
        output = self.get(f, "output", self.choice(Output, "output"))
        keepalive = self.get(f, "keepalive", self.int_in(0, 65535))
        protocol = self.get(f, "protocol", self.protocol)
        max_packet_size = self.get(f, "max_packet_size", self.int_in(_MIN_PACKET, _MAX_PACKET))
        tls_node = f.value("tls")
        tls = None if tls_node is None else self.tls(tls_node, f.sub("tls"))
        return Mqtt(
            host=d.host if host is None else host,
            port=d.port if port is None else port,
            client_id=d.client_id if client_id is None else client_id,
            username=username or None,  # empty (e.g. an unset ${VAR:-}) means none
            password=password or None,
            base_topic=d.base_topic if base_topic is None else base_topic,
            qos=d.qos if qos is None else qos,
            retain=d.retain if retain is None else retain,
            output=output or d.output,
            keepalive=d.keepalive if keepalive is None else keepalive,
            protocol=d.protocol if protocol is None else protocol,
            tls=tls,
            max_packet_size=max_packet_size,
        )

    def protocol(self, node: Node, path: str) -> int | None:
        text = self.text(node, path)
        if text is None:
            return None
        value = _PROTOCOLS.get(text.strip())
        if value is None:
            self.report(node, path, f"unknown protocol {_show(text)} (expected 5 or 3.1.1)")
        return value

    def tls(self, node: Node, path: str) -> Tls | None:
        if isinstance(node, ScalarNode):  # `tls: true` = TLS with the system CAs
            on = self.boolean(node, path)
            return Tls() if on else None
        f = self.mapping(node, path, _TLS_KEYS)
        if f is None:
            return None
        ca_file = self.get(f, "ca_file", self.readable_file)
        cert_file = self.get(f, "cert_file", self.readable_file)
        key_file = self.get(f, "key_file", self.readable_file)
        insecure = self.get(f, "insecure", self.boolean)
        if f.has("key_file") and not f.has("cert_file"):
            self.report(f.key_node("key_file"), f.sub("key_file"), "key_file needs cert_file")
        # What the bridge will load at run time, loaded now: a wrong file fails here.
        checks = []
        if ca_file is not None:
            checks.append(Tls(ca_file=ca_file))
        if cert_file is not None and (key_file is not None or not f.has("key_file")):
            checks.append(Tls(cert_file=cert_file, key_file=key_file))
        for check in checks:
            try:
                tls_context(check)
            except TlsSetupError as exc:
                self.report(f.value(exc.key), f.sub(exc.key), exc.reason)
        return Tls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, insecure=bool(insecure))

    def hosts(self, root: _Fields) -> dict[str, Host]:
        nodes = self.req(root, "hosts", self.sequence)
        if nodes is None:
            return {}
        if not nodes:
            self.report(root.value("hosts"), "hosts", "at least one host is required")
        hosts: dict[str, Host] = {}
        first_seen: dict[str, int] = {}
        ports: dict[str, int] = {}  # serial port -> hosts[i]: a port opens once
        for i, node in enumerate(nodes):
            path = f"hosts[{i}]"
            host = self.host(node, path)
            if host is None:
                continue
            if isinstance(host.link, SerialLink):
                other = ports.setdefault(host.link.port, i)
                if other != i:
                    self.report(
                        _child(node, "serial"),
                        f"{path}.serial",
                        f"serial port {_show(host.link.port)} is already hosts[{other}] "
                        "(one host per port: put all its devices on that host)",
                    )
                    continue
            if host.name in hosts:
                self.report(
                    _child(node, "name"),
                    f"{path}.name",
                    f"duplicate host name '{host.name}' (also hosts[{first_seen[host.name]}])",
                )
                continue
            hosts[host.name] = host
            first_seen[host.name] = i
        return hosts

    def host(self, node: Node, path: str) -> Host | None:
        f = self.mapping(node, path, _HOST_KEYS)
        if f is None:
            return None
        before = len(self.problems)
        name = self.req(f, "name", self.text)
        if name is not None:
            self._declared_hosts.add(name)
            why = _level_problem(name, ())
            if why is not None:
                self.report(f.value("name"), f.sub("name"), why)
        framer = self.get(f, "framer", self.choice(Framer, "framer"))
        timeout = self.get(f, "timeout", self.duration)
        pause = self.get(f, "pause", self.pause)
        max_gap = self.get(f, "max_gap", self.int_in(0))
        write_multiple = self.get(f, "write_multiple", self.boolean)
        spread = self.get(f, "spread", self.boolean)
        baudrate = self.get(f, "baudrate", self.int_in(_MIN_BAUDRATE, _MAX_BAUDRATE))
        link: TcpLink | SerialLink | None
        if f.has("serial"):
            link = self.serial_link(f, baudrate)
            if framer is Framer.TCP:
                self.report(
                    f.value("framer"),
                    f.sub("framer"),
                    "a serial port carries Modbus RTU: leave framer out (or write rtu)",
                )
        else:
            if "serial" in f.items:  # `serial:` with no value
                self.report(f.key_node("serial"), f.sub("serial"), "a value is required")
            elif "address" not in f.items:
                self.report(f.node, f.path, "missing required key 'address' (or 'serial')")
            address = self.get(f, "address", self.address)
            port = self.get(f, "port", self.int_in(1, 65535))
            link = self.tcp_link(f, address, port, baudrate)
        if name is None or link is None or len(self.problems) > before:
            return None
        d = Host(name="", link=link)
        return Host(
            name=name,
            link=link,
            timeout=_or(timeout, d.timeout),
            pause=_or(pause, d.pause),
            max_gap=_or(max_gap, d.max_gap),
            write_multiple=_or(write_multiple, d.write_multiple),
            framer=_or(framer, d.framer),
            spread=_or(spread, d.spread),
        )

    def serial_link(self, f: _Fields, baudrate: int | None) -> SerialLink | None:
        """The serial keys of a host (`f`); the TCP ones are errors there."""
        before = len(self.problems)
        for key in ("address", "port", "keepalive", "allow_zero_tid"):
            if key in f.items:
                self.report(
                    f.key_node(key),
                    f.sub(key),
                    f"'{key}' is for TCP hosts: give either 'serial' or 'address'/'port'",
                )
        port = self.get(f, "serial", self.serial_port)
        parity = self.get(f, "parity", self.choice(Parity, "parity"))
        stopbits = self.get(f, "stopbits", self.int_in(1, 2))
        bytesize = self.get(f, "bytesize", self.int_in(7, 8))
        if port is None or len(self.problems) > before:
            return None
        d = SerialLink(port="")
        return SerialLink(
            port=port,
            baudrate=_or(baudrate, d.baudrate),
            parity=_or(parity, d.parity),
            stopbits=_or(stopbits, d.stopbits),
            bytesize=_or(bytesize, d.bytesize),
        )

    def tcp_link(
        self, f: _Fields, address: str | None, port: int | None, baudrate: int | None
    ) -> TcpLink | None:
        """The TCP keys of a host (`f`), with its already read address, port and baudrate;
        None when anything is wrong (reported)."""
        before = len(self.problems)
        for key in ("parity", "stopbits", "bytesize"):
            if key in f.items:
                self.report(
                    f.key_node(key), f.sub(key), f"'{key}' is for serial hosts (with 'serial')"
                )
        allow_zero_tid = self.get(f, "allow_zero_tid", self.boolean)
        d = TcpLink(address="")
        idle, interval, count = d.keepalive_idle, d.keepalive_interval, d.keepalive_count
        ka_node = f.value("keepalive")
        if ka_node is not None:
            ka = self.mapping(ka_node, f.sub("keepalive"), _KEEPALIVE_KEYS)
            if ka is not None:
                idle = _or(self.get(ka, "idle", self.int_in(1)), idle)
                interval = _or(self.get(ka, "interval", self.int_in(1)), interval)
                count = _or(self.get(ka, "count", self.int_in(1)), count)
        if address is None or len(self.problems) > before:
            return None
        return TcpLink(
            address=address,
            port=_or(port, d.port),
            keepalive_idle=idle,
            keepalive_interval=interval,
            keepalive_count=count,
            allow_zero_tid=_or(allow_zero_tid, d.allow_zero_tid),
            baudrate=_or(baudrate, d.baudrate),
        )

    def templates(self, node: Node) -> dict[str, _Template]:
        f = self.mapping(node, "templates", None)
        if f is None:
            return {}
        templates: dict[str, _Template] = {}
        for name, (_key, value) in f.items.items():
            path = f.sub(name)
            t = self.mapping(value, path, _TEMPLATE_KEYS)
            if t is None:
                templates[name] = _Template(None, None, [], written_points=1)
                continue
            points_node = t.value("points")
            points, written = ([], 0) if points_node is None else self.points(points_node, t)
            templates[name] = _Template(
                byte_order=self.get(t, "byte_order", self.choice(Order, "byte order")),
                word_order=self.get(t, "word_order", self.choice(Order, "word order")),
                points=points,
                written_points=written,
                info=self.device_info(t),
            )
        return templates

    def devices(
        self, root: _Fields, hosts: Mapping[str, Host], templates: Mapping[str, _Template]
    ) -> list[Device]:
        nodes = self.req(root, "devices", self.sequence)
        if nodes is None:
            return []
        if not nodes:
            self.report(root.value("devices"), "devices", "at least one device is required")
        devices: list[Device] = []
        owner: dict[str, int] = {}
        for i, node in enumerate(nodes):
            path = f"devices[{i}]"
            expanded = self.device(node, path, hosts, templates)
            clashes = [d.name for d in expanded if d.name in owner]
            if clashes:
                first = clashes[0]
                more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
                self.report(
                    _child(node, "name"),
                    f"{path}.name",
                    f"device name '{first}' is already used by devices[{owner[first]}]{more}",
                )
                continue
            for d in expanded:
                owner[d.name] = i
                self.device_entries[d.name] = (i, node)
            devices.extend(expanded)
        return devices

    def device(
        self,
        node: Node,
        path: str,
        hosts: Mapping[str, Host],
        templates: Mapping[str, _Template],
    ) -> list[Device]:
        f = self.mapping(node, path, _DEVICE_KEYS)
        if f is None:
            return []
        before = len(self.problems)
        name = self.req(f, "name", self.text)
        host_name = self.req(f, "host", self.text)
        host = None
        if host_name is not None:
            host = hosts.get(host_name)
            if host is None and host_name not in self._declared_hosts:
                hint = _suggest(host_name, hosts) or (
                    f" (defined hosts: {', '.join(list(hosts)[:8])})" if hosts else ""
                )
                self.report(
                    f.value("host"), f.sub("host"), f"unknown host {_show(host_name)}{hint}"
                )
        units = self.device_units(f)
        template = None
        template_name = self.get(f, "template", self.text)
        if template_name is not None:
            template = templates.get(template_name)
            if template is None:
                hint = _suggest(template_name, templates) or (
                    f" (defined templates: {', '.join(list(templates)[:8])})" if templates else ""
                )
                self.report(
                    f.value("template"),
                    f.sub("template"),
                    f"unknown template {_show(template_name)}{hint}",
                )
        interval = _or(self.get(f, "interval", self.duration), DEFAULT_INTERVAL)
        max_gap = self.get(f, "max_gap", self.int_in(0))
        write_multiple = self.get(f, "write_multiple", self.boolean)
        write_rate = self.get(f, "write_rate", self.rate)
        byte_order = self.get(f, "byte_order", self.choice(Order, "byte order"))
        word_order = self.get(f, "word_order", self.choice(Order, "word order"))
        info = self.device_info(f)
        points_node = f.value("points")
        own, written = ([], 0) if points_node is None else self.points(points_node, f)
        if template is not None:
            written += template.written_points
        if written == 0 and not (f.has("template") and template is None):
            self.report(node, path, "device has no points (give a template or points)")

        if name is not None:
            self.device_name(f, name, units)
        if (
            name is None
            or host is None
            or units is None
            or (template_name is not None and template is None)
            or len(self.problems) > before
        ):
            return []

        specs: dict[str, _PointSpec] = {}
        if template is not None:
            specs.update((s.name, s) for s in template.points)
        specs.update((s.name, s) for s in own)  # a device point replaces the template's
        dev_byte = byte_order or (template.byte_order if template else None) or Order.BIG
        dev_word = word_order or (template.word_order if template else None) or Order.BIG
        inherited = {"interval": interval, "byte_order": dev_byte, "word_order": dev_word}
        points = tuple(_resolve(s, inherited) for s in specs.values())
        if template is not None:
            info = info.over(template.info)
        return [
            Device(
                name=name.replace("{unit}", str(unit)),
                host=host.name,
                unit=unit,
                interval=interval,
                points=points,
                max_gap=_or(max_gap, host.max_gap),
                write_multiple=_or(write_multiple, host.write_multiple),
                write_rate=write_rate,
                manufacturer=info.manufacturer,
                model=info.model,
                area=info.area,
                heartbeat=info.heartbeat,
            )
            for unit in units
        ]

    def device_units(self, f: _Fields) -> list[int] | None:
        if f.has("unit") and f.has("units"):
            self.report(
                f.key_node("units"), f.sub("units"), "give either 'unit' or 'units', not both"
            )
            return None
        if "unit" in f.items and not f.has("units"):
            unit = self.req(f, "unit", self.int_in(0, 255))
            return None if unit is None else [unit]
        node = f.value("units")
        if node is None:
            if "units" in f.items:
                self.report(f.key_node("units"), f.sub("units"), "a value is required")
            else:
                self.report(f.node, f.path, "missing required key 'unit' (or 'units')")
            return None
        items = node.value if isinstance(node, SequenceNode) else [node]
        units: list[int] = []
        ok = True
        for i, item in enumerate(items):
            ipath = f"{f.sub('units')}[{i}]" if isinstance(node, SequenceNode) else f.sub("units")
            if not isinstance(item, ScalarNode):
                self.report(item, ipath, f"expected a unit id or range, got {_kind(item)}")
                ok = False
                continue
            text = self.subst(item, ipath)
            if text is None:
                ok = False
                continue
            try:
                units.extend(_unit_item(text))
            except ValueError as exc:
                self.report(item, ipath, str(exc))
                ok = False
        if not ok:
            return None
        if not units:
            self.report(node, f.sub("units"), "no unit ids given")
            return None
        dup = _first_duplicate(units)
        if dup is not None:
            self.report(node, f.sub("units"), f"unit {dup} is listed more than once")
            return None
        return units

    def device_name(self, f: _Fields, name: str, units: list[int] | None) -> None:
        node, path = f.value("name"), f.sub("name")
        rest = name.replace("{unit}", "")
        if "{" in rest or "}" in rest:
            self.report(node, path, f"{_show(name)}: the only placeholder is {{unit}}")
            return
        if units is not None and len(units) > 1 and "{unit}" not in name:
            self.report(
                node, path, f"{_show(name)} needs '{{unit}}' to name each of its {len(units)} units"
            )
            return
        sample = name.replace("{unit}", str(units[0] if units else 1))
        why = _level_problem(sample, RESERVED_DEVICE_NAMES)
        if why is not None:
            self.report(node, path, why)

    # -- points

    def points(self, node: Node, owner: _Fields) -> tuple[list[_PointSpec], int]:
        """The valid points of a `points:` list, and how many entries it has."""
        path = owner.sub("points")
        nodes = self.sequence(node, path)
        if nodes is None:
            return [], 0
        specs: list[_PointSpec] = []
        first: dict[str, int] = {}
        for i, pnode in enumerate(nodes):
            ppath = f"{path}[{i}]"
            spec = self.point(pnode, ppath)
            if spec is None:
                continue
            if spec.name in first:
                self.report(
                    pnode,
                    f"{ppath}.name",
                    f"duplicate point name '{spec.name}' (also {path}[{first[spec.name]}])",
                )
                continue
            first[spec.name] = i
            specs.append(spec)
        return specs, len(nodes)

    def point(self, node: Node, path: str) -> _PointSpec | None:
        f = self.mapping(node, path, _POINT_KEYS)
        if f is None:
            return None
        before = len(self.problems)
        given: dict[str, Any] = {}
        value_nodes: list[tuple[int, str, Node]] = []
        for field_name, key in POINT_KEYS:
            conv = self.point_reader(key)
            value = self.req(f, key.yaml, conv) if key.required else self.get(f, key.yaml, conv)
            if value is None:
                continue
            if key.read is Read.VALUES:
                value_nodes = value
                value = tuple((raw, label) for raw, label, _ in value_nodes)
            given[field_name] = value
        # rules of one key
        name = given.get("name")
        if name is not None:
            why = _level_problem(name, RESERVED_POINT_NAMES)
            if why is not None:
                self.report(f.value("name"), f.sub("name"), why)
        if given.get("scale") == 0:
            self.report(f.value("scale"), f.sub("scale"), "must not be zero")
        if given.get("deadband", 0) < 0:
            self.report(f.value("deadband"), f.sub("deadband"), "must not be negative")
        for text_key in ("display_name", "device_class", "icon"):
            if text_key in given and not given[text_key].strip():
                self.report(f.value(text_key), f.sub(text_key), "must not be empty")
        table = given.get("table")
        if not f.has("type") and table is not None:
            if table.is_bits:
                given["type"] = DataType.BOOL
            else:
                self.report(
                    f.node, path, f"missing required key 'type' (for the {table.value} table)"
                )

        if not {"table", "address", "type"} <= given.keys():
            return None
        # the device's interval does not matter to the rules below
        point = Point(**{"name": "", "interval": DEFAULT_INTERVAL, **given})
        self.check_point(f, point, value_nodes)
        if len(self.problems) == before:  # the entity follows from a valid point
            self.check_homeassistant(f, point)
        if name is None or len(self.problems) > before:
            return None
        if point.writable:
            given.setdefault("write_table", _default_write_table(point))
            given.setdefault("write_address", point.address)
        return _PointSpec(given)

    def point_reader(self, key: PointKey) -> Callable[[Node, str], Any]:
        """The converter that reads a point key declared on `model.Point`."""
        match key.read:
            case Read.TEXT:
                return self.text
            case Read.NUMBER:
                return self.number
            case Read.INTEGER:
                return self.int_in(key.lo if key.lo is not None else 0, key.hi)
            case Read.BOOLEAN:
                return self.boolean
            case Read.DURATION:
                return self.duration
            case Read.CHOICE:
                what = key.yaml.replace("_", " ")
                return self.choice(type(key.choices[0]), what, key.choices)
            case Read.VALUES:
                return self.values

    def check_homeassistant(self, f: _Fields, p: Point) -> None:
        """Rules of the Home Assistant keys: the entity the point becomes must take them.

        A bridge-wide `read_only` is not considered: switching it on must not make a
        config invalid (discovery then leaves out what a sensor cannot have)."""

        def bad(key: str, message: str) -> None:
            self.report(f.value(key), f.sub(key), message)

        kind = hass.platform(p)
        what = hass.describe(p)
        number = hass.is_number(p)
        dc = p.device_class
        if dc is not None and dc.strip():
            allowed = hass.device_classes(p)
            if dc not in hass.all_device_classes():
                hint = _suggest(dc, allowed) or f" (for {what})"
                bad("device_class", f"unknown device class {_show(dc)}{hint}")
                dc = None
            elif dc not in allowed:
                takes = f"; it takes: {', '.join(allowed)}" if 0 < len(allowed) <= 8 else ""
                bad("device_class", f"device class {_show(dc)} does not apply to {what}{takes}")
                dc = None
        if dc is not None and p.unit is not None and number and dc in hass.UNITS:
            units = hass.UNITS[dc]
            if p.unit not in units:
                named = sorted(u for u in units if u is not None)
                takes = f"one of: {', '.join(named)}" if named else "no unit"
                bad(
                    "unit",
                    f"unit {_show(p.unit)} does not fit device class '{dc}' (it takes {takes})",
                )
        sc = p.state_class
        if sc is not None:
            if kind is not hass.Platform.SENSOR or not number:
                bad("state_class", f"state_class applies to sensors of numbers, not to {what}")
            elif (
                dc is not None
                and dc in hass.STATE_CLASSES
                and sc.value not in hass.STATE_CLASSES[dc]
            ):
                fits = ", ".join(sorted(hass.STATE_CLASSES[dc])) or "none"
                bad(
                    "state_class",
                    f"state class '{sc.value}' does not fit device class '{dc}' (it takes: {fits})",
                )
        if p.entity_category is EntityCategory.CONFIG and kind in hass.READ_ONLY_PLATFORMS:
            bad(
                "entity_category",
                f"entity_category config is for controls; {what} can be diagnostic only",
            )
        if p.icon is not None and p.icon.strip() and ":" not in p.icon:
            bad("icon", f"expected an icon such as mdi:flash (prefix:name), got {_show(p.icon)}")
        if p.deadband is not None and p.values:
            bad(
                "deadband", "'deadband' does not apply to a point with values (it publishes labels)"
            )

    def values(self, node: Node, path: str) -> list[tuple[int, str, Node]] | None:
        f = self.mapping(node, path, None)
        if f is None:
            return None
        out: list[tuple[int, str, Node]] = []
        raws: dict[int, str] = {}
        labels: dict[str, int] = {}
        for key, (key_node, value_node) in f.items.items():
            sub = f.sub(key)
            raw = _parse_int(key)
            if raw is None:
                self.report(key_node, sub, f"a raw value must be an integer, got {_show(key)}")
                continue
            label = None if _is_null(value_node) else self.text(value_node, sub)
            if not label:
                if label is not None or _is_null(value_node):
                    self.report(value_node, sub, "the label must not be empty")
                continue
            if raw in raws:
                self.report(key_node, sub, f"raw value {raw} is listed more than once")
                continue
            if label in labels:
                self.report(
                    value_node,
                    sub,
                    f"label {_show(label)} is also used for raw value {labels[label]}",
                )
                continue
            raws[raw] = label
            labels[label] = raw
            out.append((raw, label, key_node))
        return out  # the valid entries; the others are reported

    def check_point(self, f: _Fields, p: Point, values: list[tuple[int, str, Node]]) -> None:
        """Rules between the keys of one point."""

        def bad(key: str, message: str) -> None:
            self.report(f.key_node(key), f.sub(key), message)

        t, table = p.type, p.table
        if table.is_bits and t is not DataType.BOOL:
            bad("type", f"points in the {table.value} table must be type bool, not {t.value}")
            return
        if table.is_bits and f.has("bit"):
            bad("bit", f"bit applies to holding/input registers, not the {table.value} table")
        if t is DataType.STRING and not f.has("length"):
            self.report(f.node, f.path, "missing required key 'length' (registers of the string)")
        if t is not DataType.STRING and f.has("length"):
            bad("length", f"length applies only to type string, not {t.value}")
        if p.bit is not None and t not in _BIT_TYPES:
            bad("bit", f"bit needs a 16-bit register type (int16, uint16 or bool), not {t.value}")
        for _, spec in POINT_KEYS:
            key = spec.yaml
            if spec.only is not Only.NUMERIC or not f.has(key):
                continue
            if not t.is_numeric:
                bad(key, f"'{key}' applies only to numeric types, not {t.value}")
            elif p.bit is not None:
                bad(key, f"'{key}' does not apply to a bit (it reads as true/false)")
        if f.has("values"):
            # raw -> label for integers, and for bools (0/1: coils, bits, bool registers)
            yields_bool = t is DataType.BOOL or p.bit is not None
            lo, hi = (0, 1) if yields_bool else (int_range(t) or (0, -1))
            if lo > hi:
                bad("values", f"values applies to integer and bool points, not {t.value}")
            elif f.has("scale") or f.has("offset"):
                bad("values", "values cannot be combined with scale or offset")
            else:
                what = "a bool (0 or 1)" if yields_bool else f"{t.value} ({lo}..{hi})"
                for raw, _label, key_node in values:
                    if not lo <= raw <= hi:
                        self.report(
                            key_node,
                            f"{f.sub('values')}.{key_node.value}",
                            f"raw value {raw} does not fit {what}",
                        )
        if p.minimum is not None and p.maximum is not None and p.minimum > p.maximum:
            bad("min", f"min ({p.minimum:g}) is greater than max ({p.maximum:g})")

        count = p.count
        if p.address + count > _ADDRESS_SPACE:
            bad("address", f"the point ends at {p.address + count - 1}, past 65535")

        for field_name, spec in POINT_KEYS:
            if not spec.needs_writable or not f.has(spec.yaml) or p.writable:
                continue
            if spec.read is not Read.BOOLEAN or getattr(p, field_name):  # `false` is harmless
                bad(spec.yaml, f"'{spec.yaml}' needs writable: true")
        if not p.writable:
            return
        if table in (Table.DISCRETE, Table.INPUT) and p.write_table is None:
            bad(
                "writable",
                f"the {table.value} table is read-only;"
                " set write_table (coil or holding) to write elsewhere",
            )
            return
        write_table = p.write_table or _default_write_table(p)
        yields_bool = t is DataType.BOOL or p.bit is not None
        if write_table is Table.COIL and not yields_bool:
            bad("write_table", f"only a bool point can be written to a coil, not {t.value}")
        if p.mask_write:
            if p.bit is None:
                bad("mask_write", "mask_write needs bit")
            elif write_table is not Table.HOLDING:
                bad("mask_write", "mask_write writes a holding register")
        write_count = 1 if write_table is Table.COIL or yields_bool else count
        write_address = p.address if p.write_address is None else p.write_address
        if write_address + write_count > _ADDRESS_SPACE:
            where = "write_address" if f.has("write_address") else "address"
            bad(where, f"the write ends at {write_address + write_count - 1}, past 65535")


def _address_problem(text: str) -> str | None:
    """Why `text` is neither an IP address nor a host name, or None."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None
    hint = "is not an IP address or a host name"
    if len(text) > 253:
        return f"{hint} (longer than 253 characters)"
    labels = text.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        return "is not a valid IPv4 address"
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return hint
    return None


def _default_write_table(p: Point) -> Table:
    return Table.COIL if p.table is Table.COIL else Table.HOLDING


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _resolve(spec: _PointSpec, device: Mapping[str, Any]) -> Point:
    """The point with the device's `interval`, `byte_order` and `word_order` where it
    gives none of its own."""
    return Point(**{**device, **spec.given})


def retarget(text: str, source: str, hosts: Mapping[str, Mapping[str, str | int]]) -> str:
    """The configuration `text` with some hosts' keys set: ``{"gw-a": {"address":
    "127.0.0.1", "port": 10502}, "bus1": {"serial": "/dev/pts/4"}}`` (`modbus-bridge sim
    --write-config`). Everything else stays as written (`${VAR}`, merge keys, quoting);
    comments are not kept. `text` must be a valid configuration."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, MappingNode):
        raise ValueError(f"{source}: not a configuration")
    seq = next((v for k, v in root.value if _scalar(k) == "hosts"), None)
    if not isinstance(seq, SequenceNode):
        raise ValueError(f"{source}: no hosts")
    for i, node in enumerate(seq.value):
        if not isinstance(node, MappingNode):
            continue
        name = _merged_scalar(node, "name")
        if name is None or name not in hosts:
            continue
        pairs = list(node.value)
        for key, value in hosts[name].items():
            tag = "int" if isinstance(value, int) else "str"
            new = ScalarNode(f"tag:yaml.org,2002:{tag}", str(value))
            at = next((j for j, (k, _) in enumerate(pairs) if _scalar(k) == key), None)
            if at is None:
                pairs.append((ScalarNode("tag:yaml.org,2002:str", key), new))
            else:
                pairs[at] = (pairs[at][0], new)
        seq.value[i] = MappingNode(node.tag, pairs, flow_style=node.flow_style)
    out: str = yaml.serialize(root, Dumper=yaml.SafeDumper, allow_unicode=True)
    return out


def _scalar(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


def _merged_scalar(node: MappingNode, key: str) -> str | None:
    """`key`'s text in a mapping, or in the mappings it merges (``<<: *anchor``)."""
    for k, v in node.value:
        if _scalar(k) == key:
            return _scalar(v)
    for k, v in node.value:
        if k.tag == _MERGE_TAG:
            merged = v.value if isinstance(v, SequenceNode) else [v]
            for m in merged:
                if isinstance(m, MappingNode) and (found := _merged_scalar(m, key)) is not None:
                    return found
    return None

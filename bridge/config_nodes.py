"""The YAML node tree, read without a schema: mappings, lists, scalars, positions.

The configuration is read from the *node tree* (``yaml.compose``), not from
constructed Python objects, for two reasons:

* every node keeps its line:column, so each problem points at the exact spot;
* every scalar keeps the text the user wrote. PyYAML follows YAML 1.1, where an
  unquoted ``off`` is the boolean False; read from the node it stays ``"off"``
  wherever text is expected (names, enum labels, passwords).

`NodeReader` knows no section of the configuration: it checks that a node is a
mapping with known keys (merge keys ``<<: *anchor`` applied), reads scalars as text,
integers, numbers, booleans, durations, rates or choices, and collects every problem
with its position. ``${VAR}`` and ``${VAR:-default}`` are replaced from the environment
in every scalar value after YAML parsing (so ``:`` or ``#`` in a secret needs no
quoting); ``$${`` stands for a literal ``${``. The scalar parsers without nodes
(`parse_duration`, `parse_rate`, `parse_endpoint`, `parse_units`) serve the command
line too. This is the one module that imports yaml.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bridge.errors import ConfigError, Problem, serial_device_problem
from bridge.topics import level_problem, text_problem

__all__ = [  # what the other configuration modules use (yaml's node classes included)
    "FALSE_WORDS",
    "TRUE_WORDS",
    "Fields",
    "MappingNode",
    "Node",
    "NodeReader",
    "ScalarNode",
    "SequenceNode",
    "address_key",
    "child",
    "compose",
    "first_duplicate",
    "is_null",
    "level_message",
    "node_kind",
    "or_default",
    "parse_duration",
    "parse_endpoint",
    "parse_float",
    "parse_int",
    "parse_rate",
    "parse_units",
    "retarget",
    "show",
    "suggest",
    "topic_message",
    "unit_item",
    "unit_node",
]

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def compose(text: str, source: str) -> Node | None:
    """The node tree of `text` (None for an empty document); a YAML syntax error
    raises `ConfigError` with its position."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
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


# --------------------------------------------------------------------------
# Scalar parsers (no nodes, no positions)


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
            raise ValueError(f"invalid rate {show(text)} (expected e.g. 10/s or 30/m)")
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
        raise ValueError(f"{show(text)}: write an IPv6 address in brackets ({hint})")
    port = parse_int(port_text)
    if not address or port is None:
        raise ValueError(f"{show(text)}: {hint}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    why = _address_problem(address)
    if why is not None:
        raise ValueError(f"{show(address)} {why}")
    return address, port


def parse_units(spec: int | str | Sequence[int | str]) -> list[int]:
    """Unit ids from ``3``, ``"1-80"``, ``"1,5,7-9"`` or ``[1, 5, "7-9"]``.

    Ids are 0..255; an id given twice is an error.
    """
    items: Sequence[int | str] = [spec] if isinstance(spec, int | str) else spec
    units: list[int] = []
    for item in items:
        units.extend(unit_item(item))
    if not units:
        raise ValueError("no unit ids given")
    dup = first_duplicate(units)
    if dup is not None:
        raise ValueError(f"unit {dup} is listed more than once")
    return units


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
            raise ValueError(f"invalid duration {show(value)} ({hint})")
        seconds = _finite(float(m.group(1)) * _SECONDS[m.group(2) or "s"])
    else:
        seconds = _finite(value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("duration must be greater than zero" if not allow_zero else "must be >= 0")
    return seconds


def parse_int(text: str) -> int | None:
    t = text.strip()
    if _INT_RE.fullmatch(t) is None:
        return None
    try:
        return int(t, 0)
    except ValueError:
        return None


def parse_float(text: str) -> float | None:
    t = text.strip()
    as_int = parse_int(t)
    try:
        if as_int is not None:
            return _finite(as_int)
        if _FLOAT_RE.fullmatch(t) is None:
            return None
        return _finite(float(t))
    except ValueError:
        return None


def unit_item(item: object) -> list[int]:
    hint = "expected a unit id 0..255 or a range such as 1-80"
    if isinstance(item, bool) or not isinstance(item, int | str):
        raise ValueError(f"invalid unit {show(str(item))} ({hint})")
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
            raise ValueError(f"invalid unit {show(part)} ({hint})")
        for u in (lo, hi):
            if not 0 <= u <= 255:
                raise ValueError(f"unit id {u} is outside 0..255")
        units.extend(range(lo, hi + 1))
    return units


def first_duplicate(values: Iterable[T]) -> T | None:
    seen: set[T] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def substitute(text: str, env: Mapping[str, str]) -> str:
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
            raise ValueError(f"invalid variable reference {show('${' + inner + '}')}")
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


def show(value: str) -> str:
    """A value quoted for a message, shortened and with control characters escaped."""
    if len(value) > 60:
        value = value[:57] + "..."
    if value.isprintable() and "'" not in value:
        return f"'{value}'"
    return repr(value)


def suggest(word: str, choices: Iterable[str]) -> str:
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


def level_message(name: str, reserved: Collection[str]) -> str | None:
    """Why `name` cannot be one MQTT topic level, or None (rules in bridge.topics)."""
    return topic_message(name, level_problem(name, reserved))


def topic_message(text: str, why: str | None) -> str | None:
    """A phrase from bridge.topics as a message: after the quoted text, if any."""
    return why if why is None or not text else f"{show(text)} {why}"


def node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return show(str(node.value))


# --------------------------------------------------------------------------
# Node reading


@dataclass
class Fields:
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
        if pair is None or is_null(pair[1]):
            return None
        return pair[1]


def child(node: Node, key: str) -> Node:
    """The value node of `key` in a mapping node, else the node itself (for positions)."""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return value_node  # type: ignore[no-any-return]
    return node


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.style is None


class NodeReader:
    """Reads nodes into values, collecting every problem with its position."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # possible mistakes that do not stop the bridge
        self._seen: set[Problem] = set()
        self._pairs_cache: dict[int, list[tuple[Node, Node]]] = {}
        # Relative file names (TLS) are read from the configuration file's folder.
        self.base_dir = "" if source.startswith("<") else os.path.dirname(os.path.abspath(source))

    # -- problems

    def report(
        self, node: Node | None, path: str, message: str, *, source: str | None = None
    ) -> None:
        """A problem at `node`, in the file being read, or in `source` (a profile's file)."""
        line = column = None
        mark = getattr(node, "start_mark", None)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
        problem = Problem(source or self.source, line, column, path, message)
        if problem not in self._seen:
            self._seen.add(problem)
            self.problems.append(problem)

    def warn(self, node: Node | None, path: str, message: str) -> None:
        """A possible mistake, said by `check`; the configuration stays valid."""
        mark = getattr(node, "start_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        warning = Problem(self.source, line, column, path, message)
        if warning not in self.warnings:
            self.warnings.append(warning)

    def sorted_problems(self) -> list[Problem]:
        """The problems in file order: this file's first, then each other file's
        (profiles it names)."""
        return sorted(
            self.problems,
            key=lambda p: (p.file != self.source, p.file, p.line or 0, p.column or 0),
        )

    # -- structure

    def mapping(
        self,
        node: Node,
        path: str,
        keys: Collection[str] | None,
        *,
        extra: Callable[[str], bool] | None = None,
        known_as: Callable[[str], str | None] | None = None,
    ) -> Fields | None:
        """Check `node` is a mapping with known, unique, text keys. `known_as` says what
        an unknown key that means something elsewhere is called here (else: did you
        mean a look-alike)."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"expected a mapping, got {node_kind(node)}")
            return None
        items: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in self._pairs(node, path, frozenset()):
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, f"a key must be text, not {node_kind(key_node)}")
                continue
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in items:
                self.report(key_node, sub, f"duplicate key '{key}'")
                continue
            if keys is not None and key not in keys and not (extra is not None and extra(key)):
                said = None if known_as is None else known_as(key)
                hint = f": {said}" if said is not None else suggest(key, keys)
                self.report(key_node, sub, f"unknown key {show(key)}{hint}")
                continue
            items[key] = (key_node, value_node)
        return Fields(node, path, items)

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
            self.report(node, path, f"expected a list, got {node_kind(node)}")
            return None
        return list(node.value)

    # -- fields

    def get(self, f: Fields, key: str, conv: Callable[[Node, str], T | None]) -> T | None:
        """An optional value: None when absent, null or invalid (invalid is reported)."""
        node = f.value(key)
        return None if node is None else conv(node, f.sub(key))

    def req(self, f: Fields, key: str, conv: Callable[[Node, str], T | None]) -> T | None:
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
            return substitute(str(node.value), self.env)
        except ValueError as exc:
            self.report(node, path, str(exc))
            return None

    def text(self, node: Node, path: str) -> str | None:
        if not isinstance(node, ScalarNode):
            hint = ""
            if isinstance(node, MappingNode) and node.flow_style:
                hint = " (quote text that starts with '{')"
            self.report(node, path, f"expected text, got {node_kind(node)}{hint}")
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
            self.report(node, path, f"{show(value)} {why}")
            return None
        return value

    def address(self, node: Node, path: str) -> str | None:
        """A host name or an IP address."""
        return self.checked_text(node, path, _address_problem)

    def serial_port(self, node: Node, path: str) -> str | None:
        """A serial port's path. One that exists must be a serial device (a file, a
        folder, a FIFO or /dev/null there is a mistake); one that does not exist is
        fine here (an adapter that is not plugged in yet), said as a warning."""
        text = self.checked_text(node, path)
        if text is None:
            return None
        try:
            st = os.stat(text)
        except FileNotFoundError:
            self.warn(
                node,
                path,
                f"serial port {text} does not exist (yet): is the adapter plugged in?"
                " (a /dev/serial/by-id/... path names the adapter)",
            )
            return text
        except OSError:
            return text  # not ours to look at: the session says why at run time
        why = serial_device_problem(st.st_mode, st.st_rdev)
        if why is not None:
            self.report(node, path, f"{show(text)} is {why}")
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
            self.report(node, path, f"expected {what}, got {node_kind(node)}")
            return None
        if node.style is not None and "${" not in str(node.value):
            self.report(node, path, f"expected {what}, got the quoted text {show(str(node.value))}")
            return None
        return self.subst(node, path)

    def integer(
        self, node: Node, path: str, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        text = self._typed_text(node, path, "an integer")
        if text is None:
            return None
        value = parse_int(text)
        if value is None:
            t = text.strip()
            if _LEADING_ZERO_RE.fullmatch(t):
                digits = t.lstrip("+-").lstrip("0") or "0"
                self.report(
                    node,
                    path,
                    f"ambiguous number {show(t)}: write {digits}, or 0o{digits} for octal",
                )
            else:
                self.report(node, path, f"expected an integer, got {show(text)}")
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
        value = parse_float(text)
        if value is None:
            self.report(node, path, f"expected a number, got {show(text)}")
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        text = self._typed_text(node, path, "true or false")
        if text is None:
            return None
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        self.report(node, path, f"expected true or false, got {show(text)}")
        return None

    def choice(
        self,
        cls: type[E],
        what: str,
        allowed: Collection[E] | None = None,
        known_as: Callable[[str], str | None] | None = None,
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
            said = None if known_as is None else known_as(text)
            hint = (
                f": {said}"
                if said is not None
                else suggest(text, names) or f" (expected one of: {', '.join(names)})"
            )
            self.report(node, path, f"unknown {what} {show(text)}{hint}")
            return None

        return conv

    def duration(self, node: Node, path: str, *, allow_zero: bool = False) -> float | None:
        if not isinstance(node, ScalarNode):
            self.report(node, path, f"expected a duration, got {node_kind(node)}")
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


def or_default(value: T | None, default: T) -> T:
    return default if value is None else value


def address_key(address: str) -> str:
    """One spelling of a host's address: an IP address in its short form, a name in
    lower case without the root's dot."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower().removesuffix(".")


def unit_node(node: Node) -> Node:
    """Where a device entry names its unit (or units), for a position."""
    found = child(node, "unit")
    return found if found is not node else child(node, "units")

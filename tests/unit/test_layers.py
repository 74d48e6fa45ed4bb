"""The import rules of the package, read from the source's own imports (`ast`).

- Every module of `bridge/` is either pure (values in, values out) or does I/O, and is
  listed as such below: a new module has to be placed.
- A pure module never imports an I/O module, nor the standard library's event loop,
  sockets, threads, signals or processes.
- Each third-party library that talks to the outside is imported by its one owner.
- No import cycle among the modules, counting every import: at the top, inside a
  function, and under `if TYPE_CHECKING:` (a type-only cycle still ties the layers).
- No module over 1,000 lines, no class over 500; ARCHITECTURE.md names every module.

The rules are checked on the real package, and each on a small made-up package that
breaks it, so the checker itself is known to catch what it is meant to catch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import bridge

PACKAGE = "bridge"
ROOT = Path(bridge.__file__).parent

PURE = frozenset(
    {
        "__init__",
        "backoff",
        "codec",
        "commands",
        "config",
        "config_features",
        "config_nodes",
        "config_points",
        "config_profiles",
        "config_rules",
        "discovery",
        "errors",
        "feature",
        "figures",
        "frames",
        "hakeys",
        "hass",
        "hassimport",
        "health",
        "inventory",
        "linkhealth",
        "logs",
        "messages",
        "model",
        "packets",
        "pacing",
        "payloads",
        "planner",
        "proxy_rules",
        "reload",
        "shard",
        "sparkplug",
        "sparkplug_pb",
        "state",
        "stats",
        "sunspec",
        "tls",
        "topics",
        "vocabulary",
    }
)
IO = frozenset(
    {
        "__main__",
        "app",
        "buffer",
        "cli",
        "command_handler",
        "commission",
        "demo",
        "homeassistant",
        "history",
        "spnode",
        "metrics",
        "mqtt",
        "notify",
        "process",
        "proxy",
        "scheduler",
        "session",
        "sim",
        "simulate",
        "sunspec_io",
        "systemd",
        "wire",
    }
)
# Standard library modules that mean I/O or concurrency: never in a pure module.
IO_STDLIB = frozenset({"asyncio", "selectors", "signal", "socket", "subprocess", "threading"})
# Third-party library -> the only modules that may import it.
OWNERS: Mapping[str, frozenset[str]] = {
    "pymodbus": frozenset({"wire"}),
    "aiomqtt": frozenset({"mqtt"}),
    "paho": frozenset({"mqtt"}),
    "prometheus_client": frozenset({"metrics"}),
    "yaml": frozenset({"config_nodes", "hassimport"}),  # ours, and Home Assistant's dialect
    "amqtt": frozenset({"demo"}),
    "google": frozenset({"sparkplug_pb"}),  # protobuf
    "sqlite3": frozenset({"buffer"}),
}


def imports_of(source: str, modules: Iterable[str]) -> tuple[set[str], set[str]]:
    """(modules of the package, top-level names of everything else) that `source` imports,
    wherever the import statement stands."""
    known = set(modules)
    inside: set[str] = set()
    outside: set[str] = set()

    def note(dotted: str) -> None:
        head, _, rest = dotted.partition(".")
        if head != PACKAGE:
            outside.add(head)
        elif rest:
            inside.add(rest.partition(".")[0])
        else:
            inside.add("__init__")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                note(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            if node.module == PACKAGE:  # from bridge import hass, __version__
                for alias in node.names:
                    inside.add(alias.name if alias.name in known else "__init__")
            else:
                note(node.module)
    return inside, outside


def package_imports(sources: Mapping[str, str]) -> dict[str, tuple[set[str], set[str]]]:
    return {name: imports_of(text, sources) for name, text in sources.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, or a module that
    imports itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(
    sources: Mapping[str, str],
    *,
    pure: frozenset[str] = PURE,
    io: frozenset[str] = IO,
    owners: Mapping[str, frozenset[str]] = OWNERS,
) -> list[str]:
    """What breaks the rules, one line each (empty: the package keeps them)."""
    graph = package_imports(sources)
    problems = []
    for name in sorted(graph):
        inside, outside = graph[name]
        if name not in pure | io:
            problems.append(f"{name}: not listed as pure or I/O (tests/unit/test_layers.py)")
        if name in pure:
            for other in sorted(inside & io):
                problems.append(f"{name}: a pure module imports the I/O module {other}")
            for lib in sorted(outside & IO_STDLIB):
                problems.append(f"{name}: a pure module imports {lib}")
        for lib, allowed in owners.items():
            if lib in outside and name not in allowed:
                problems.append(f"{name}: imports {lib} (only {', '.join(sorted(allowed))} may)")
    for component in cycles({name: inside for name, (inside, _) in graph.items()}):
        problems.append(f"import cycle: {' -> '.join(component)}")
    return problems


MAX_MODULE_LINES = 1000
MAX_CLASS_LINES = 500
# Known to be too large, with the issue that splits them (remove the entry then).
TOO_LARGE: dict[str, str] = {}


def sizes(sources: Mapping[str, str]) -> dict[str, int]:
    """Lines of each module (`name.py`) and class (`name.py:Class`)."""
    out = {}
    for name, text in sources.items():
        out[f"{name}.py"] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                out[f"{name}.py:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def _package_sources() -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(ROOT.glob("*.py"))}


# -- the package -----------------------------------------------------------


def test_the_package_keeps_its_layers() -> None:
    assert violations(_package_sources()) == []


def test_no_module_or_class_has_grown_too_large() -> None:
    too_large = [
        f"{what}: {lines} lines"
        for what, lines in sizes(_package_sources()).items()
        if lines > (MAX_CLASS_LINES if ":" in what else MAX_MODULE_LINES) and what not in TOO_LARGE
    ]
    assert too_large == [], "split it (ARCHITECTURE.md: where things are)"


def test_architecture_md_names_every_module() -> None:
    text = (ROOT.parent / "ARCHITECTURE.md").read_text()
    missing = [f"{name}.py" for name in _package_sources() if f"`{name}.py`" not in text]
    assert [m for m in missing if m not in ("__init__.py", "__main__.py")] == []


def test_every_listed_module_exists() -> None:
    assert sorted(PURE | IO) == sorted(_package_sources())
    assert not PURE & IO


# -- the checker catches each kind of violation ---------------------------------


def test_a_pure_module_importing_an_io_module_is_caught() -> None:
    sources = {"model": "", "codec": "from bridge.session import HostSession\n", "session": ""}
    problems = violations(sources, pure=frozenset({"model", "codec"}), io=frozenset({"session"}))
    assert problems == ["codec: a pure module imports the I/O module session"]


def test_an_import_inside_a_function_counts() -> None:
    sources = {
        "codec": "def f():\n    from bridge import app  # noqa\n    return app\n",
        "app": "",
    }
    problems = violations(sources, pure=frozenset({"codec"}), io=frozenset({"app"}))
    assert problems == ["codec: a pure module imports the I/O module app"]


def test_a_pure_module_doing_io_is_caught() -> None:
    sources = {"planner": "import asyncio\n"}
    problems = violations(sources, pure=frozenset({"planner"}), io=frozenset())
    assert problems == ["planner: a pure module imports asyncio"]


def test_a_library_outside_its_owner_is_caught() -> None:
    sources = {
        "wire": "from pymodbus.client import AsyncModbusTcpClient\n",
        "session": "import pymodbus.pdu\n",
        "topics": "import paho.mqtt.client as mqtt\n",
        "mqtt": "import paho.mqtt.client\n",
    }
    problems = violations(sources, pure=frozenset({"topics"}), io=frozenset(sources) - {"topics"})
    assert problems == [
        "session: imports pymodbus (only wire may)",
        "topics: imports paho (only mqtt may)",
    ]


def test_a_type_only_cycle_is_caught() -> None:
    sources = {
        "figures": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from bridge.session import SessionStats\n"
        ),
        "session": "from bridge.figures import LATENCY_BUCKETS\n",
        "model": "",
    }
    problems = violations(sources, pure=frozenset(), io=frozenset(sources))
    assert problems == ["import cycle: figures -> session"]


def test_a_module_importing_itself_and_a_longer_cycle_are_caught() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d"]]


def test_an_unlisted_module_is_caught() -> None:
    problems = violations({"newthing": "import json\n"}, pure=frozenset(), io=frozenset())
    assert problems == ["newthing: not listed as pure or I/O (tests/unit/test_layers.py)"]


def test_the_package_init_counts_as_a_module() -> None:
    inside, outside = imports_of(
        "from bridge import __version__, hass\nimport bridge.codec\nimport json\n",
        ["__init__", "hass", "codec"],
    )
    assert inside == {"__init__", "hass", "codec"}
    assert outside == {"json"}

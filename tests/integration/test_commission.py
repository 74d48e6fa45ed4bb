"""`modbus-bridge read | write | scan` as a user runs them, against our simulator (Modbus
TCP, RTU framing through a gateway, and RTU on a serial line), counting connections on
the server side: one per command, closed when it ends."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator

import pytest
from bridgeproc import REPO
from hostile import HostileServer

from bridge.sim import SimSerial, SimServer, SimUnit

pytestmark = pytest.mark.integration

FLOAT = 12.56  # unit 1, holding 0..1, float32 big-endian


def _units() -> dict[int, SimUnit]:
    units = {1: SimUnit(), 5: SimUnit(valid={"holding": [(100, 110)]}), 17: SimUnit()}
    raw = struct.pack(">f", FLOAT)
    units[1].set_registers("holding", 0, [int.from_bytes(raw[:2]), int.from_bytes(raw[2:])])
    return units


@pytest.fixture
async def gateway() -> AsyncIterator[SimServer]:
    """A Modbus TCP gateway: units 1, 5 (refuses address 0) and 17; for any other unit
    it answers exception 11, as a gateway whose target does not respond."""
    server = SimServer(_units(), unknown_unit_exception=11)
    await server.start()
    yield server
    await server.stop()


async def cli(*args: str) -> tuple[int, str, str]:
    """The command in a child process; the simulator keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def closed(server: SimServer) -> None:
    """The command closed its connection (the server sees it shortly after exit)."""
    for _ in range(100):
        if server.connections_open == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the command left its connection open")


async def test_read_prints_raw_and_every_order(gateway: SimServer) -> None:
    host = f"127.0.0.1:{gateway.port}"
    code, out, err = await cli(
        "read", "--host", host, "--unit", "1", "--address", "0", "--type", "float32",
        "--all-orders",
    )  # fmt: skip
    assert code == 0, err
    assert "0x4148 0xF5C3" in out
    lines = {
        line.split("(byte order")[1]: line for line in out.splitlines() if "byte order" in line
    }
    assert set(lines) == {
        " big, word order big)", " big, word order little)",
        " little, word order big)", " little, word order little)",
    }  # fmt: skip
    assert "12.56" in lines[" big, word order big)"]
    await closed(gateway)
    assert gateway.connections_total == 1

    code, out, err = await cli(
        "read", "--host", host, "--address", "0", "--type", "float32", "--all-orders", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["raw"] == [0x4148, 0xF5C3] and doc["values"] == [FLOAT]
    orders = {(o["byte_order"], o["word_order"]): o["values"][0] for o in doc["orders"]}
    assert orders[("big", "big")] == FLOAT and len(orders) == 4
    await closed(gateway)
    assert gateway.connections_total == 2


async def test_write_in_engineering_units_then_read_back(gateway: SimServer) -> None:
    host = f"127.0.0.1:{gateway.port}"
    code, out, err = await cli(
        "write", "--host", host, "--unit", "17", "--address", "10", "--scale", "0.1", "230.9"
    )
    assert code == 0, err
    assert "wrote 230.9 as 0x0905" in out and "(function 6)" in out
    assert gateway.unit(17).get_registers("holding", 10) == [2309]
    writes = [r for r in gateway.request_log if r.function == 6]
    assert [(r.unit, r.address, r.values) for r in writes] == [(17, 10, (2309,))]
    code, out, err = await cli(
        "read", "--host", host, "--unit", "17", "--address", "10", "--scale", "0.1", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["values"] == [230.9]
    code, out, err = await cli(
        "write", "--host", host, "--unit", "1", "--table", "coil", "--address", "3", "on",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["function"] == 5 and gateway.unit(1).get_bits("coils", 3) == [True]
    await closed(gateway)
    assert gateway.connections_total == 3


async def test_scan_over_one_connection(gateway: SimServer) -> None:
    code, out, err = await cli("scan", "--host", f"127.0.0.1:{gateway.port}", "--units", "1-40")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:3] == [
        "unit 1: holding 0 = 16712",
        "unit 5: exception 2 (illegal data address)",  # a unit that answers, refusing
        "unit 17: holding 0 = 0",
    ]
    assert "3 of 40 unit ids in 1-40 answered" in lines[3]
    assert len(lines) == 4  # exception 11 from the gateway: nobody there, not listed
    assert sorted({r.unit for r in gateway.request_log}) == list(range(1, 41))
    await closed(gateway)
    assert gateway.connections_total == 1


async def test_scan_rtu_gateway_json() -> None:
    # RTU framing through a transparent gateway: a missing unit is silence (a timeout).
    async with SimServer(_units(), framing="rtu") as server:
        code, out, err = await cli(
            "scan", "--host", f"127.0.0.1:{server.port}", "--framer", "rtu",
            "--units", "1,5,6,17", "--timeout", "100ms", "--json",
        )  # fmt: skip
        await closed(server)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["answered"] == [1, 5, 17] and doc["scanned"] == 4
    assert [r["reply"] for r in doc["replies"]] == ["value", "exception", "value"]
    assert server.connections_total == 1


# -- issue 16, item 6 ---------------------------------------------------------------------


async def test_a_scan_goes_on_past_units_whose_replies_break_the_link() -> None:
    """A unit that sends garbage leaves a stream that cannot be framed: the link is
    reopened. The scan stopped at the next unit with "not connected" (blaming it) and
    with --json lost what it had found."""
    modes = {2: "garbage", 4: "bad_header", 6: "byte_count"}
    server = HostileServer({u: modes.get(u, "normal") for u in range(1, 8)})
    await server.start()
    try:
        host = f"127.0.0.1:{server.port}"
        code, out, err = await cli("scan", "--host", host, "--units", "1-7", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["answered"] == [1, 3, 5, 7]
        assert "error" not in doc
        bad = {r["unit"]: r["text"] for r in doc["replies"] if r["reply"] == "bad_reply"}
        assert set(bad) == {2, 4, 6}  # each bad reply named for the unit that sent it
        assert "invalid Modbus TCP header" in bad[4]
        assert "byte count" in bad[6]
        code, out, err = await cli("scan", "--host", host, "--units", "1-5")
        assert code == 0 and "not connected" not in out + err
        assert out.splitlines()[-1].startswith(f"{host}: 3 of 5 unit ids in 1-5 answered")
    finally:
        await server.stop()


async def test_a_scan_keeps_what_it_found_when_the_host_goes_away() -> None:
    server = HostileServer({1: "normal", 2: "garbage", 3: "normal"})
    await server.start()
    host = f"127.0.0.1:{server.port}"
    scan = asyncio.ensure_future(cli("scan", "--host", host, "--units", "1-3", "--json"))
    while server.requests < 2:  # unit 2's garbage is on its way: the host goes away
        await asyncio.sleep(0.005)
    await server.stop()
    code, out, err = await scan
    assert code == 1
    doc = json.loads(out)
    assert doc["answered"] == [1]
    assert [r["unit"] for r in doc["replies"]] == [1, 2]
    assert doc["error"].startswith(f"cannot connect to {host}")
    assert err.splitlines()[-1].startswith("error: cannot connect to")


async def test_a_scan_where_nothing_answers_exits_1(gateway: SimServer) -> None:
    code, out, err = await cli("scan", "--host", f"127.0.0.1:{gateway.port}", "--units", "30-32")
    assert code == 1
    assert "0 of 3 unit ids in 30-32 answered" in out
    assert err.splitlines() == ["error: no unit id in 30-32 answered"]
    code, out, _ = await cli(
        "scan", "--host", f"127.0.0.1:{gateway.port}", "--units", "30-32", "--json"
    )
    assert code == 1 and json.loads(out)["answered"] == []


async def test_a_write_without_an_answer_may_have_been_applied(gateway: SimServer) -> None:
    """The MQTT path says so; the commissioning write said only "no answer"."""
    gateway.silent_units.add(17)
    code, _, err = await cli(
        "write", "--host", f"127.0.0.1:{gateway.port}", "--unit", "17", "--address", "3",
        "--timeout", "200ms", "7",
    )  # fmt: skip
    assert code == 1
    assert err.splitlines() == [
        f"error: host 127.0.0.1:{gateway.port} unit 17: no answer within 0.2s; the write "
        "may or may not have been applied"
    ]
    assert [(r.unit, r.function) for r in gateway.request_log] == [(17, 6)]  # it was sent


async def test_read_on_a_serial_line(serial_pair) -> None:
    server = SimServer(_units())
    device = SimSerial(server, str(serial_pair.device))
    await device.start()
    try:
        code, out, err = await cli(
            "read", "--serial", str(serial_pair.bridge), "--baudrate", "19200",
            "--address", "0", "--type", "float32", "--json",
        )  # fmt: skip
    finally:
        await device.stop()
    assert code == 0, err
    assert json.loads(out)["values"] == [FLOAT]
    assert [(r.unit, r.function, r.address) for r in server.request_log] == [(1, 3, 0)]


async def test_errors_are_one_line_and_usage_errors_exit_2(gateway: SimServer) -> None:
    host = f"127.0.0.1:{gateway.port}"
    code, out, err = await cli("read", "--host", host, "--unit", "5", "--address", "0")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: host {host} unit 5: read holding 0+1: exception 2 (illegal data address)"
    ]
    code, _, err = await cli("read", "--host", host, "--unit", "9", "--address", "0", "--json")
    assert code == 1 and "exception 11 (gateway target device failed to respond)" in err
    refused = await cli("read", "--host", "127.0.0.1:1", "--address", "0", "--timeout", "200ms")
    assert refused[0] == 1
    assert refused[2].splitlines() == ["error: cannot connect to 127.0.0.1:1: Connection refused"]
    before = gateway.connections_total
    for args in (
        ("write", "--host", host, "--table", "input", "--address", "0", "1"),  # read-only
        ("write", "--host", host, "--address", "0", "70000"),  # out of range for uint16
        ("read", "--host", host, "--serial", "/dev/ttyUSB0", "--address", "0"),
        ("read", "--host", host, "--address", "0", "--type", "string"),  # needs --length
        ("scan", "--host", host, "--units", "9-1"),
    ):
        code, out, err = await cli(*args)
        assert code == 2, (args, out, err)
        assert "Traceback" not in err and "error:" in err.splitlines()[0]
        assert len(err.splitlines()) == 2 and "--help" in err.splitlines()[1]  # and a hint
    assert gateway.connections_total == before  # a usage error connects to nothing

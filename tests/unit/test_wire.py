"""What each kind of link means to the wire, with no connection: why an open failed, the
silence a serial line needs between frames (issue 9)."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest
from pymodbus.framer.socket import FramerSocket
from pymodbus.pdu import bit_message, register_message
from pymodbus.pdu.decoders import DecodePDU

from bridge.frames import mbap_frame
from bridge.model import Host, Parity, SerialLink, Table, TcpLink
from bridge.stats import SessionStats
from bridge.wire import Wire, transport_for

READ_REQUESTS = {
    Table.HOLDING: register_message.ReadHoldingRegistersRequest,
    Table.INPUT: register_message.ReadInputRegistersRequest,
    Table.COIL: bit_message.ReadCoilsRequest,
    Table.DISCRETE: bit_message.ReadDiscreteInputsRequest,
}


def test_serial_open_failures_name_the_port_and_the_fix(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = transport_for(Host("bus", SerialLink(str(tmp_path / "ttyUSB9"))))
    assert "ttyUSB9 does not exist: is the USB adapter plugged in?" in missing.unreachable()
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    denied = transport_for(Host("bus", SerialLink(str(port))))
    monkeypatch.setattr("os.access", lambda *_: False)  # as a user outside the group
    reason = denied.unreachable()
    assert f"permission denied on serial port {port}" in reason
    assert "usermod -aG" in reason and "SupplementaryGroups=" in reason


@pytest.mark.parametrize(
    ("link", "gap"),
    [
        (SerialLink("/dev/ttyUSB0", 9600), 3.5 * 10 / 9600),  # 8N1: 10 bits a character
        (SerialLink("/dev/ttyUSB0", 9600, parity=Parity.EVEN), 3.5 * 11 / 9600),
        (SerialLink("/dev/ttyUSB0", 19200, stopbits=2), 3.5 * 11 / 19200),
        (SerialLink("/dev/ttyUSB0", 115200), 0.00175),  # fixed above 19200 baud
    ],
)
def test_rtu_silence_between_frames(link: SerialLink, gap: float) -> None:
    assert transport_for(Host("bus", link)).frame_gap == pytest.approx(gap)
    assert transport_for(Host("gw", TcpLink("10.0.0.1"))).frame_gap == 0.0


def test_open_failures_say_why_and_when_descriptors_ran_out() -> None:
    tcp = transport_for(Host("gw", TcpLink("127.0.0.1", 1502)))
    assert tcp.unreachable() == "cannot connect to 127.0.0.1:1502"
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    assert tcp.unreachable(refused) == "cannot connect to 127.0.0.1:1502: Connection refused"
    emfile = OSError(errno.EMFILE, "Too many open files")
    reason = tcp.unreachable(emfile)
    assert "Too many open files" in reason and "out of file descriptors" in reason
    assert "LimitNOFILE" in reason
    serial = transport_for(Host("bus", SerialLink("/dev/ttyUSB0")))
    assert "out of file descriptors" in serial.unreachable(emfile)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: p.write_text(""), "a regular file"),
        (lambda p: p.mkdir(), "a directory"),
        (os.mkfifo, "a FIFO"),
    ],
)
def test_a_serial_path_that_is_no_device_is_named_as_such(tmp_path, make, kind: str) -> None:
    """It used to blame "another program using it"."""
    port = tmp_path / "ttyUSB0"
    make(port)
    reason = transport_for(Host("bus", SerialLink(str(port)))).unreachable()
    assert f"serial port {port} is {kind}" in reason and "not a serial device" in reason
    assert "another program" not in reason


def test_mqtt_connect_failures_say_when_descriptors_ran_out() -> None:
    """aiomqtt re-raises paho's socket error as a bare MqttError (from None); the cause
    is still in its context."""
    import aiomqtt

    from bridge.mqtt import _describe

    try:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise aiomqtt.MqttError(str(exc)) from None
    except aiomqtt.MqttError as wrapped:
        reason = _describe(wrapped)
    assert reason.startswith("Too many open files (the bridge is out of file descriptors")


def test_dev_null_and_dev_zero_are_no_serial_ports() -> None:
    """Character devices, so a plain "is it a character device" check lets them pass."""
    for port in ("/dev/null", "/dev/zero"):
        reason = transport_for(Host("bus", SerialLink(port))).unreachable()
        assert f"serial port {port} is a memory device" in reason, reason


class _Written:
    """Stands in for a TCP connection's transport: keeps what is written."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(bytes(data))


@pytest.mark.parametrize(
    ("table", "reply", "values"),
    [
        (Table.HOLDING, b"\x03\x04\x00\x2a\xff\xfe", [42, 0xFFFE]),
        (Table.INPUT, b"\x04\x04\x00\x07\x00\x08", [7, 8]),
        (Table.COIL, b"\x01\x01\x05", [True, False, True]),
        (Table.DISCRETE, b"\x02\x01\x02", [False, True, False]),
    ],
)
async def test_a_read_on_modbus_tcp_frames_itself_as_pymodbus_would(
    table: Table, reply: bytes, values: list[int] | list[bool]
) -> None:
    """A read on a Modbus TCP link is encoded once and framed by the wire, not by
    pymodbus's framer: the bytes are the ones pymodbus would send, each read with its
    own transaction id, and the reply comes back through the frame guard as before."""
    wire = Wire(Host("gw", TcpLink("127.0.0.1")), SessionStats(), on_out_of_step=print)
    written = _Written()
    wire._client.ctx.transport = written  # type: ignore[assignment]
    job = wire.read_job(7, table, 100, len(values))
    framer = FramerSocket(DecodePDU(False))
    for _ in range(2):
        task = asyncio.ensure_future(job())
        await asyncio.sleep(0)
        sent = written.frames[-1]
        tid = int.from_bytes(sent[:2], "big")
        request = READ_REQUESTS[table](address=100, count=len(values), dev_id=7)
        request.transaction_id = tid
        assert sent == framer.buildFrame(request)
        wire._on_data(mbap_frame(tid, 7, reply))
        assert await task == values
    assert written.frames[0][:2] != written.frames[1][:2]

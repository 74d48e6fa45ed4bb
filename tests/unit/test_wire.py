"""What each kind of link means to the wire, with no connection: why an open failed, the
silence a serial line needs between frames (issue 9)."""

from __future__ import annotations

import pytest

from bridge.model import Host, Parity, SerialLink, TcpLink
from bridge.wire import transport_for


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

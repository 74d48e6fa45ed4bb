"""The session's backoff bookkeeping, with no connection: answers on a session that
sent garbage must not reset the reconnect backoff (issue 7, item 5)."""

from __future__ import annotations

import time

import pytest

from bridge.model import Host, Parity, SerialLink, TcpLink
from bridge.session import CLEAN_AFTER, HostSession, _transport_for


def _up(session: HostSession, *, since: float = 0.0) -> None:
    """Pretend the connector just opened a session (`since` seconds ago)."""
    session._up = True
    session._answered = False
    session._connected_at = time.monotonic() - since


async def test_answers_on_a_poisoned_session_do_not_reset_the_backoff() -> None:
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1")))
    failures = []
    for _ in range(4):
        _up(session)
        session._answered_now()  # a neighbour's poll is answered ...
        session._lost("invalid header", garbage=True)  # ... then the stream is garbage
        failures.append(session._failures)
    assert failures == [1, 2, 3, 4]  # the backoff keeps growing

    # A session that stays clean for CLEAN_AFTER forgives the past.
    _up(session, since=CLEAN_AFTER)
    session._answered_now()
    assert session._failures == 0


async def test_an_ordinary_lost_session_after_answers_does_not_count() -> None:
    session = HostSession(Host(name="gw", link=TcpLink("127.0.0.1")))
    _up(session)
    session._answered_now()
    session._lost("connection closed")
    assert session._failures == 0  # it answered: the host works, reconnect at once
    _up(session)
    session._lost("connection closed")  # no answer at all: a flapping host
    assert session._failures == 1


def test_serial_open_failures_name_the_port_and_the_fix(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = _transport_for(Host("bus", SerialLink(str(tmp_path / "ttyUSB9"))))
    assert "ttyUSB9 does not exist: is the USB adapter plugged in?" in missing.unreachable()
    port = tmp_path / "ttyUSB0"
    port.write_text("")
    denied = _transport_for(Host("bus", SerialLink(str(port))))
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
    assert _transport_for(Host("bus", link)).frame_gap == pytest.approx(gap)
    assert _transport_for(Host("gw", TcpLink("10.0.0.1"))).frame_gap == 0.0

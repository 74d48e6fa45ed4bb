"""Which availability changes of devices are logged, and how often: once per change, and
a host that is down is one line for the host, not one per device (issue 7)."""

from __future__ import annotations

import logging
from typing import Any

from bridge.errors import ExceptionReply, HostUnavailable, RequestTimeout
from bridge.logs import OnlineLog
from bridge.model import DataType, Device, Point, Table

POINT = Point("p", Table.HOLDING, 0, DataType.UINT16, interval=1.0)


def _device(name: str, host: str = "gw", unit: int = 1) -> Device:
    return Device(name=name, host=host, unit=unit, interval=1.0, points=(POINT,))


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, message: str, *args: Any) -> None:
        self.lines.append((level, message % args))

    def take(self) -> list[tuple[int, str]]:
        lines, self.lines = self.lines, []
        return lines


def test_a_device_going_offline_and_back_is_one_line_each() -> None:
    lines = Lines()
    log = OnlineLog(lines)
    d = _device("meter")
    timeout = RequestTimeout("gw", 1, "no answer within 1s")
    log.offline(d, timeout)
    assert lines.take() == [
        (logging.WARNING, "device meter (host gw, unit 1) offline: no answer within 1s")
    ]
    log.offline(d, RequestTimeout("gw", 1, "no answer within 1s"))  # the same reason
    assert lines.take() == []
    refused = ExceptionReply("gw", 1, 2, "read holding 0+1")
    log.offline(d, refused)  # another reason: said, but it is no news
    assert lines.take() == [
        (logging.DEBUG, f"device meter (host gw, unit 1) offline: {refused.reason}")
    ]
    log.online(d)
    assert lines.take() == [(logging.INFO, "device meter (host gw, unit 1) is back online")]
    log.online(d)  # online already
    assert lines.take() == []


def test_a_host_down_is_one_line_when_its_devices_are_back() -> None:
    lines = Lines()
    log = OnlineLog(lines)
    devices = [_device(f"m{u}", unit=u) for u in (1, 2, 3)]
    for d in devices:
        log.offline(d, HostUnavailable("gw", d.unit, "not connected"))
    assert [level for level, _ in lines.take()] == [logging.DEBUG] * 3
    for d in devices:
        log.online(d)
    assert lines.take() == [(logging.INFO, "host gw: 3 device(s) back online")]


def test_a_device_level_fault_while_the_host_was_down_is_news() -> None:
    lines = Lines()
    log = OnlineLog(lines)
    a, b = _device("a", unit=1), _device("b", unit=2)
    log.offline(a, HostUnavailable("gw", 1, "not connected"))
    log.offline(b, HostUnavailable("gw", 2, "not connected"))
    lines.take()
    log.online(a)  # the host is back ...
    log.offline(b, RequestTimeout("gw", 2, "no answer within 1s"))  # ... but b is silent
    assert lines.take() == [
        (logging.INFO, "host gw: 1 device(s) back online"),
        (logging.WARNING, "device b (host gw, unit 2) offline: no answer within 1s"),
    ]


def test_a_removed_device_is_forgotten() -> None:
    lines = Lines()
    log = OnlineLog(lines)
    a, b = _device("a", unit=1), _device("b", unit=2)
    log.offline(a, HostUnavailable("gw", 1, "not connected"))
    log.offline(b, HostUnavailable("gw", 2, "not connected"))
    log.forget("b")  # a reload removed b
    assert "b" not in log.failing
    lines.take()
    log.online(a)
    assert lines.take() == [(logging.INFO, "host gw: 1 device(s) back online")]
    log.forget("a")
    assert (log.failing, log.host_down, log.host_back) == ({}, {}, {})

"""The request heads the metrics endpoint answers and refuses (`metrics.read_head`), and
how many connections it holds under a descriptor limit. Pure: no socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.metrics import (
    MAX_CONNECTIONS,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Refusal,
    Request,
    connection_cap,
    read_head,
)

PROMETHEUS = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9108\r\nUser-Agent: Prometheus/2.53.0\r\n"
    b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4\r\n"
    b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
)


def test_a_prometheus_scrape_is_read_whole() -> None:
    head = read_head(PROMETHEUS)
    assert isinstance(head, Request)
    assert (head.method, head.path, head.query) == ("GET", "/metrics", "")
    assert head.headers["accept-encoding"] == "gzip"
    assert head.headers["user-agent"] == "Prometheus/2.53.0"


def test_every_prefix_of_a_good_head_waits_for_more() -> None:
    for end in range(len(PROMETHEUS)):
        assert read_head(PROMETHEUS[:end]) is None, PROMETHEUS[:end]


def test_bare_newlines_and_a_query() -> None:
    head = read_head(b"HEAD /metrics?name[]=up HTTP/1.0\nAccept: */*\n\n")
    assert isinstance(head, Request)
    assert (head.method, head.query, head.headers) == ("HEAD", "name[]=up", {"accept": "*/*"})


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * MAX_REQUEST_LINE, 414),  # refused before the line ends
        (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: " + b"b" * MAX_HEAD, 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 2), 431),  # before the end
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE / HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics\r\n", 400),  # HTTP/0.9: no version, used to be held forever
        (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: b\r\n\r\n", 400),
    ],
)
def test_refused_heads(data: bytes, status: int) -> None:
    head = read_head(data)
    assert isinstance(head, Refusal), head
    assert head.status == status


@given(st.binary(max_size=300))
def test_any_bytes_give_a_head_a_refusal_or_a_wait(data: bytes) -> None:
    head = read_head(data)
    assert head is None or isinstance(head, Request | Refusal)
    if head is None:  # waiting is only allowed for what can still become a head
        assert len(data) <= MAX_HEAD


def test_the_connection_cap_leaves_most_descriptors_to_the_bridge() -> None:
    assert connection_cap(1024) == MAX_CONNECTIONS == 64
    assert connection_cap(524288) == MAX_CONNECTIONS
    assert connection_cap(256) == 16
    assert connection_cap(20) == 2
    for limit in (32, 100, 1024, 4096):
        assert connection_cap(limit) <= limit // 16

"""The Mosquitto fixture and the MQTT watcher: publish, receive, restart, auth, TLS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiomqtt
import pytest
from broker import Broker, MqttWatcher, TlsFiles, port_accepts

pytestmark = pytest.mark.integration

Watch = Callable[..., Awaitable[MqttWatcher]]


async def test_publish_receive_and_restart_on_same_port(
    broker: Broker, mqtt_watcher: Watch
) -> None:
    watcher = await mqtt_watcher(broker, "test/#")
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("test/a", b"1", qos=1, retain=True)
        await client.publish("test/b", b'{"v": 2}', qos=0)
    message = await watcher.wait_for("test/b")
    assert message.json() == {"v": 2}
    latest = watcher.latest("test/a")
    assert latest is not None
    assert (latest.payload, latest.retain) == (b"1", False)  # live delivery: no retain flag

    port = broker.port
    since = watcher.mark()
    await broker.arestart()
    assert broker.port == port
    assert broker.starts == 2
    await watcher.wait_subscribed()
    assert watcher.connects == 2
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("test/a", b"after restart", qos=1)
    message = await watcher.wait_for(lambda m: m.payload == b"after restart", since=since)
    assert message.topic == "test/a"
    # persistence is off: the retained message did not survive the restart
    assert not any(m.retain for m in watcher.messages[since:])


async def test_stop_refuses_connections_and_start_resumes(broker: Broker) -> None:
    broker.stop()
    assert not broker.running
    assert not port_accepts(broker.host, broker.port)
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, timeout=1):
            pass
    broker.start()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("x", b"y")


async def test_wait_for_times_out_with_a_summary(broker: Broker, mqtt_watcher: Watch) -> None:
    watcher = await mqtt_watcher(broker, "t/#")
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("t/other", b"zzz", qos=1)
    await watcher.wait_for("t/other")
    with pytest.raises(TimeoutError, match="t/other"):
        await watcher.wait_for("t/missing", timeout=0.2)


async def test_password_broker(broker_factory: Callable[..., Broker], mqtt_watcher: Watch) -> None:
    broker = broker_factory(users={"bridge": "s3cret", "viewer": "other"})
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, username="bridge", password="wrong"):
            pass
    watcher = await mqtt_watcher(broker, "#", username="viewer", password="other")
    async with aiomqtt.Client(broker.host, broker.port, username="bridge", password="s3cret") as c:
        await c.publish("auth/ok", b"1", qos=1)
    assert (await watcher.wait_for("auth/ok")).payload == b"1"


async def test_tls_broker_with_client_certificates(
    broker_factory: Callable[..., Broker], tls_files: TlsFiles, mqtt_watcher: Watch
) -> None:
    broker = broker_factory(tls=tls_files, require_certificate=True)
    watcher = await mqtt_watcher(broker, "tls/#", tls_context=tls_files.client_context())
    async with aiomqtt.Client(
        "localhost", broker.port, tls_context=tls_files.client_context()
    ) as client:
        await client.publish("tls/ok", b"1", qos=1)
    assert (await watcher.wait_for("tls/ok")).payload == b"1"
    # without a client certificate the handshake is refused
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            tls_context=tls_files.client_context(with_client_cert=False),
            timeout=1,
        ):
            pass
    assert "peer did not return a certificate" in broker.log_text()

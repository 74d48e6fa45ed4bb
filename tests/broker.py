"""Test helpers: a real Mosquitto on loopback, TLS material, and an MQTT watcher.

`Broker` runs `mosquitto -c <generated config>` as a subprocess on a free loopback port
and can be stopped, killed, frozen and started again on the same port. `MqttWatcher`
subscribes with aiomqtt and records every message so tests can wait for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- TLS material --------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA with one server and one client certificate (PEM files)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_tls_files(directory: Path, *, hostname: str = "localhost") -> TlsFiles:
    """Create CA, server (SAN localhost + 127.0.0.1) and client certificates with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to generate TLS test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    run(
        "req", "-x509", *ec_key, "-days", "3", "-subj", "/CN=bridge test CA",
        "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    leaves = [
        ("server", files.server_key, files.server_cert, hostname,
         f"subjectAltName=DNS:{hostname},DNS:localhost,IP:127.0.0.1\n"
         "extendedKeyUsage=serverAuth\n"),
        ("client", files.client_key, files.client_cert, "bridge test client",
         "extendedKeyUsage=clientAuth\n"),
    ]  # fmt: skip
    for name, key, cert, common_name, extensions in leaves:
        csr = directory / f"{name}.csr"
        ext = directory / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyAgreement\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n" + extensions
        )
        run("req", "-new", *ec_key, "-subj", f"/CN={common_name}",
            "-keyout", str(key), "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(files.ca_cert),
            "-CAkey", str(files.ca_key), "-CAcreateserial", "-days", "3",
            "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return files


# -- Mosquitto -------------------------------------------------------------------------------


class Broker:
    """A Mosquitto subprocess on loopback, restartable on the same port.

    `users` enables password authentication (anonymous access off); `tls` turns the
    listener into a TLS listener, with `require_certificate` for client certificates.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        extra_config: str = "",
        executable: str | None = None,
    ) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed")
        self.executable = exe
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        self.users = dict(users) if users else None
        self.tls = tls
        self.require_certificate = require_certificate
        self.extra_config = extra_config
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.password_file = directory / "passwords" if self.users else None
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        if self.users:
            self._write_password_file(self.users)

    # -- configuration --------------------------------------------------------------------

    def _write_password_file(self, users: Mapping[str, str]) -> None:
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise RuntimeError("mosquitto_passwd is needed for a broker with users")
        assert self.password_file is not None
        create = ["-c"]
        for user, password in users.items():
            subprocess.run(
                [tool, "-b", *create, str(self.password_file), user, password],
                check=True,
                capture_output=True,
            )
            create = []

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Mosquitto started as root drops to the `mosquitto` user, which cannot
            # read files in pytest's private tmp directories: stay the current user.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 5.0) -> None:
        """Start Mosquitto (on the same port as before) and wait until it accepts connections."""
        if self.running:
            return
        attempts = 1 if self._fixed_port or self.starts else 3
        for attempt in range(attempts):
            try:
                self._launch(timeout)
            except RuntimeError:
                if attempt + 1 == attempts or "in use" not in self.log_text():
                    raise
                self.port = free_port(self.host)  # lost a race for the port: pick another
            else:
                self.starts += 1
                return

    def _launch(self, timeout: float) -> None:
        self.config_path.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not port_accepts(self.host, self.port):
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(
                    f"mosquitto exited at start on port {self.port}:\n{self.log_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not listen on port {self.port} in {timeout}s")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate cleanly (SIGTERM; SIGKILL after `timeout`). Clients see a disconnect."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # in case it was frozen
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as on a crash or power loss of the broker host."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, timeout: float = 5.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a silently dead broker)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    # Async wrappers: starting waits for the port, which would block the event loop.
    async def astart(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop, timeout)

    async def arestart(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.restart, timeout)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Broker {self.host}:{self.port} {state}>"


# -- watching MQTT traffic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    time: float  # time.monotonic()

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


def _as_bytes(payload: object) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode()


@dataclass
class MqttWatcher:
    """Subscribe to `topic` and record every message; reconnects if the broker restarts.

    Use as ``async with MqttWatcher(host, port, "bridge/#") as watcher:`` or through the
    `mqtt_watcher` fixture.
    """

    host: str
    port: int
    topic: str = "#"
    qos: int = 1
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    identifier: str | None = None
    reconnect: bool = True
    reconnect_interval: float = 0.1
    messages: list[Received] = field(default_factory=list)
    connects: int = 0

    def __post_init__(self) -> None:
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self.username,
            password=self.password,
            tls_context=self.tls_context,
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._new_message = asyncio.Event()

    async def start(self, timeout: float = 5.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-watcher {self.topic}")
        subscribed = asyncio.create_task(self._subscribed.wait())
        done, _ = await asyncio.wait(
            {self._task, subscribed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if subscribed not in done:
            subscribed.cancel()
            if self._task in done:
                self._task.result()  # raises the connection error
            await self.stop()
            raise TimeoutError(f"watcher could not subscribe to {self.topic!r} in {timeout}s")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                async with asyncio.timeout(5):
                    await task

    async def __aenter__(self) -> MqttWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                async with self._client:
                    await self._client.subscribe(self.topic, qos=self.qos)
                    self.connects += 1
                    self._subscribed.set()
                    async for message in self._client.messages:
                        self._record(message)
            except aiomqtt.MqttError:
                self._subscribed.clear()
                if not self.reconnect:
                    raise
            await asyncio.sleep(self.reconnect_interval)

    def _record(self, message: aiomqtt.Message) -> None:
        self.messages.append(
            Received(
                topic=str(message.topic),
                payload=_as_bytes(message.payload),
                retain=bool(message.retain),
                qos=int(message.qos),
                time=time.monotonic(),
            )
        )
        event, self._new_message = self._new_message, asyncio.Event()
        event.set()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    async def wait_subscribed(self, timeout: float = 5.0) -> None:
        """After a broker restart: wait until the watcher is subscribed again."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    # -- queries ---------------------------------------------------------------------------------

    def mark(self) -> int:
        """Position to pass as `since=` to only consider messages received from now on."""
        return len(self.messages)

    def clear(self) -> None:
        self.messages.clear()

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def latest(self, topic: str) -> Received | None:
        for message in reversed(self.messages):
            if message.topic == topic:
                return message
        return None

    def topics(self) -> set[str]:
        return {m.topic for m in self.messages}

    async def wait_for(
        self,
        predicate: Callable[[Received], bool] | str,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Received:
        """First message from index `since` on that matches (already recorded or future).

        `predicate` may be a topic name. Raises TimeoutError listing what did arrive.
        """
        match: Callable[[Received], bool]
        if isinstance(predicate, str):
            topic = predicate

            def match(m: Received) -> bool:
                return m.topic == topic
        else:
            match = predicate
        index = since
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            while index < len(self.messages):
                message = self.messages[index]
                index += 1
                if match(message):
                    return message
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                seen = [(m.topic, m.payload[:60]) for m in self.messages[since:]][-10:]
                raise TimeoutError(
                    f"no matching message on {self.topic!r} within {timeout}s; "
                    f"{len(self.messages) - since} received, last ones: {seen}"
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._new_message.wait()

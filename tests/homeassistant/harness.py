"""A real Home Assistant Core as a test client: configured for a test broker, driven
over its REST API.

Home Assistant needs Python 3.13, so it runs from its own virtual environment
(`BRIDGE_HA_PYTHON`, e.g. /work/ha-venv/bin/python; `make ha-venv` builds one) in a
child process, with a throw-away configuration directory:

- `configuration.yaml`: no `default_config`, only `http` (loopback, a free port),
  `api`, `onboarding` and the logger;
- the MQTT broker is a config entry, not YAML: a seeded `.storage/core.config_entries`
  holding only broker and port (Home Assistant migrates it on start);
- the owner account is created through onboarding, and its code exchanged for an
  access token.

Only the standard library is used here, so the test runs in the bridge's own venv.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CLIENT_ID = "http://127.0.0.1/"  # onboarding and /auth/token want a URL as client id

CONFIGURATION = """\
homeassistant:
  name: Bridge test
  latitude: 52.52
  longitude: 13.40
  elevation: 34
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
onboarding:
logger:
  default: info
"""

# Lines of Home Assistant's log that mean it did not take a discovery message (or a
# state) as sent. Matched case-insensitively.
DISCOVERY_TROUBLE = (
    r"discovery",
    r"Invalid MQTT",
    r"Unable to parse",
    r"not valid together",
    r"Template variable",
    r"Invalid state message",
    r"Invalid option",
    r"is not a Number",
    r"No matching payload",
    r"cannot be added",
    r"Error adding entit",
    r"unique ID",
)


class HomeAssistantError(RuntimeError):
    pass


class HomeAssistantCore:
    """One Home Assistant Core process with its own config directory."""

    def __init__(
        self, python: str, config_dir: Path, *, http_port: int, broker_port: int, extra: str = ""
    ):
        self.python = python
        self.extra = extra  # more configuration.yaml, e.g. a `modbus:` section
        self.config_dir = config_dir
        self.http_port = http_port
        self.broker_port = broker_port
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.started_at = 0.0

    # -- setup ------------------------------------------------------------------

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION.format(port=self.http_port) + self.extra
        )
        storage = self.config_dir / ".storage"
        storage.mkdir(exist_ok=True)
        entries = {
            "version": 1,
            "minor_version": 1,
            "key": "core.config_entries",
            "data": {
                "entries": [
                    {
                        "entry_id": "01JBRIDGETESTMQTT0000000000",
                        "version": 1,
                        "minor_version": 1,
                        "domain": "mqtt",
                        "title": "Test broker",
                        "data": {"broker": "127.0.0.1", "port": self.broker_port},
                        "options": {},
                        "source": "user",
                    }
                ]
            },
        }
        (storage / "core.config_entries").write_text(json.dumps(entries))

    def start(self) -> None:
        self.write_config()
        log = (self.config_dir / "stdout.log").open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [self.python, "-m", "homeassistant", "--config", str(self.config_dir), "--skip-pip"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    async def stop(self, timeout: float = 20.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP -------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        form: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = 10.0,
    ) -> Any:
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise HomeAssistantError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return await asyncio.to_thread(self._request, method, path, body, **kw)

    async def wait_http(self, timeout: float = 120.0) -> float:
        """Wait until the HTTP API answers; return seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HomeAssistantError(f"Home Assistant exited:\n{self.log_tail()}")
            try:
                await self.call("GET", "/api/onboarding", auth=False, timeout=2.0)
                return time.monotonic() - self.started_at
            except (OSError, HomeAssistantError):
                await asyncio.sleep(0.5)
        raise HomeAssistantError(f"HTTP API not up after {timeout}s:\n{self.log_tail()}")

    async def onboard(self) -> None:
        """Create the owner account and get an access token."""
        created = await self.call(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": CLIENT_ID,
                "name": "Test",
                "username": "test",
                "password": "bridge-test-password",
                "language": "en",
            },
            auth=False,
        )
        token = await self.call(
            "POST",
            "/auth/token",
            form={
                "grant_type": "authorization_code",
                "code": created["auth_code"],
                "client_id": CLIENT_ID,
            },
            auth=False,
        )
        self.token = token["access_token"]

    # -- API ------------------------------------------------------------------

    async def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in await self.call("GET", "/api/states")}

    async def state(self, entity_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", f"/api/states/{entity_id}")
        return result

    async def service(self, domain: str, service: str, **data: Any) -> Any:
        return await self.call("POST", f"/api/services/{domain}/{service}", data)

    async def template(self, text: str) -> str:
        return str(await self.call("POST", "/api/template", {"template": text}))

    async def wait_state(self, entity_id: str, want: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the entity's state is `want` (a string, or a predicate)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                last = await self.state(entity_id)
            except HomeAssistantError:
                last = None
            if last is not None and (
                want(last["state"]) if callable(want) else last["state"] == want
            ):
                return last
            await asyncio.sleep(0.3)
        got = None if last is None else last["state"]
        raise HomeAssistantError(f"{entity_id}: state {got!r} after {timeout}s, wanted {want!r}")

    async def wait_entities(self, entity_ids: set[str], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        states: dict[str, Any] = {}
        while time.monotonic() < deadline:
            states = await self.states()
            if entity_ids <= states.keys():
                return states
            await asyncio.sleep(0.5)
        missing = sorted(entity_ids - states.keys())
        raise HomeAssistantError(f"entities missing after {timeout}s: {missing}")

    # -- log --------------------------------------------------------------------

    def log_text(self) -> str:
        path = self.config_dir / "home-assistant.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text() or (self.config_dir / "stdout.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def wait_log(self, match: Any, timeout: float = 15.0) -> str:
        """Wait for a line of Home Assistant's log for which `match(line)` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if match(line):
                    return line
            await asyncio.sleep(0.3)
        raise HomeAssistantError(f"no such line in Home Assistant's log after {timeout}s")

    def trouble(self) -> list[str]:
        """WARNING and ERROR lines about MQTT, discovery, entities or templates."""
        pattern = re.compile("|".join(DISCOVERY_TROUBLE), re.IGNORECASE)
        out = []
        for line in self.log_text().splitlines():
            if (" WARNING " in line or " ERROR " in line) and (
                pattern.search(line) or "mqtt" in line.lower()
            ):
                out.append(line)
        return out

"""Optional features, and the one interface the composition root wires them through.

A feature is an optional part of the bridge that lives beside the core path (poll ->
state -> MQTT, command -> write): Home Assistant discovery today (`homeassistant.py`).
The composition root (`app.Bridge`) builds every kind of feature once, with the `Hub`
(the running bridge as a feature sees it), and calls the hooks below at fixed points of
its life. A feature reads its own configuration section from `hub.config` and stays
idle while it is switched off, so a reload that switches it on or off is one more
reload to it. Every hook has a default that does nothing: a feature overrides the
ones it needs.

Order, as the root keeps it:

- start: `start()` after the MQTT link task and before polling starts;
- every MQTT (re)connect: `connected()` of each feature, then the full state; each
  connection that ends: `disconnected(since)`;
- a message on one of a feature's `routes()` (asked each time a link is built):
  its handler, at once, on the event loop;
- a poll or a command's read-back that changed what is published for a device:
  `device_changed(state, messages)`;
- a reload: `reload(old, new, plan)` before anything changes (the messages it returns
  are published at the old place and the new), `reloaded()` once `hub.config` is the
  new one;
- shutdown: `stopping()` while the link is still up (before every device and the
  bridge go `offline`), `stop()` after the link is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.logs import Throttle
from bridge.messages import Incoming, Message
from bridge.model import BridgeConfig
from bridge.reload import ReloadPlan
from bridge.state import DeviceState, StateCache
from bridge.topics import Topics

Route = Callable[[Incoming], None]
"""A handler of the messages on one topic filter (subscribed with retained messages
replayed); called at once, on the event loop: it must not block."""


class Hub(Protocol):
    """The running bridge, as a feature sees it. `config`, `topics` and `state` are the
    current ones: a reload replaces them."""

    @property
    def config(self) -> BridgeConfig: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def state(self) -> StateCache: ...

    @property
    def mqtt_connected(self) -> bool: ...

    @property
    def throttle(self) -> Throttle:
        """The bridge's throttle for repeated log lines (flushed with each health report)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Queue one message on the MQTT link (never blocks; the newest per topic wins)."""

    def send(self, messages: Iterable[Message]) -> None:
        """`publish` each of `messages`."""

    def publish_acked(self, topic: str, payload: bytes, on_done: Callable[[bool], None]) -> None:
        """Queue one message that must each be delivered (QoS 1, not retained, never
        replaced by a newer one, given up when this connection ends): `on_done(True)`
        once the broker acknowledged it, `on_done(False)` when it was given up."""

    def republish(self) -> None:
        """Everything again, as after a connect: every feature's `connected()`, then the
        full state."""

    async def command(self, message: Incoming) -> None:
        """Run a command through the validated write path, as if it had arrived on its
        topic (`<base>/<device>[/<point>]/set` or `/get`); it is answered there."""


@dataclass
class Changes:
    """What a feature publishes because of a reload.

    `leaving`: at the old place (sent before the link closes when the broker or the base
    topic moves; otherwise with the other changes). `arriving`: at the new place, sent
    only when the link is kept (a new link gets `connected()` anyway).
    """

    leaving: list[Message] = field(default_factory=list)
    arriving: list[Message] = field(default_factory=list)


class Feature:
    """An optional part of the bridge; see the module's docstring for when each hook runs."""

    name = "feature"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def routes(self) -> Mapping[str, Route]:
        """Topic filters this feature receives on the link being built, and their handlers."""
        return {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def connected(self) -> None:
        """The MQTT link (re)connected: publish what this feature owns (before the state)."""

    def device_changed(self, state: DeviceState, messages: Sequence[Message]) -> None:
        """What the bridge publishes for a device changed: its availability, values or
        both. `state` as it is now; `messages` what is being published for it."""

    def reload(self, old: BridgeConfig, new: BridgeConfig, plan: ReloadPlan) -> Changes:
        """A reload is about to run `new`: say what to publish; take `new` over in
        `reloaded` (until then, the old configuration is still the one running)."""
        return Changes()

    def reloaded(self) -> None:
        """The reload's configuration is the one running now (`hub.config`)."""

    def disconnected(self, since: float | None) -> None:
        """The MQTT link's connection ended. `since`: when the oldest message it had not
        delivered was queued (None: everything was delivered)."""

    def stopping(self) -> None:
        """Shutdown, the link still up: the feature's last words."""

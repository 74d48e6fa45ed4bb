"""Home Assistant MQTT discovery, wired as a feature (`homeassistant.enabled`).

The messages are built once from the configuration (`discovery.Discovery`, pure) and
published, retained, before the state on every connect and again when Home Assistant
announces itself (`online` on its status topic: it may have restarted and lost what it
had). The broker replays this bridge's earlier retained discovery when the link
subscribes: what is stale is cleared (`Discovery.repair`). A reload publishes the
difference (`reload.discovery_changes`): an empty retained message for each device no
longer announced, and every new or changed one.

Home Assistant's commands (number, switch, select) arrive on the ordinary command
topics, and take the ordinary write path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bridge.discovery import Discovery
from bridge.feature import Changes, Feature, Hub, Route
from bridge.messages import Incoming
from bridge.model import BridgeConfig
from bridge.mqtt import MAX_INCOMING_PACKET
from bridge.packets import publish_packet_size
from bridge.payloads import ONLINE
from bridge.reload import ReloadPlan, discovery_changes

log = logging.getLogger("bridge")


def _discovery(config: BridgeConfig) -> Discovery | None:
    return Discovery(config) if config.homeassistant.enabled else None


def _announced(discovery: Discovery | None) -> dict[str, bytes]:
    """Topic -> payload of every discovery message (none without Home Assistant)."""
    return {} if discovery is None else {m.topic: m.payload for m in discovery.messages()}


class HomeAssistant(Feature):
    name = "homeassistant"

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.discovery = _discovery(hub.config)
        self.announced = _announced(self.discovery)
        self._next: tuple[Discovery | None, dict[str, bytes]] | None = None  # a reload's

    def routes(self) -> Mapping[str, Route]:
        """Home Assistant's status topic and, where it can be received, this bridge's
        earlier discovery."""
        if self.discovery is None:
            return {}
        config = self.hub.config
        routes: dict[str, Route] = {config.homeassistant.status_topic: self._on_status}
        if self._can_receive_discovery(config):
            routes[self.discovery.filter] = self._on_old_discovery
        return routes

    def connected(self) -> None:
        for topic, payload in self.announced.items():
            self.hub.publish(topic, payload, retain=True)

    def reload(self, old: BridgeConfig, new: BridgeConfig, plan: ReloadPlan) -> Changes:
        discovery = _discovery(new)
        announced = _announced(discovery)
        stale, fresh = discovery_changes(self.announced, announced)
        self._next = (discovery, announced)
        return Changes(leaving=stale, arriving=fresh)

    def reloaded(self) -> None:
        if self._next is not None:
            self.discovery, self.announced = self._next
            self._next = None

    def _can_receive_discovery(self, config: BridgeConfig) -> bool:
        """Whether the bridge may subscribe to its own discovery topics. It also receives
        what it publishes there, and on MQTT 3.1.1 a packet larger than it accepts drops
        the connection (MQTT 5 brokers just do not send it), so a device too large for
        that means no clean-up of stale discovery, with a warning."""
        if config.mqtt.protocol == 5:
            return True
        for topic, payload in self.announced.items():
            size = publish_packet_size(topic, len(payload), qos=config.mqtt.qos, v5=False)
            if size > MAX_INCOMING_PACKET:
                log.warning(
                    "Home Assistant: the discovery on %s is %d bytes, more than the %d this "
                    "bridge accepts on MQTT 3.1.1: stale discovery is not cleared at start "
                    "(use protocol 5, or fewer points per device)",
                    topic,
                    size,
                    MAX_INCOMING_PACKET,
                )
                return False
        return True

    def _on_status(self, message: Incoming) -> None:
        """Home Assistant's birth (`online`; its last will says `offline`): it may have
        restarted and lost what it had, so it gets discovery and state again."""
        if message.payload.strip() == ONLINE.encode():
            self.hub.throttle.log(  # a flood of births is one line, then a count
                logging.INFO,
                "ha-birth",
                "Home Assistant births",
                "Home Assistant is online: publishing discovery and state again",
            )
            self.hub.republish()

    def _on_old_discovery(self, message: Incoming) -> None:
        """A discovery message under this bridge's client id (the broker replays the
        retained ones when the link subscribes): clear it if it is stale."""
        if self.discovery is None:
            return
        fix = self.discovery.repair(message.topic, message.payload, self.announced)
        if fix is None:
            return
        if fix.payload:
            log.info("Home Assistant: removing points no longer configured (%s)", fix.topic)
        else:
            log.info("Home Assistant: removing a device no longer configured (%s)", fix.topic)
        self.hub.publish(fix.topic, fix.payload, retain=True)

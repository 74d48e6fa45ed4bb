"""modbus-mqtt-bridge: Modbus devices (TCP, RTU through a gateway, serial RTU) to MQTT, one
persistent session per host."""

__version__ = "0.1.0"
__all__ = ["__version__"]

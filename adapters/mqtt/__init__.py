"""MQTT brokers as a flow source (aiomqtt on paho-mqtt): the `mqtt` endpoint says which broker and how
to log in, and MqttIngress (named by engine.sources.MqttSource) lands each QoS 1 message in JetStream
before acknowledging it.

Importing this package registers the `mqtt` adapter; the names below are what callers and tests use.
"""

from adapters.mqtt.config import MqttAdapter, MqttEndpointConfig
from adapters.mqtt.ingress import MqttIngress, content_type, identity_of

__all__ = ["MqttAdapter", "MqttEndpointConfig", "MqttIngress", "content_type", "identity_of"]

"""Simulators of PLU's smart-meter vendor platforms (pull APIs: four JSON ones and vendor 5's Green Button
ESPI Atom feed), vendor 3's webhook push and vendor 4's MQTT feed: real servers on loopback ports with
deterministic readings for N meters.

    async with Vendor2Platform(meters=500, clock=ManualClock(now)) as v2:
        v2.url, v2.requests, v2.max_concurrent, v2.fail_next(2, 503), v2.expire_tokens()

Each vendor module's docstring is its API reference (paths, auth, paging, record format).
"""

from sandbox.meters.mqtt_publisher import MqttPublisher
from sandbox.meters.platform import Refusal, VendorPlatform
from sandbox.meters.readings import Meter, ManualClock, Reading, ReadingSource, months_back
from sandbox.meters.vendor1 import Vendor1Platform
from sandbox.meters.vendor2 import Vendor2Platform
from sandbox.meters.vendor3 import Vendor3Platform
from sandbox.meters.vendor4 import Vendor4Platform
from sandbox.meters.vendor5 import Vendor5Platform
from sandbox.meters.webhook import Delivery, WebhookSender

PLATFORMS = {"vendor1": Vendor1Platform, "vendor2": Vendor2Platform, "vendor3": Vendor3Platform,
             "vendor4": Vendor4Platform, "vendor5": Vendor5Platform}

__all__ = ["PLATFORMS", "Delivery", "ManualClock", "Meter", "MqttPublisher", "Reading", "ReadingSource", "Refusal",
           "Vendor1Platform", "Vendor2Platform", "Vendor3Platform", "Vendor4Platform", "Vendor5Platform", "VendorPlatform",
           "WebhookSender", "months_back"]

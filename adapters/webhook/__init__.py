"""Webhooks as a flow source: WebhookIngress (named by engine.sources.WebhookSource) serves a path on the
runner's one ingress HTTP server (config `http_ingress`), authenticates, and stores before it answers.
"""

from adapters.webhook.auth import HmacCheck, Refused, TokenCheck, parse_signature
from adapters.webhook.ingress import WebhookIngress
from adapters.webhook.server import IngressServer

__all__ = ["HmacCheck", "IngressServer", "Refused", "TokenCheck", "WebhookIngress", "parse_signature"]

"""HTTP/JSON endpoints (Power Sales, smart-meter vendor APIs, CRM callbacks) as flow call targets.

Built directly on aiohttp.ClientSession, not httpx, because httpx's overhead cannot be transported
away: in bench/http_call.py (2 cores, 4 concurrent calls, sink in its own process) a plain aiohttp
loop ran ~7.2K req/s at ~0.14 ms client CPU per call, httpx's default pool ~1.3K req/s at ~0.79 ms,
and httpx over httpx-aiohttp's AiohttpTransport only ~2.4K req/s at ~0.42 ms (0.33x, short of the
0.8x target), while this adapter runs at 0.89-0.97x of the aiohttp loop (~0.15 ms per call).

The call body: POST/PUT/PATCH send it as JSON; GET/DELETE send its top-level scalar fields (lists
repeat the parameter) as query parameters, less the fields used in the path template. A reserved
top-level key `_url` holds an absolute URL to call as given (a vendor's next-page link), which must
be on the endpoint's own scheme, host and port; the other fields still go along. `auth:` adds an API
key header, basic auth, OAuth2 client credentials (client_secret_basic, client_secret_post or
private_key_jwt) or vendor 4's request signature (adapters/http/auth.py).

Answers: JSON (application/json, +json) is parsed; XML (application/xml, text/xml, +xml) is handed over
as text decoded in the encoding it declares (BOM, then the charset parameter, then the XML declaration;
RFC 7303), without its declaration so `lxml.etree.fromstring(text)` reads it; anything else as text.
An answer that is not what it says is UnparseableAnswer (the target's fault, not the message's).

Every failure leaves `call()` as an engine.errors class, so retry, breaker and DLQ policies never
see a protocol exception.
"""

from adapters.http.adapter import HttpAdapter, HttpEndpointConfig, HttpOperation
from adapters.http.auth import AuthConfig
from adapters.http.wire import SNIPPET, URL_KEY, http_url, parse_retry_after, snippet, template_fields

__all__ = ["SNIPPET", "URL_KEY", "AuthConfig", "HttpAdapter", "HttpEndpointConfig", "HttpOperation",
           "http_url", "parse_retry_after", "snippet", "template_fields"]

"""The http adapter's OAuth2 client authentication (client_secret_basic, client_secret_post,
private_key_jwt) against a real token endpoint on a loopback port that checks each as RFC 6749 §2.3.1
and RFC 7523 §3 say, and XML answers handed over in the encoding they declare (RFC 7303)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.http import HttpAdapter, HttpEndpointConfig
from adapters.http.auth import JWT_BEARER, OAuth2ClientCredentials, OAuth2Settings
from adapters.http.wire import xml_encoding, xml_text
from engine.adapter import CallContext, Services
from engine.clock import ManualClock
from engine.errors import ConfigError, TargetRejected, UnparseableAnswer

CLIENT_ID = "plu hub/ü"            # characters form-urlencoding changes, in the id too
SECRET = "s3cr=t:+/ é%"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
EC_PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


class TokenServer:
    """A token endpoint that accepts exactly one client authentication method, strictly, and an XML
    resource whose bytes and Content-Type a test sets."""

    def __init__(self) -> None:
        self.method = "client_secret_basic"
        self.seen: list[dict[str, Any]] = []
        self.jtis: set[str] = set()
        self.xml = (b"", "application/xml")
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> "TokenServer":
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/data", self._data)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def refuse(self, why: str) -> web.Response:
        return web.json_response({"error": "invalid_client", "error_description": why}, status=401,
                                 headers={"WWW-Authenticate": 'Basic realm="t"'})

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        header = request.headers.get("Authorization")
        self.seen.append({"form": form, "authorization": header})
        used = [m for m, present in (("client_secret_basic", header is not None),
                                     ("client_secret_post", "client_secret" in form),
                                     ("private_key_jwt", "client_assertion" in form)) if present]
        if used != [self.method]:  # RFC 6749 §2.3: exactly one method, and ours
            return self.refuse(f"expected {self.method}, got {used or 'none'}")
        if self.method == "client_secret_basic":
            login, _, password = base64.b64decode(header.split(" ", 1)[1]).decode().partition(":")
            ok = (unquote_plus(login), unquote_plus(password)) == (CLIENT_ID, SECRET)
        elif self.method == "client_secret_post":
            ok = (form.get("client_id"), form.get("client_secret")) == (CLIENT_ID, SECRET)
        else:
            ok = self.check_assertion(form, f"{self.url}/token")
        if not ok:
            return self.refuse("client authentication failed")
        return web.json_response({"access_token": f"tok-{len(self.seen)}", "token_type": "Bearer", "expires_in": 600})

    def check_assertion(self, form: dict[str, Any], audience: str) -> bool:
        if form.get("client_assertion_type") != JWT_BEARER:
            return False
        claims = jwt.decode(form["client_assertion"], RSA_KEY.public_key(), algorithms=["RS256"], audience=audience,
                            options={"require": ["iss", "sub", "aud", "exp", "jti"], "verify_exp": False})
        fresh = claims["jti"] not in self.jtis
        self.jtis.add(claims["jti"])
        return claims["iss"] == claims["sub"] == CLIENT_ID and fresh

    async def _data(self, request: web.Request) -> web.Response:
        body, ctype = self.xml
        return web.Response(body=body, headers={"Content-Type": ctype})


@pytest_asyncio.fixture(loop_scope="session")
async def server():
    srv = await TokenServer().start()
    yield srv
    await srv.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def make(server, monkeypatch):
    monkeypatch.setenv("T_SECRET", SECRET)
    monkeypatch.setenv("T_KEY", RSA_PEM)
    started: list[HttpAdapter] = []

    async def make(**oauth: Any) -> HttpAdapter:
        auth = {"oauth2": {"token_url": f"{server.url}/token", "client_id": CLIENT_ID, **oauth}} if oauth else None
        a = HttpAdapter("t", HttpEndpointConfig(adapter="http", base_url=server.url, method="GET", path="/data",
                                                auth=auth), Services())
        await a.start()
        started.append(a)
        return a

    yield make
    for a in started:
        await a.close()


def ctx() -> CallContext:
    return CallContext({}, "m", "c", 5.0)


XML = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<r><name>Relevé n°5 Müller</name></r>'


async def test_client_secret_basic_is_the_default_with_id_and_secret_form_urlencoded(server, make):
    """Without `client_auth` the client authenticates by HTTP Basic of the form-urlencoded id and secret
    (RFC 6749 §2.3.1); nothing secret goes in the body. The old adapter's body-only secret fails here."""
    server.method, server.xml = "client_secret_basic", (XML.encode("iso-8859-1"), "application/xml")
    a = await make(client_secret={"env": "T_SECRET"})
    assert "Relevé" in await a.call(None, None, ctx())
    [seen] = server.seen[-1:]
    assert seen["authorization"].startswith("Basic ") and "client_secret" not in seen["form"]
    assert seen["form"]["grant_type"] == "client_credentials"


async def test_client_secret_post_sends_the_secret_in_the_body_only(server, make):
    server.method, server.xml = "client_secret_post", (b"<r/>", "application/xml")
    a = await make(client_secret={"env": "T_SECRET"}, client_auth="client_secret_post")
    assert await a.call(None, None, ctx()) == "<r/>"
    assert server.seen[-1]["authorization"] is None and server.seen[-1]["form"]["client_secret"] == SECRET


async def test_a_token_endpoint_wanting_another_method_is_a_permanent_rejection(server, make):
    server.method = "client_secret_basic"
    a = await make(client_secret={"env": "T_SECRET"}, client_auth="client_secret_post")
    with pytest.raises(TargetRejected) as err:
        await a.call(None, None, ctx())
    assert err.value.status == 401 and "client_secret_post" in str(err.value) and "invalid_client" in str(err.value)


async def test_private_key_jwt_signs_a_fresh_assertion_for_each_token(server, make):
    """RFC 7523: iss = sub = client id, aud = the token URL, exp, a jti never seen before; no secret sent."""
    server.method, server.xml = "private_key_jwt", (b"<r/>", "text/xml")
    a = await make(private_key={"env": "T_KEY"}, client_auth="private_key_jwt", key_id="hub-2025")
    await a.call(None, None, ctx())
    a._auth.invalidate({"Authorization": f"Bearer {a._auth.token}"})  # a 401 would do this: fetch again
    await a.call(None, None, ctx())
    assertions = [s["form"]["client_assertion"] for s in server.seen[-2:]]
    assert len(set(assertions)) == 2 and len(server.jtis) >= 2
    assert jwt.get_unverified_header(assertions[0])["kid"] == "hub-2025"
    assert all("client_secret" not in s["form"] and s["authorization"] is None for s in server.seen[-2:])


def test_the_assertion_times_come_from_the_clock_given():
    at = datetime(2025, 3, 30, 0, 59, 30, tzinfo=timezone.utc)
    settings_ = OAuth2Settings(token_url="https://idp.example/token", client_id="plu-hub", client_auth="private_key_jwt",
                               private_key={"env": "X"}, assertion_lifetime="90s")
    claims = jwt.decode(OAuth2ClientCredentials("t", settings_, RSA_PEM, ManualClock(at)).assertion(),
                        RSA_KEY.public_key(), algorithms=["RS256"], audience="https://idp.example/token",
                        options={"verify_exp": False, "verify_iat": False})
    assert (claims["iat"], claims["exp"]) == (int(at.timestamp()), int(at.timestamp()) + 90)


async def test_a_key_that_cannot_sign_fails_at_start_not_at_the_first_pull(make, monkeypatch):
    monkeypatch.setenv("T_KEY", EC_PEM)  # an EC key for RS256
    with pytest.raises(ConfigError, match="private_key cannot sign RS256"):
        await make(private_key={"env": "T_KEY"}, client_auth="private_key_jwt")


def test_each_method_names_the_credential_it_needs():
    base = {"token_url": "https://idp.example/token", "client_id": "c"}
    with pytest.raises(ValidationError, match="needs private_key"):
        OAuth2Settings(**base, client_auth="private_key_jwt")
    with pytest.raises(ValidationError, match="needs client_secret"):
        OAuth2Settings(**base)
    with pytest.raises(ValidationError, match="drop client_secret"):
        OAuth2Settings(**base, client_auth="private_key_jwt", private_key={"env": "K"}, client_secret={"env": "S"})


# --- XML answers in their declared encoding ---------------------------------------------------

@pytest.mark.parametrize("body, ctype", [
    (XML.encode("iso-8859-1"), "application/xml"),                          # declared in the XML only
    (XML.encode("iso-8859-1"), "text/xml"),                                 # text/xml: no US-ASCII default (RFC 7303)
    (XML.replace("ISO-8859-1", "UTF-16").encode("utf-16"), "application/atom+xml"),   # a BOM
    (XML.replace("ISO-8859-1", "windows-1252").encode("cp1252"), "application/xml; charset=windows-1252"),
    ("\ufeff" + XML.replace("ISO-8859-1", "UTF-8"), "application/xml; charset=iso-8859-1"),  # the BOM wins
])
async def test_an_xml_answer_is_text_in_its_declared_encoding_without_the_declaration(server, make, body, ctype):
    """The transform gets `Relevé n°5 Müller`, never replacement characters, and lxml can read the text."""
    from lxml import etree

    server.xml = (body.encode("utf-8") if isinstance(body, str) else body, ctype)
    text = await (await make()).call(None, None, ctx())
    assert etree.fromstring(text).findtext("name") == "Relevé n°5 Müller"


async def test_an_xml_answer_that_is_not_in_its_encoding_is_the_targets_unparseable_answer(server, make):
    server.xml = (b'<?xml version="1.0" encoding="UTF-8"?><r>\xe9</r>', "application/xml")
    with pytest.raises(UnparseableAnswer, match="not in the encoding it declares"):
        await (await make()).call(None, None, ctx())
    server.xml = (b"{not json", "application/json")
    with pytest.raises(UnparseableAnswer, match="not valid JSON"):
        await (await make()).call(None, None, ctx())


ENCODINGS = st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-16-be", "iso-8859-1", "cp1252", "iso-8859-15"])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(text=st.text(alphabet=st.characters(codec="iso-8859-1", exclude_categories=("Cc", "Cs")), max_size=30),
       encoding=ENCODINGS, declare=st.booleans(), bom=st.booleans(), header=st.booleans())
def test_property_xml_text_round_trips_whatever_the_declaration_route(text, encoding, declare, bom, header):
    """However the encoding is told (BOM, charset, declaration), the text comes back as written; without
    any of them UTF-8 is assumed, as XML 1.0 says."""
    name = {"utf-16-le": "UTF-16", "utf-16-be": "UTF-16"}.get(encoding, encoding)
    document = (f'<?xml version="1.0" encoding="{name}"?>' if declare else "") + "<r/>" + text
    try:
        raw = document.encode(encoding)
    except UnicodeEncodeError:
        return
    if encoding.startswith("utf-16") and encoding != "utf-16":
        if not bom:
            return  # UTF-16 without a BOM is told by nothing ASCII-readable
        raw = ("\ufeff" + document).encode(encoding)
    told = declare or header or encoding in ("utf-16",) or (encoding.startswith("utf-16") and bom)
    if not told and encoding != "utf-8":
        return  # nothing says which encoding: UTF-8 is assumed (and may be wrong, detectably)
    charset = encoding if header and not encoding.startswith("utf-16") else None
    assert xml_text(raw, charset) == "<r/>" + text
    assert xml_encoding(raw, charset)[0]

"""The Salesforce emulator is strict where Salesforce is: the tests talk to it over real HTTP and gRPC
and check the documented status codes, error bodies and headers."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.salesforce.proto import pubsub_api_pb2 as pb
from adapters.salesforce.proto import pubsub_api_pb2_grpc as pb_grpc
from engine.clock import ManualClock
from sandbox.salesforce import SalesforceOrg
from sandbox.salesforce.eventbus import encode_replay

UPSERT = "/services/data/v62.0/composite/sobjects/Account/PLU_Account_Id__c"


@pytest.fixture
async def org():
    org = await SalesforceOrg(keepalive=0.3, idle_close=0.6).start()
    org.add_client("app", "secret")
    yield org
    await org.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def login(http, org) -> dict:
    async with http.post(org.url + "/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": "app", "client_secret": "secret"}) as r:
        assert r.status == 200
        return await r.json()


def account(key: str, **fields) -> dict:
    return {"attributes": {"type": "Account"}, "PLU_Account_Id__c": key, "Name": f"Account {key}", **fields}


async def test_collections_refuse_more_than_200_records_as_a_whole(org, http):
    """201 records: 400 EXCEEDED_ID_LIMIT and nothing written; 200 are accepted."""
    token = (await login(http, org))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with http.patch(org.url + UPSERT, headers=headers,
                          json={"records": [account(f"A-{i}") for i in range(201)]}) as r:
        assert r.status == 400 and (await r.json())[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert org.count("Account") == 0
    async with http.patch(org.url + UPSERT, headers=headers,
                          json={"records": [account(f"A-{i}") for i in range(200)]}) as r:
        assert r.status == 200 and all(x["success"] for x in await r.json())


@pytest.mark.parametrize("body, status, code", [
    ({"records": [account("A-1", Colour__c="red")]}, 400, "INVALID_FIELD"),
    ({"records": [account("A-1", Phone=True)]}, 400, "JSON_PARSER_ERROR"),
    ({"records": [{"PLU_Account_Id__c": "A-1", "Name": "x"}]}, 400, "INVALID_TYPE"),
    ({"records": [], "allOrNothing": True}, 400, "JSON_PARSER_ERROR"),
])
async def test_a_malformed_collection_is_refused_whole_with_the_documented_error(org, http, body, status, code):
    """An unknown field, a value of the wrong type, a record without attributes.type, an unknown key."""
    token = (await login(http, org))["access_token"]
    async with http.patch(org.url + UPSERT, headers={"Authorization": f"Bearer {token}"}, json=body) as r:
        answer = await r.json()
        assert r.status == status and answer[0]["errorCode"] == code and answer[0]["message"]
        assert r.headers["Sforce-Limit-Info"].startswith("api-usage=")


async def test_unknown_external_id_field_version_and_session(org, http):
    """404 for a field that is no external id and for an API version that does not exist; 401
    INVALID_SESSION_ID without a session or after it expired."""
    token = (await login(http, org))["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    async with http.patch(org.url + "/services/data/v62.0/composite/sobjects/Account/Name", headers=auth,
                          json={"records": []}) as r:
        assert r.status == 404 and "external ID field" in (await r.json())[0]["message"]
    async with http.patch(org.url + UPSERT.replace("v62.0", "v99.0"), headers=auth, json={"records": []}) as r:
        assert r.status == 404
    async with http.patch(org.url + UPSERT, json={"records": []}) as r:
        assert r.status == 401 and (await r.json())[0]["errorCode"] == "INVALID_SESSION_ID"
    org.sessions.expire_all()
    async with http.patch(org.url + UPSERT, headers=auth, json={"records": []}) as r:
        assert r.status == 401 and (await r.json())[0]["errorCode"] == "INVALID_SESSION_ID"


async def test_all_or_none_rolls_every_record_back(org, http):
    """allOrNone true: one bad record and no record is written, the good ones say ALL_OR_NONE_OPERATION_ROLLED_BACK."""
    token = (await login(http, org))["access_token"]
    async with http.patch(org.url + UPSERT, headers={"Authorization": f"Bearer {token}"}, json={
            "allOrNone": True, "records": [account("A-1"), {"attributes": {"type": "Account"},
                                                              "PLU_Account_Id__c": "A-2"}]}) as r:
        results = await r.json()
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert org.count("Account") == 0


async def test_oauth_refuses_bad_client_credentials_and_checks_jwt_assertions(org, http):
    """invalid_client for a wrong secret; a JWT bearer assertion is accepted only signed with the app's
    key, for the login URL as audience, for a known user, and not expired."""
    async with http.post(org.url + "/services/oauth2/token", data={
            "grant_type": "client_credentials", "client_id": "app", "client_secret": "wrong"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_client"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    org.add_client("jwt-app", "unused", certificate_key=key.public_key())
    now = int(time.time())

    async def grant(signing_key, **claims) -> tuple[int, dict]:
        body = {"iss": "jwt-app", "sub": "integration@plu.example", "aud": org.url, "exp": now + 120, **claims}
        pem = signing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        assertion = jwt.encode(body, pem, algorithm="RS256")
        async with http.post(org.url + "/services/oauth2/token", data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}) as r:
            return r.status, await r.json()

    status, ok = await grant(key)
    assert status == 200 and ok["id"].endswith(f"/{org.org_id}/0055g00000HUBUSER")
    assert (await grant(other))[1]["error"] == "invalid_grant"
    assert (await grant(key, aud="https://login.salesforce.com"))[1]["error_description"] == "audience is invalid"
    assert (await grant(key, exp=now - 10))[1]["error"] == "invalid_grant"
    assert (await grant(key, sub="nobody@plu.example"))[1]["error"] == "invalid_grant"


async def test_bulk_jobs_follow_the_documented_states(org, http):
    """Open -> UploadComplete -> JobComplete; data only while Open and only once; results only once finished;
    a header naming an unknown field fails the job with its reason."""
    token = (await login(http, org))["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    base = org.url + "/services/data/v62.0/jobs/ingest"
    async with http.post(base, headers=auth, json={"object": "Meter_Month__c", "operation": "upsert"}) as r:
        assert r.status == 400 and (await r.json())[0]["errorCode"] == "INVALIDJOB"   # upsert without external id
    async with http.post(base, headers=auth, json={"object": "Meter_Month__c", "operation": "upsert",
                                                   "externalIdFieldName": "Hub_Key__c"}) as r:
        job = await r.json()
    assert job["state"] == "Open"
    csv_headers = {**auth, "Content-Type": "text/csv"}
    data = "Hub_Key__c,Site_Id__c,Meter_Id__c,Month__c,Total__c\nk1,s,m,2027-01,1.5\n"
    async with http.get(f"{base}/{job['id']}/failedResults/", headers=auth) as r:
        assert r.status == 409                                                     # not finished
    async with http.put(f"{base}/{job['id']}/batches", headers=csv_headers, data=data) as r:
        assert r.status == 201
    async with http.put(f"{base}/{job['id']}/batches", headers=csv_headers, data=data) as r:
        assert r.status == 409                                                     # only once
    async with http.patch(f"{base}/{job['id']}", headers=auth, json={"state": "UploadComplete"}) as r:
        assert (await r.json())["state"] == "UploadComplete"
    for _ in range(100):
        async with http.get(f"{base}/{job['id']}", headers=auth) as r:
            info = await r.json()
        if info["state"] == "JobComplete":
            break
        await asyncio.sleep(0.01)
    assert info["numberRecordsProcessed"] == 1 and info["numberRecordsFailed"] == 0
    async with http.post(base, headers=auth, json={"object": "Meter_Month__c", "operation": "upsert",
                                                   "externalIdFieldName": "Hub_Key__c"}) as r:
        bad = await r.json()
    async with http.put(f"{base}/{bad['id']}/batches", headers=csv_headers,
                        data="Hub_Key__c,Colour__c\nk2,red\n") as r:
        assert r.status == 201
    async with http.patch(f"{base}/{bad['id']}", headers=auth, json={"state": "UploadComplete"}) as r:
        pass
    for _ in range(100):
        async with http.get(f"{base}/{bad['id']}", headers=auth) as r:
            info = await r.json()
        if info["state"] == "Failed":
            break
        await asyncio.sleep(0.01)
    assert info["state"] == "Failed" and "Field name not found : Colour__c" in info["errorMessage"]
    async with http.get(f"{base}/{bad['id']}/unprocessedrecords/", headers=auth) as r:
        assert (await r.text()).splitlines() == ['"Hub_Key__c","Colour__c"', '"k2","red"']


async def test_the_daily_allowance_is_enforced_with_403(http):
    """Past the org's daily API requests: 403 REQUEST_LIMIT_EXCEEDED, and Sforce-Limit-Info says why."""
    async with SalesforceOrg(daily_api_limit=1) as org:
        org.add_client("app", "secret")
        token = (await login(http, org))["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with http.get(org.url + "/services/data/v62.0/limits", headers=auth) as r:
            assert r.status == 200 and r.headers["Sforce-Limit-Info"] == "api-usage=1/1"
        async with http.get(org.url + "/services/data/v62.0/limits", headers=auth) as r:
            assert r.status == 403 and (await r.json())[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


async def subscribe(org, token: str, first: pb.FetchRequest, more: list[pb.FetchRequest] | None = None,
                    responses: int = 1) -> list[pb.FetchResponse]:
    async with grpc.aio.insecure_channel(org.pubsub_target) as channel:
        stub = pb_grpc.PubSubStub(channel)

        async def requests():
            yield first
            for request in more or []:
                yield request
            await asyncio.sleep(30)

        call = stub.Subscribe(requests(), metadata=(("accesstoken", token), ("instanceurl", org.url),
                                                    ("tenantid", org.org_id)))
        out = []
        async for response in call:
            out.append(response)
            if len(out) == responses:
                break
        call.cancel()
        return out


async def test_subscribe_honours_flow_control_and_sends_keep_alives(org, http):
    """Only as many events as requested (at most 100 outstanding); a stream with nothing requested is
    closed after idle_close; with events requested and none to send, an empty response carries the
    latest replay id (a keep-alive)."""
    token = (await login(http, org))["access_token"]
    for i in range(150):
        org.change("Account", "PLU_Account_Id__c", f"A-{i}", {"Name": f"Account {i}"})
    got = await subscribe(org, token, pb.FetchRequest(topic_name="/data/AccountChangeEvent",
                                                      replay_preset=pb.EARLIEST, num_requested=5), responses=9)
    assert [len(r.events) for r in got] == [5] and got[0].pending_num_requested == 0   # then closed: nothing asked
    big = await subscribe(org, token, pb.FetchRequest(topic_name="/data/AccountChangeEvent",
                                                      replay_preset=pb.EARLIEST, num_requested=1000))
    assert len(big[0].events) == 100
    quiet = await subscribe(org, token, pb.FetchRequest(topic_name="/event/Contract_Signed__e", num_requested=10),
                            responses=2)
    topic = org.bus.topics["/event/Contract_Signed__e"]
    assert [len(r.events) for r in quiet] == [0, 0]
    assert all(r.latest_replay_id == encode_replay(topic.latest) and r.pending_num_requested == 10 for r in quiet)


async def test_subscribe_refuses_what_the_documentation_refuses(http):
    """No auth metadata: UNAUTHENTICATED with the auth error code; a purged replay id: INVALID_ARGUMENT
    with ...replayid.corrupted; another topic in a later request: INVALID_ARGUMENT."""
    clock = ManualClock(datetime(2027, 1, 10, tzinfo=timezone.utc))
    async with SalesforceOrg(clock=clock, session_timeout=10 * 86400) as org:
        org.add_client("app", "secret")
        token = (await login(http, org))["access_token"]
        org.change("Account", "PLU_Account_Id__c", "A-1", {"Name": "One"})
        first = org.bus.topics["/data/AccountChangeEvent"].events[0].replay
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subscribe(org, "nope", pb.FetchRequest(topic_name="/data/AccountChangeEvent"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(caught.value.trailing_metadata())["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"
        clock.advance(72 * 3600 + 1)
        org.change("Account", "PLU_Account_Id__c", "A-2", {"Name": "Two"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subscribe(org, token, pb.FetchRequest(topic_name="/data/AccountChangeEvent",
                                                        replay_preset=pb.CUSTOM, replay_id=encode_replay(first)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "replayid.corrupted" in dict(caught.value.trailing_metadata())["error-code"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subscribe(org, token, pb.FetchRequest(topic_name="/data/AccountChangeEvent", num_requested=0),
                            [pb.FetchRequest(topic_name="/event/Contract_Signed__e", num_requested=1)])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_publish_checks_each_event_against_the_topic_schema(org, http):
    """Publish answers one result per event: a replay id for a good one, an error for one written
    with another schema; change event channels refuse publishing."""
    import io

    import fastavro

    token = (await login(http, org))["access_token"]
    md = (("accesstoken", token), ("instanceurl", org.url), ("tenantid", org.org_id))
    async with grpc.aio.insecure_channel(org.pubsub_target) as channel:
        stub = pb_grpc.PubSubStub(channel)
        topic = await stub.GetTopic(pb.TopicRequest(topic_name="/event/Key_Customer_Candidate__e"), metadata=md)
        schema = await stub.GetSchema(pb.SchemaRequest(schema_id=topic.schema_id), metadata=md)
        import json as _json
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(_json.loads(schema.schema_json)),
                                   {"CreatedDate": 1, "CreatedById": "005", "Site_Id__c": "S-1"})
        answer = await stub.Publish(pb.PublishRequest(topic_name=topic.topic_name, events=[
            pb.ProducerEvent(id="e1", schema_id=topic.schema_id, payload=out.getvalue()),
            pb.ProducerEvent(id="e2", schema_id="not-the-schema", payload=out.getvalue())]), metadata=md)
        assert answer.results[0].replay_id and not answer.results[0].HasField("error")
        assert answer.results[1].HasField("error") and answer.results[1].correlation_key == "e2"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(pb.PublishRequest(topic_name="/data/AccountChangeEvent"), metadata=md)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

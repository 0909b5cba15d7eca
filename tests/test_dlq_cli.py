"""The DLQ ops commands against the real session nats-server: list, show, replay, edit, purge, stats."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dlq import store
from dlq.cli import register, run
from engine.dead_letter import build_headers
from engine.errors import TargetRejected, ValidationFailed
from engine.streams import ensure_streams
from tests.helpers import StreamReader, project_from, started_hub, wait_until

_orig_seq = itertools.count(1)


def contract(**changes) -> dict:
    base = {"contract_id": "C-1", "account_id": "A1", "country": "DE", "tariff_code": "T1",
            "signed_on": "2026-11-20", "sites": [{"site_id": "S1", "postcode": "1000", "city": "Liège"}]}
    return base | changes


def bad_contract(contract_id: str = "C-1") -> dict:
    return contract(contract_id=contract_id, sites=[{"site_id": "S1", "postcode": "1", "city": "Liège"}])


@dataclass
class Env:
    u: str
    js: object
    url: str
    tmp: Path

    @property
    def subject(self) -> str:
        return f"{self.u}.in.contract"

    async def put(self, payload: object, *, ce_id: str, err: Exception | None = None,
                  headers: dict | None = None, flow: str | None = None, extra: dict | None = None, **facts) -> int:
        """A DLQ record as a flow writes it (engine.dead_letter.build_headers; `facts` such as deliveries
        and calls, `extra` record headers); returns its DLQ sequence."""
        flow = flow or self.u
        original = {"ce-id": ce_id, "Nats-Msg-Id": ce_id, "content-type": "application/json", **(headers or {})}
        err = err or ValidationFailed("ContractSigned: sites[0].postcode: too short", step="schema")
        hdrs = build_headers(original, flow=flow, err=err, attempts=1, subject=self.subject, stream=f"IN{self.u}",
                             sequence=next(_orig_seq), consumer=flow, first_failure=None, **facts) | (extra or {})
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return (await self.js.publish(f"dlq.{flow}", data, headers=hdrs)).seq

    async def dlq(self, *argv: str) -> int:
        """`runner.py dlq <argv>` against this test's config, flows and server."""
        parser = argparse.ArgumentParser(prog="runner.py")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["dlq", argv[0], "--nats", self.url, "--config", str(self.tmp / "config.yaml"),
                                  "--flows", str(self.tmp / "flows"), *argv[1:]])
        return await run(args)

    async def seqs(self) -> list[int]:
        return [r.seq for r in await store.list_records(self.js, "DLQ", flow=self.u)]

    async def stored(self) -> int:
        return (await self.js.stream_info(f"IN{self.u}")).state.messages


def config_for(u: str) -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
      - {{name: OUT{u}, subjects: ["{u}.out.>"]}}
    """


def flow_for(u: str, name: str | None = None, schema: str | None = "ContractSigned", out: str = "ok") -> str:
    return f"""
    name: {name or u}
    source: {{subject: {u}.in.contract}}
    {f"schema: {schema}" if schema else ""}
    steps:
      - publish: {u}.out.{out}
    """


@pytest.fixture
async def env(tmp_path: Path, nats_url: str, js, unique: str) -> Env:
    project = project_from(tmp_path, config_for(unique), flow_for(unique))
    await ensure_streams(js, project.config)
    return Env(unique, js, nats_url, tmp_path)


def out_err(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- list, show, stats -------------------------------------------------------------------------


async def test_list_shows_a_table_filters_and_emits_json(env: Env, capsys):
    """The table has one row per record of the flow; error class, text, time and limit narrow it;
    --json gives every field with the payload as JSON."""
    a = await env.put(bad_contract("C-1"), ce_id="a")
    b = await env.put(bad_contract("C-777"), ce_id="b")
    c = await env.put(contract(contract_id="C-3"), ce_id="c", err=TargetRejected("tariff code unknown", step="call"))

    assert await env.dlq("list", "--flow", env.u) == 0
    out, err = out_err(capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "AGE", "FLOW", "ERROR", "CLASS", "ATT", "DLV", "CALLS", "PAYLOAD", "ERROR"]
    assert [int(line.split()[0]) for line in lines[1:]] == [a, b, c]
    assert "TargetRejected" in lines[3] and "tariff code unknown" in lines[3]
    assert err.startswith(f"3 record(s) in DLQ matching flow {env.u}")

    assert await env.dlq("list", "--flow", env.u, "--error-class", "targetrejected", "--json") == 0
    out, err = out_err(capsys)
    [rec] = json.loads(out)
    assert rec["seq"] == c and rec["flow"] == env.u and rec["error_class"] == "TargetRejected"
    assert rec["payload_encoding"] == "json" and rec["payload"]["contract_id"] == "C-3"
    assert rec["headers"]["ce-id"] == "c" and rec["subject"] == env.subject and rec["attempts"] == 1
    assert "1 record(s)" in err

    assert await env.dlq("list", "--flow", env.u, "--grep", "c-777", "--json") == 0
    assert [r["seq"] for r in json.loads(out_err(capsys)[0])] == [b]
    assert await env.dlq("list", "--flow", env.u, "--since", "1h", "--json") == 0
    assert len(json.loads(out_err(capsys)[0])) == 3
    assert await env.dlq("list", "--flow", env.u, "--until", "2020-01-01T00:00", "--json") == 0
    assert json.loads(out_err(capsys)[0]) == []
    assert await env.dlq("list", "--flow", env.u, "--limit", "2") == 0
    out, err = out_err(capsys)
    assert len(out.splitlines()) == 3 and "--limit reached" in err


async def test_show_prints_payload_headers_and_failure_facts(env: Env, capsys):
    """`show` gives the indented payload, every header and the failure facts; --json the same as data."""
    seq = await env.put(bad_contract("C-9"), ce_id="show-1")
    assert await env.dlq("show", str(seq)) == 0
    out, _ = out_err(capsys)
    assert f"flow:          {env.u}" in out
    assert "error class:   ValidationFailed (permanent)" in out
    assert f"original:      subject {env.subject}, stream IN{env.u}" in out
    assert "  ce-id: show-1" in out and "  Hub-Dlq-Original-Msg-Id: show-1" in out
    assert '  "contract_id": "C-9",' in out and "Liège" in out

    assert await env.dlq("show", str(seq), "--json") == 0
    data = json.loads(out_err(capsys)[0])
    assert data["seq"] == seq and data["step"] == "schema" and data["payload"] == bad_contract("C-9")


async def test_show_of_a_missing_record_exits_3_and_says_what_to_do(env: Env, capsys):
    """A record number that is not there: exit 3 and a pointer to `dlq list`."""
    assert await env.dlq("show", "987654321") == 3
    err = out_err(capsys)[1]
    assert "record 987654321 is not in DLQ" in err and "dlq list" in err


async def test_stats_counts_per_flow_and_error_class(env: Env, capsys):
    """Counts per flow and error class, with the age of the oldest record."""
    for i in range(3):
        await env.put(bad_contract(), ce_id=f"s{i}")
    await env.put(contract(), ce_id="s9", err=TargetRejected("no", step="call"))
    other = f"{env.u}-other"
    await env.put(contract(), ce_id="o1", flow=other)

    assert await env.dlq("stats", "--flow", env.u, "--json") == 0
    data = json.loads(out_err(capsys)[0])
    assert data["total"] == 4 and list(data["flows"]) == [env.u]
    flow = data["flows"][env.u]
    assert flow["count"] == 4 and flow["error_classes"] == {"ValidationFailed": 3, "TargetRejected": 1}
    assert 0 <= flow["oldest_age_s"] < 60

    assert await env.dlq("stats") == 0
    out, _ = out_err(capsys)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "ValidationFailed 3, TargetRejected 1" in rows[env.u]
    assert rows[other].split()[1] == "1"


# --- replay ------------------------------------------------------------------------------------


async def test_replaying_a_record_republishes_it_with_a_fresh_id_and_the_same_key(env: Env, capsys):
    """The original payload lands on the original subject with the original headers less Hub-Dlq-*,
    a fresh Nats-Msg-Id, the original ce-id and idempotency key, Hub-Replay-For/Of; the record is gone."""
    reader = await StreamReader.open(env.js, f"{env.u}.in.>")
    seq = await env.put(bad_contract("C-5"), ce_id="orig-1")
    keyed = await env.put(bad_contract("C-6"), ce_id="orig-2", headers={"Hub-Idempotency-Key": "C-6:v1"})

    assert await env.dlq("replay", str(seq)) == 0
    assert out_err(capsys)[0].strip() == "replayed 1, failed 0"
    [msg] = await reader.wait_for(1)
    h = msg.headers
    assert msg.subject == env.subject and json.loads(msg.data) == bad_contract("C-5")
    assert h["Nats-Msg-Id"].startswith(f"replay:{seq}:") and h["Nats-Msg-Id"] != "orig-1"
    assert h["ce-id"] == "orig-1" and h["Hub-Idempotency-Key"] == "orig-1"
    assert h["Hub-Replay-For"] == env.u and h["Hub-Replay-Of"] == str(seq)
    assert h["content-type"] == "application/json"
    assert not [k for k in h if k.startswith("Hub-Dlq-")]
    assert await env.seqs() == [keyed]
    assert await env.dlq("show", str(seq)) == 3

    assert await env.dlq("replay", str(keyed)) == 0
    second = (await reader.wait_for(2))[1]
    assert second.headers["Hub-Idempotency-Key"] == "C-6:v1" and second.headers["ce-id"] == "orig-2"
    assert await env.seqs() == []


async def test_replay_twice_is_not_swallowed_by_deduplication(env: Env, capsys):
    """With --keep the record stays, and a second replay of it is stored again (fresh Nats-Msg-Id)."""
    seq = await env.put(contract(), ce_id="k1")
    assert await env.dlq("replay", str(seq), "--keep") == 0
    assert "records kept in the DLQ" in out_err(capsys)[0]
    assert await env.seqs() == [seq]
    assert await env.dlq("replay", str(seq), "--keep") == 0
    assert await env.stored() == 2 and await env.seqs() == [seq]


async def test_dry_run_changes_nothing(env: Env, capsys):
    """--dry-run lists what would be replayed and neither publishes nor deletes."""
    seqs = [await env.put(contract(), ce_id=f"d{i}") for i in range(3)]
    assert await env.dlq("replay", "--flow", env.u, "--all", "--dry-run") == 0
    out, err = out_err(capsys)
    assert len(out.splitlines()) == 4 and "would replay 3 record(s)" in err
    assert await env.stored() == 0 and await env.seqs() == seqs


async def test_replay_by_filter_is_paced_by_rate(env: Env, capsys):
    """A filter selects the records; --rate paces them; the others stay."""
    reader = await StreamReader.open(env.js, f"{env.u}.in.>")
    chosen = [await env.put(bad_contract(f"C-{i}"), ce_id=f"f{i}") for i in range(8)]
    others = [await env.put(contract(), ce_id=f"r{i}", err=TargetRejected("no", step="call")) for i in range(2)]
    start = time.monotonic()
    assert await env.dlq("replay", "--flow", env.u, "--error-class", "ValidationFailed", "--rate", "20/s") == 0
    elapsed = time.monotonic() - start
    out, err = out_err(capsys)
    assert out.strip() == "replayed 8, failed 0"
    assert "replayed 8/8" in err  # progress on stderr
    assert elapsed >= (8 - 2) / 20 * 0.9  # a bucket of 2, then 20/s
    msgs = await reader.wait_for(8)
    assert sorted(int(m.headers["Hub-Replay-Of"]) for m in msgs) == chosen
    assert await env.seqs() == others


async def test_replay_and_purge_refuse_without_a_selector(env: Env, capsys):
    """No selector, a bare --flow, or --all without --flow: exit 2, nothing happens."""
    seq = await env.put(contract(), ce_id="n1")
    for argv in (["replay"], ["replay", "--flow", env.u], ["replay", "--all"], ["purge", "--yes"],
                 ["replay", str(seq), "--flow", env.u]):
        assert await env.dlq(*argv) == 2, argv
        assert out_err(capsys)[1].strip()
    assert await env.seqs() == [seq] and await env.stored() == 0


async def test_replay_of_missing_numbers_replays_the_rest_and_exits_3(env: Env, capsys):
    """Some numbers absent: the others are replayed, each absent one is named, exit 3."""
    seq = await env.put(contract(), ce_id="m1")
    assert await env.dlq("replay", str(seq), "987654321") == 3
    out, err = out_err(capsys)
    assert out.strip() == "replayed 1, failed 0" and "record 987654321 is not in DLQ" in err
    assert await env.stored() == 1


async def test_replay_to_a_subject_no_stream_captures_fails_and_keeps_the_record(env: Env, capsys):
    """An unconfirmed publish is a failure (exit 1) and the record stays."""
    hdrs = build_headers({"ce-id": "x"}, flow=env.u, err=ValidationFailed("x"), attempts=1,
                         subject=f"{env.u}.nowhere", stream="X", sequence=1, consumer=env.u, first_failure=None)
    seq = (await env.js.publish(f"dlq.{env.u}", b"{}", headers=hdrs)).seq
    assert await env.dlq("replay", str(seq)) == 1
    out, err = out_err(capsys)
    assert out.strip() == "replayed 0, failed 1" and f"record {seq}: publish to {env.u}.nowhere not confirmed" in err
    assert await env.seqs() == [seq]


# --- edit --------------------------------------------------------------------------------------


async def test_edit_with_set_fixes_the_payload_and_replays_it(env: Env, capsys):
    """--set fixes the field the schema rejected; the fixed payload is replayed and the record deleted."""
    reader = await StreamReader.open(env.js, f"{env.u}.in.>")
    seq = await env.put(bad_contract("C-42"), ce_id="e1")
    assert await env.dlq("edit", str(seq), "--set", 'sites[0].postcode="1000"') == 0
    assert f"replayed record {seq} with the edited payload to {env.subject}" in out_err(capsys)[0]
    [msg] = await reader.wait_for(1)
    assert json.loads(msg.data) == contract(contract_id="C-42")
    assert msg.headers["Hub-Idempotency-Key"] == "e1" and msg.headers["Hub-Replay-For"] == env.u
    assert await env.seqs() == []


async def test_edit_that_still_fails_validation_exits_2_and_replays_nothing(env: Env, capsys):
    """A number where the schema wants a string: the field error is printed, exit 2, nothing sent."""
    seq = await env.put(bad_contract(), ce_id="e2")
    assert await env.dlq("edit", str(seq), "--set", "sites.0.postcode=1000") == 2
    err = out_err(capsys)[1]
    assert "does not match schema ContractSigned" in err
    assert "sites[0].postcode: Input should be a valid string (got 1000)" in err
    assert "nothing replayed" in err
    assert await env.stored() == 0 and await env.seqs() == [seq]


async def test_edit_with_a_json_patch_and_dry_run(env: Env, capsys):
    """An RFC 6902 patch edits the payload; --dry-run validates and shows it without replaying."""
    seq = await env.put(bad_contract(), ce_id="e3")
    patch = '[{"op": "replace", "path": "/sites/0/postcode", "value": "2000"}, {"op": "add", "path": "/version", "value": 2}]'
    assert await env.dlq("edit", str(seq), "--patch", patch, "--dry-run") == 0
    out, err = out_err(capsys)
    assert json.loads(out)["version"] == 2 and "matches ContractSigned" in err
    assert await env.stored() == 0
    assert await env.dlq("edit", str(seq), "--patch", patch) == 0
    assert await env.stored() == 1 and await env.seqs() == []
    assert await env.dlq("edit", str(seq), "--patch", patch) == 3


async def test_edit_in_the_editor_and_an_unchanged_edit_aborts(env: Env, capsys, monkeypatch, tmp_path: Path):
    """$EDITOR edits the payload file; leaving it unchanged aborts with exit 2."""
    seq = await env.put(bad_contract(), ce_id="e4")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", "true")
    assert await env.dlq("edit", str(seq)) == 2
    assert "payload unchanged" in out_err(capsys)[1]
    script = tmp_path / "fix.py"
    script.write_text("import json, sys\np = sys.argv[1]\nd = json.load(open(p))\n"
                      "d['sites'][0]['postcode'] = '3000'\njson.dump(d, open(p, 'w'))\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    assert await env.dlq("edit", str(seq)) == 0
    assert await env.seqs() == [] and await env.stored() == 1


# --- purge -------------------------------------------------------------------------------------


async def test_purge_with_yes_deletes_the_selection(env: Env, capsys):
    """--yes purges without asking; other flows' records are untouched."""
    for i in range(3):
        await env.put(contract(), ce_id=f"p{i}")
    other = await env.put(contract(), ce_id="po", flow=f"{env.u}-other")
    assert await env.dlq("purge", "--flow", env.u, "--all", "--yes") == 0
    assert out_err(capsys)[0].strip() == "purged 3, failed 0"
    assert await env.seqs() == [] and await env.stored() == 0
    assert [r.seq for r in await store.list_records(env.js, "DLQ", flow=f"{env.u}-other")] == [other]


async def test_purge_without_yes_and_without_a_terminal_refuses(env: Env, capsys, monkeypatch):
    """No terminal to ask on and no --yes: exit 2, nothing deleted."""
    seq = await env.put(contract(), ce_id="q1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert await env.dlq("purge", str(seq)) == 2
    assert "pass --yes" in out_err(capsys)[1]
    assert await env.seqs() == [seq]


# --- with a running hub ------------------------------------------------------------------------


async def test_an_edited_replay_is_processed_by_its_flow_only(tmp_path: Path, nats_url: str, js, unique: str, capsys):
    """A real flow dead-letters a schema failure; after `dlq edit` the flow publishes the fixed
    message, and another flow on the same subject does not see the replay (Hub-Replay-For)."""
    project = project_from(tmp_path, config_for(unique), flow_for(unique, out="a"),
                           flow_for(unique, name=f"{unique}-b", schema=None, out="b"))
    hub = await started_hub(project, nats_url)
    env = Env(unique, js, nats_url, tmp_path)
    out_a = await StreamReader.open(js, f"{unique}.out.a")
    out_b = await StreamReader.open(js, f"{unique}.out.b")
    dlq = await StreamReader.open(js, f"dlq.{unique}")
    try:
        await js.publish(env.subject, json.dumps(bad_contract("C-77")).encode(), headers={"ce-id": "live-1"})
        [record] = await dlq.wait_for(1)
        await out_b.wait_for(1)
        seq = record.metadata.sequence.stream
        assert await env.dlq("edit", str(seq), "--set", 'sites[0].postcode="7700"') == 0
        [fixed] = await out_a.wait_for(1)
        assert json.loads(fixed.data)["sites"][0]["postcode"] == "7700"
        assert await env.seqs() == []
        await js.publish(env.subject, json.dumps(contract(contract_id="C-78")).encode(), headers={"ce-id": "live-2"})
        await out_a.wait_for(2)

        async def b_done() -> bool:
            info = await js.consumer_info(f"IN{unique}", f"{unique}-b")
            return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq == 3

        await wait_until(b_done)
        await out_b.wait_for(2)
        assert [json.loads(m.data)["contract_id"] for m in out_b.messages] == ["C-77", "C-78"]
    finally:
        await hub.stop()


async def test_purge_asks_on_a_terminal(env: Env, capsys, monkeypatch):
    """On a terminal, purge asks "purge N records? [y/N]": anything but y keeps them."""
    import dlq.cli

    seq = await env.put(contract(), ce_id="t1")
    monkeypatch.setattr(dlq.cli, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert await env.dlq("purge", str(seq)) == 2
    assert "purge 1 records? [y/N]" in out_err(capsys)[1]
    assert await env.seqs() == [seq]
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert await env.dlq("purge", str(seq)) == 0
    assert await env.seqs() == []


# --- the environment ---------------------------------------------------------------------------


async def test_an_unreachable_broker_is_one_line_saying_what_to_do(env: Env, capsys, monkeypatch):
    """No server at --nats: exit 1 and a message naming the URL and the fix, not a traceback."""
    import dlq.cli

    monkeypatch.setattr(dlq.cli, "CONNECT_TIMEOUT", 0.5)
    env.url = "nats://127.0.0.1:1"
    assert await env.dlq("stats") == 1
    err = out_err(capsys)[1]
    assert err.startswith("cannot reach NATS at nats://127.0.0.1:1") and "pass --nats URL" in err


async def test_a_missing_dlq_stream_is_a_configuration_error(env: Env, capsys):
    """A config naming a DLQ stream the server does not have: exit 2, pointing at the fix."""
    (env.tmp / "config.yaml").write_text(textwrap.dedent(config_for(env.u)) + f"dlq: {{stream: NONE{env.u}}}\n")
    assert await env.dlq("list") == 2
    assert f"stream NONE{env.u} does not exist" in out_err(capsys)[1]


async def test_a_listing_ends_promptly_when_records_vanish_while_it_reads(env: Env, monkeypatch):
    """Records deleted mid-read (another operator's replay) end the read, they do not stall it."""
    from contextlib import aclosing

    monkeypatch.setattr(store, "FETCH_BATCH", 1)
    seqs = [await env.put(contract(), ce_id=f"v{i}") for i in range(3)]
    async with aclosing(store._scan(env.js, "DLQ", f"dlq.{env.u}")) as records:
        first = await anext(records)
        await store.delete(env.js, "DLQ", seqs[1:])
        start = time.monotonic()
        assert [r async for r in records] == []
        assert time.monotonic() - start < 5
    assert first.seq == seqs[0]


# --- payloads by claim check, left out, and the counts of deliveries and calls ----------------------


async def claim_checked(env: Env, payload: bytes, name: str) -> dict:
    """The payload in the Object Store as an ingress stores it; the reference headers."""
    from engine.claim_check import ClaimChecks

    return await ClaimChecks(env.js).put(f"{env.u}-{name}", payload)


async def test_show_fetches_a_claim_checked_payload_and_says_how_it_came(env: Env, capsys):
    """A record whose payload came by claim check (empty body) is shown with the payload itself, the
    reference, its size and digest; --json has both; `list` says `claim` in its payload column."""
    body = json.dumps(bad_contract("C-CLAIM")).encode()
    ref = await claim_checked(env, body, "show")
    seq = await env.put(b"", ce_id="claim-1", headers=ref)
    assert await env.dlq("show", str(seq)) == 0
    out, _ = out_err(capsys)
    assert f"payload:       by claim check {ref['Hub-Claim-Check']}, {len(body):,} bytes, sha256 {ref['Hub-Claim-Sha256']} " \
           "(fetched, size and SHA-256 checked)" in out
    assert f"payload (json, {len(body)} bytes, by claim check):" in out and '"contract_id": "C-CLAIM"' in out
    assert await env.dlq("show", str(seq), "--json") == 0
    data = json.loads(out_err(capsys)[0])
    assert data["payload"] == bad_contract("C-CLAIM")
    assert data["claim"] == {"ref": ref["Hub-Claim-Check"], "size": len(body), "sha256": ref["Hub-Claim-Sha256"],
                             "fetched": True, "problem": None}
    assert await env.dlq("list", "--flow", env.u) == 0
    assert f"claim {len(body)}B" in out_err(capsys)[0]


async def test_show_and_list_say_deliveries_calls_and_an_omitted_payload(env: Env, capsys):
    """The record's deliveries (JetStream's) and calls (the target's) are in `show` and `list`; a payload
    left out of the record says so and where the original is; replaying it is refused, it stays."""
    seq = await env.put(b"", ce_id="omit-1", deliveries=4, calls=9,
                        extra={"Hub-Dlq-Payload-Omitted": "1048000 bytes: too large for a record next to its headers; "
                                                          "the original is message 7 of stream INX"})
    assert await env.dlq("show", str(seq)) == 0
    out, _ = out_err(capsys)
    assert "deliveries:    4 by JetStream" in out and "calls:         9 requests the failing endpoints received" in out
    assert "payload:       OMITTED from the record: 1048000 bytes: too large" in out and "message 7 of stream INX" in out
    assert await env.dlq("list", "--flow", env.u) == 0
    row = out_err(capsys)[0].splitlines()[1].split()
    assert row[5:8] == ["4", "9", "omitted"]
    assert await env.dlq("show", str(seq), "--json") == 0
    data = json.loads(out_err(capsys)[0])
    assert (data["deliveries"], data["calls"]) == (4, 9) and "message 7 of stream INX" in data["payload_omitted"]
    assert await env.dlq("replay", str(seq)) == 1
    assert "replaying it would send an empty body" in out_err(capsys)[1]
    assert await env.seqs() == [seq] and await env.stored() == 0


async def test_replaying_a_claim_checked_record_sends_the_reference_only_while_its_object_is_there(env: Env, capsys):
    """A replay sends the reference again (the flow fetches the same bytes); once the object is gone the
    replay is refused with the reason and the record stays."""
    body = json.dumps(contract(contract_id="C-REF")).encode()
    ref = await claim_checked(env, body, "replay")
    kept, gone = await env.put(b"", ce_id="r-1", headers=ref), await env.put(b"", ce_id="r-2", headers=ref | {
        "Hub-Claim-Check": f"hub_claims/{env.u}-never-stored"})
    incoming = await StreamReader.open(env.js, env.subject)
    assert await env.dlq("replay", str(kept), str(gone)) == 1
    out, err = out_err(capsys)
    assert "replayed 1, failed 1" in out and f"hub_claims/{env.u}-never-stored is gone" in err
    [replayed] = await incoming.wait_for(1)
    assert replayed.data == b"" and replayed.headers["Hub-Claim-Check"] == ref["Hub-Claim-Check"]
    from engine.claim_check import ClaimChecks
    assert await ClaimChecks(env.js).fetch(replayed.headers) == body
    assert await env.seqs() == [gone]


async def test_an_edited_claim_checked_record_reaches_its_flow_edited(tmp_path: Path, nats_url: str, js, unique: str,
                                                                      capsys, monkeypatch):
    """`dlq edit --set` on a claim-checked record edits the fetched payload; the flow gets the edit, not
    the stored original: inline when the edit fits a message, else by a claim check of its own (the
    original object stays as it was)."""
    from engine.claim_check import ClaimChecks

    project = project_from(tmp_path, config_for(unique), flow_for(unique, schema=None, out="a"))
    env = Env(unique, js, nats_url, tmp_path)
    small = {"contract_id": "C-SMALL", "note": "x"}
    big = {"contract_id": "C-BIG", "note": "y" * (1100 * 1024)}  # over the server's 1 MiB max_payload
    refs = [await claim_checked(env, json.dumps(p).encode(), p["contract_id"]) for p in (small, big)]
    seqs = [await env.put(b"", ce_id=f"e-{i}", headers=ref) for i, ref in enumerate(refs)]
    hub = await started_hub(project, nats_url)
    out_a = await StreamReader.open(js, f"{unique}.out.a")
    try:
        assert await env.dlq("edit", str(seqs[0]), "--set", "note=edited") == 0
        assert await env.dlq("edit", str(seqs[1]), "--set", "contract_id=C-BIG-2") == 0
        got = await out_a.wait_for(2)
    finally:
        await hub.stop()
    first, second = sorted(got, key=lambda m: "Hub-Claim-Check" in (m.headers or {}))
    assert "Hub-Claim-Check" not in (first.headers or {}) and json.loads(first.data) == {**small, "note": "edited"}
    assert second.headers["Hub-Claim-Check"] not in (refs[1]["Hub-Claim-Check"], None)
    assert json.loads(await ClaimChecks(js).fetch(second.headers)) == {**big, "contract_id": "C-BIG-2"}
    assert json.loads(await ClaimChecks(js).fetch(refs[1])) == big
    assert await env.seqs() == []

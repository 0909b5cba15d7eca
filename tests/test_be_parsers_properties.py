"""Property-based tests of the Belgian mail and flat-file parsers: whatever arrives in the mailbox, the reader
answers a reply, a bounce or a permanent error of the taxonomy with a message, and never crashes
(KeyError, IndexError, UnicodeError, RecursionError ...), so one hostile mail can never stop the flow."""

from __future__ import annotations

import base64

import orjson

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.errors import PermanentError
from sandbox.mail.wire import b64, encoded_word, entity, multipart, quoted_printable, rfc2231
from schemas.be_flatfile import BeAccepted, BeFileHeader, BeFlatFile, BeRejected, FlatFileError, decode, encode
from tests.mail_corpus.build import load, request, shapes
from transforms.be_erp import apply_reply, open_request, parse_reply, undeliverable_alerts
from transforms.be_erp.tnef import SIGNATURE_BYTES, TnefError, tnef_attachments

CORPUS = [load(s.name) for s in shapes()]
PAYLOAD = request()[0]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome_of(raw: bytes) -> str:
    """parse_reply then apply_reply and the alerts, as the flow runs them: every output serialises as the flow
    publishes it (orjson), every error is permanent and says something in valid UTF-8."""
    try:
        message = parse_reply(raw)
    except PermanentError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        str(exc).encode("utf-8")
        return type(exc).__name__
    assert message["kind"] in ("reply", "bounce") and isinstance(message["token"], str) and message["token"]
    orjson.dumps(message)
    state = open_request({"state": None, "message": PAYLOAD})["state"]
    try:
        step = apply_reply({"state": state if message["token"] == PAYLOAD["token"] else None, "message": message})
    except PermanentError as exc:
        assert str(exc).strip()
        str(exc).encode("utf-8")
        return type(exc).__name__
    orjson.dumps(step)
    orjson.dumps(undeliverable_alerts(step["payload"]))
    return message["kind"]


@SETTINGS
@given(st.binary(max_size=2000))
@example(b"")
@example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n")
@example(b"Content-Type: message/rfc822\r\n\r\n" * 60 + b"HDR")
@example(b"Subject: caf\xe9\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
         b"Content-Type: message/delivery-status\r\n\r\nX: y\r\n\r\nFinal-Recipient: rfc822; \xe9@x\r\nAction: failed\r\n"
         b"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <CSW-1@hub.plu.example>\r\n\r\n--b--\r\n")
def test_any_bytes_give_a_result_or_a_permanent_error(raw: bytes):
    """Arbitrary bytes as a mail."""
    outcome_of(raw)


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for position, delete, insert in edits:
        at = position % (len(out) + 1)
        out[at:at + delete] = insert
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 40),
                           st.sampled_from([b"", b"\r\n", b"--", b"=", b";", b'"', b"=?", b"?=", b"*", b"\x00",
                                            b"\xff", b"HDR", b"Content-Type: multipart/mixed; boundary=x\r\n",
                                            b"Content-Transfer-Encoding: base64\r\n", b"report-type=delivery-status",
                                            b"\r\n\r\n", b"filename*0*=utf-8''%FF%", b"name==?utf-8?B?w6k?="])
                           | st.binary(max_size=8)), min_size=1, max_size=6)


@SETTINGS
@given(st.sampled_from(range(len(CORPUS))), EDITS)
def test_corpus_mails_cut_and_spliced_give_a_result_or_a_permanent_error(index: int, edits):
    """Every corpus shape (replies, TNEF, forwards, bounces) with bytes deleted, inserted and replaced."""
    outcome_of(_mutate(CORPUS[index], edits))


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
FILE = BeFlatFile(header=BeFileHeader(file_type="RSP", correlation_token=PAYLOAD["token"], sender="ERP-BE"),
                  records=[BeAccepted(ref_seq=1, ref_type="CSW", ref_key="K-BE-CORPUS"),
                           BeRejected(ref_seq=2, ref_type="CSW", ref_key="K-BE-CORPUS", reason_code="T001",
                                      reason_text="Tarif inconnu / onbekend tarief")])


@st.composite
def leaf(draw) -> bytes:
    """One part as some client might write it: any type, disposition, name encoding and transfer encoding."""
    data = draw(st.sampled_from([encode(FILE), b"HDR" + draw(st.binary(max_size=60)), draw(st.binary(max_size=80)),
                                 SIGNATURE_BYTES + draw(st.binary(max_size=60)), b"\xef\xbb\xbfHDR"]))
    ctype = draw(st.sampled_from(["text/plain", "application/octet-stream", "image/png", "application/ms-tnef",
                                  "text/html; charset=utf-8", "text/plain; charset=iso-8859-1"]))
    name = draw(NAMES)
    naming = draw(st.sampled_from(["none", "plain", "2047", "2047-unquoted", "2231", "2231-split"]))
    fields = []
    cd = draw(st.sampled_from([None, "attachment", "inline"]))
    param = {"none": "", "plain": f'; filename="{name.encode("ascii", "replace").decode()}"',
             "2047": f'; filename="{encoded_word(name)}"', "2047-unquoted": f"; filename={encoded_word(name)}",
             "2231": f"; {rfc2231('filename', name)}", "2231-split": f"; {rfc2231('filename', name, chunk=9)}"}[naming]
    fields.append(("Content-Type", ctype))
    if cd:
        fields.append(("Content-Disposition", cd + param))
    cte = draw(st.sampled_from(["base64", "quoted-printable", "8bit", "7bit", None]))
    if cte:
        fields.append(("Content-Transfer-Encoding", cte))
    body = b64(data) if cte == "base64" else quoted_printable(data) if cte == "quoted-printable" else data
    return entity(fields, body)


def tree(depth: int = 3):
    leaves = leaf()
    if depth == 0:
        return leaves
    return st.one_of(leaves, st.builds(
        lambda kind, kids, b: entity([("Content-Type", f'multipart/{kind}; boundary="{b}"')], multipart(b, kids)),
        st.sampled_from(["mixed", "alternative", "related", "report; report-type=delivery-status"]),
        st.lists(tree(depth - 1), min_size=0, max_size=3), st.sampled_from(["b1", "=_b2", "Apple-Mail=_b3"])),
        st.builds(lambda inner: entity([("Content-Type", "message/rfc822")], inner), tree(depth - 1)))


@SETTINGS
@given(tree(), st.sampled_from(["", f"[PLU-BE:{PAYLOAD['token']}]", "=?utf-8?B?w6k=?="]))
def test_generated_mime_trees_give_a_result_or_a_permanent_error(body: bytes, subject: str):
    """Random MIME trees: nested multiparts, forwards, reports, files named every way clients name them."""
    outcome_of(b"MIME-Version: 1.0\r\nFrom: x@y\r\nSubject: RE " + subject.encode() + b"\r\n" + body)


@SETTINGS
@given(st.binary(max_size=1500))
def test_the_flat_file_decoder_reads_any_bytes_or_names_the_line_and_field(data: bytes):
    """Arbitrary bytes as a flat file: a BeFlatFile or a FlatFileError naming line and field."""
    try:
        decode(data)
    except FlatFileError as exc:
        assert exc.line >= 1 and exc.field and str(exc).startswith(f"line {exc.line}, field {exc.field}")


@SETTINGS
@given(EDITS)
def test_a_cut_or_spliced_flat_file_is_read_or_refused_with_its_line_and_field(edits):
    """A valid reply file with bytes deleted, inserted and replaced."""
    try:
        decode(_mutate(encode(FILE), edits))
    except FlatFileError as exc:
        assert exc.line >= 1 and exc.field


@SETTINGS
@given(st.binary(max_size=400), st.booleans())
def test_the_tnef_reader_reads_any_stream_or_says_where_it_breaks(tail: bytes, signed: bool):
    """Arbitrary bytes (after the TNEF signature or not): the attachments or a TnefError, within the bytes given."""
    try:
        found = tnef_attachments((SIGNATURE_BYTES + b"\x01\x00" if signed else b"") + tail)
    except TnefError as exc:
        assert "TNEF" in str(exc)
    else:
        assert all(isinstance(data, bytes) and len(data) <= len(tail) for _, data in found)


def test_the_tnef_reader_is_not_stalled_by_a_huge_declared_count():
    """The 30-byte stream that keeps tnefparse busy for minutes (2**32-1 MAPI properties declared) is read
    at once: the reader skips MAPI blocks and never trusts a declared count."""
    import struct

    props = b"\xff\xff\xff\xff"
    stream = SIGNATURE_BYTES + b"\x01\x00" + struct.pack("<BII", 1, 0x00069003, 4) + props + struct.pack("<H", 0x3FC)
    assert tnef_attachments(stream) == []
    assert base64.b64encode(stream)

"""The Belgian reply reader against the corpus of real client, gateway and mail server shapes
(tests/mail_corpus/): every valid reply is applied, every bounce is matched to its request, everything else
is refused with a message that names the part, what it starts with and what was expected."""

from __future__ import annotations

import email
import email.policy
import logging
import struct

import pytest

from tests.mail_corpus.build import Shape, file_bytes, load, request, shapes
from transforms.be_erp import apply_reply, open_request, parse_reply
from transforms.be_erp.mime import leaves, parse_mail
from transforms.be_erp.tnef import tnef_attachments

SHAPES = {s.name: s for s in shapes()}


def opened() -> tuple[dict, str]:
    payload, _ = request()
    return open_request({"state": None, "message": payload})["state"], payload["token"]


def test_the_corpus_files_are_what_build_writes():
    """Each .eml file on disk is the builder's current output, so the corpus and its comments cannot drift."""
    from tests.mail_corpus.build import HERE

    for shape in SHAPES.values():
        assert (HERE / f"{shape.name}.eml").read_bytes() == file_bytes(shape), f"rerun tests/mail_corpus/build.py: {shape.name}"


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if s.expect == "reply"])
def test_a_valid_reply_in_any_client_shape_is_applied_to_its_request(name: str):
    """Wherever the client put the file (after a logo, inline, unnamed, octet-stream, forwarded, in TNEF,
    re-encoded by a gateway), the reply's records reach the pending request and move it."""
    shape: Shape = SHAPES[name]
    state, token = opened()
    reply = parse_reply(load(name))
    assert reply["kind"] == "reply" and reply["token"] == token
    expected = shape.extra.get("records", ["ACK", "ACK"])
    assert [r["record_type"] for r in reply["records"]] == expected
    after = apply_reply({"state": state, "message": reply})
    statuses = {r["status"] for r in after["state"]["records"].values()}
    assert statuses == ({"COMPLETED"} if expected == ["SWC"] else {"ACCEPTED"})
    assert len(reply["file"]["skipped"]) == shape.extra.get("skipped", 0)


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if "name" in s.extra])
def test_file_names_are_decoded_as_the_client_encoded_them(name: str):
    """RFC 2047 words in quotes (Outlook, Gmail, Apple Mail) and RFC 2231 with or without continuations
    (Thunderbird, Apple Mail) come out as the name the person saw; errors and logs show that name."""
    part = next(p for p in leaves(parse_mail(load(name))) if p.data.startswith(b"HDR"))
    assert part.filename == SHAPES[name].extra["name"]


def test_an_unquoted_rfc2047_name_which_policy_default_drops_is_decoded():
    """policy.default returns None for `filename==?UTF-8?B?...?=` (no quotes) and compat32 the raw word; the
    reader names it as the person saw it."""
    raw = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; "
           b"name==?UTF-8?B?w6l0w6kudHh0?=\r\nContent-Disposition: attachment; filename==?UTF-8?B?w6l0w6kudHh0?=\r\n"
           b"\r\nhello\r\n--b--\r\n")
    (part,) = leaves(parse_mail(raw))
    modern = email.message_from_bytes(raw, policy=email.policy.default).get_payload()[0]
    assert modern.get_filename() is None and part.filename == "été.txt"


def test_file_names_agree_with_policy_default_wherever_it_gives_one():
    """The stdlib's policy.default decodes RFC 2231 and quoted RFC 2047 names right: on every corpus part
    where it gives a name, the reader (compat32 plus email.header, 20x cheaper) gives the same."""
    compared = 0
    for name in SHAPES:
        modern = [p for p in email.message_from_bytes(load(name), policy=email.policy.default).walk()
                  if not p.is_multipart()]
        ours = [p for p in leaves(parse_mail(load(name))) if "/tnef:" not in p.number]
        for theirs, mine in zip(modern, ours):
            if theirs.get_filename():
                compared += 1
                assert mine.filename == theirs.get_filename(), (name, mine.number)
    assert compared >= 20


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if s.expect == "bounce"])
def test_a_bounce_of_our_request_is_matched_to_it_by_the_original_message_id(name: str):
    """Postfix (full original or headers only), Microsoft 365, Gmail and qmail bounces name the request's
    token, the failed recipient, the status and the server's own words."""
    shape = SHAPES[name]
    _, token = opened()
    bounce = parse_reply(load(name))
    assert bounce["kind"] == "bounce" and bounce["token"] == token
    details = bounce["bounce"]
    assert details["action"] == shape.extra["action"] and details["status"] == shape.extra["status"]
    assert details["recipient"] == "erp-be@plu.example"
    assert all(fragment in details["diagnostic"] for fragment in shape.says)


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if s.expect not in ("reply", "bounce")])
def test_a_mail_the_hub_cannot_use_is_refused_saying_exactly_why(name: str):
    """Only our own request echoed back, a TNEF without the file, a BOM-prefixed file, no file at all, a bounce
    of a mail the hub did not send: each a permanent error of its own class whose text names the cause."""
    shape = SHAPES[name]
    with pytest.raises(Exception) as caught:
        parse_reply(load(name))
    assert type(caught.value).__name__ == shape.expect
    assert getattr(caught.value, "transient", None) is False
    for fragment in shape.says:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_the_outlook_reply_with_our_request_first_applies_the_erps_file_and_names_ours_as_skipped():
    """The symptom behind `KeyError: 'ref_seq'`: our REQ file first, the ERP's RSP second; the REQ is skipped
    by its file type, the RSP applied."""
    state, _ = opened()
    reply = parse_reply(load("outlook-reply-with-attachments"))
    assert reply["file"]["skipped"] == ["part 2 (text/plain, attachment 'PLU_REQ_CSW-C66BAB223C2C4ECF.txt'): our own "
                                        "REQ file echoed back"]
    assert apply_reply({"state": state, "message": reply})["payload"] == []  # ACK: nothing for the CRM yet


def test_the_corpus_tnef_is_read_the_same_by_an_independent_decoder():
    """tnefparse (not ours) finds the same file in the corpus's winmail.dat as the hub's reader, so the
    Outlook shape is real TNEF and not only what our own reader expects."""
    tnefparse = pytest.importorskip("tnefparse")
    logging.getLogger("tnefparse").setLevel(logging.ERROR)
    part = next(p for p in leaves(parse_mail(load("outlook-tnef"))) if p.filename == "winmail.dat")
    theirs = [(a.name, a.data) for a in tnefparse.TNEF(part.data).attachments]
    assert theirs == tnef_attachments(part.data) and theirs[0][1].startswith(b"HDRRSP")


def test_a_broken_tnef_is_named_with_where_it_breaks():
    """A winmail.dat whose attribute claims more bytes than there are: the error says TNEF, the byte and the
    lengths, and asks for plain attachments."""
    part = next(p for p in leaves(parse_mail(load("outlook-tnef"))) if p.filename == "winmail.dat")
    cut = part.data[:60]
    raw = load("outlook-tnef").replace(b"winmail.dat", b"winmail.dat", 1)
    import base64

    from sandbox.mail.wire import b64

    raw = raw.replace(b64(part.data), b64(cut))
    assert base64.b64encode(cut)[:20] in raw
    with pytest.raises(Exception, match=r"TNEF .*declares \d+ bytes; \d+ are left.*plain attachments"):
        parse_reply(raw)
    assert struct.unpack("<I", cut[:4])[0] == 0x223E9F78

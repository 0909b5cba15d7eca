"""Pure transforms for Belgium's email-only ERP (referenced as `be_erp.<function>`).

Outbound: a contract or an account change becomes a flat file (schemas/be_flatfile) in a mail the
smtp adapter sends, with a correlation token derived from the business key, so a resend carries the
same token and Message-ID and both ends can see it is a repeat. Inbound: a mail (raw MIME) is read the
way real clients and mail servers shape it (inbox.py, mime.py, tnef.py, bounces.py): a reply file is
matched to its pending request by the token in its header, a bounce of a request mail by the original's
Message-ID, and both become the events the SOAP countries produce (replies.py).

    switch_mail(req) / account_mail(acc)  -> {..., token, mail: smtp `send` payload}
    open_request({state, message})        -> the pending request record (a `state` step, save: now)
    switch_requested(p)                   -> erp.contract.switch-requested as the SOAP flows publish it
    parse_reply(raw_mime_bytes)           -> {kind: reply, token, mail, records, file} | {kind: bounce, token, bounce}
    apply_reply({state, message})         -> {state, payload: [events]} (a `state` step)
    undeliverable_alerts(events)          -> [ops alert per bounced request]
    request_status({state, message})      -> the message with the request's status (read only)
"""

from transforms.be_erp.inbox import NotBelgianReply, UnknownBounce, parse_reply
from transforms.be_erp.mail import account_mail, switch_mail, switch_requested, token_for
from transforms.be_erp.replies import (UnmatchedReply, apply_reply, open_request, request_status,
                                       undeliverable_alerts)

__all__ = ["account_mail", "apply_reply", "open_request", "parse_reply", "request_status", "switch_mail",
           "switch_requested", "token_for", "undeliverable_alerts", "NotBelgianReply", "UnknownBounce",
           "UnmatchedReply"]

"""Pure transforms for Belgium's email-only ERP (referenced as `be_erp.<function>`).

Outbound: a contract or an account change becomes a flat file (schemas/be_flatfile) in a mail the
smtp adapter sends, with a correlation token derived from the business key, so a resend carries the
same token and Message-ID and both ends can see it is a repeat. Inbound: a reply mail (raw MIME) is
parsed, matched to its pending request by the token in the file header, the subject tag or the
Message-ID it answers, and turned into the same events the SOAP countries produce.

    switch_mail(req) / account_mail(acc)  -> {..., token, mail: smtp `send` payload}
    open_request({state, message})        -> the pending request record (a `state` step, save: now)
    switch_requested(p)                   -> erp.contract.switch-requested as the SOAP flows publish it
    parse_reply(raw_mime_bytes)           -> {token, mail: {...}, records: [...]}
    apply_reply({state, message})         -> {state, payload: [events]} (a `state` step)
    request_status({state, message})      -> the message with the request's status (read only)
"""

from transforms.be_erp.mail import account_mail, switch_mail, switch_requested, token_for
from transforms.be_erp.replies import UnmatchedReply, apply_reply, open_request, parse_reply, request_status

__all__ = ["account_mail", "apply_reply", "open_request", "parse_reply", "request_status", "switch_mail",
           "switch_requested", "token_for", "UnmatchedReply"]

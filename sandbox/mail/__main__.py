"""Run the mail sandbox (and the Belgian ERP simulator) alone, to look at it with a real mail client.

    python -m sandbox.mail [--plain] [--erp] [--user hub@plu.example=pw ...]

Prints the ports and the CA file to trust; stops on Ctrl-C. The servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from sandbox.mail import MailSandbox

DEFAULT_USERS = {"hub@plu.example": "hub-sandbox-pw", "erp-be@plu.example": "erp-sandbox-pw"}


async def serve(users: dict[str, str], tls: bool, erp: bool) -> None:
    async with MailSandbox(users=users, tls=tls) as mail, contextlib.AsyncExitStack() as stack:
        if erp:
            from sandbox.be_erp import BelgianErpSimulator

            address = "erp-be@plu.example"
            await mail.add_user(address, users.get(address, DEFAULT_USERS[address]))
            await stack.enter_async_context(BelgianErpSimulator(mail, address, mail.users[address]))
        mode = f"SMTP STARTTLS, IMAPS; trust {mail.ca_file}" if tls else "plain SMTP and IMAP"
        print(f"SMTP {mail.host}:{mail.smtp_port}  IMAP {mail.host}:{mail.imap_port}  ({mode})")
        for address, password in mail.users.items():
            print(f"  {address}  {password}")
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="no TLS (AUTH in clear on loopback)")
    parser.add_argument("--erp", action="store_true", help="also run the Belgian ERP simulator")
    parser.add_argument("--user", action="append", default=[], metavar="ADDRESS=PASSWORD")
    args = parser.parse_args()
    users = dict(u.split("=", 1) for u in args.user) or dict(DEFAULT_USERS)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(users, not args.plain, args.erp))


if __name__ == "__main__":
    main()

"""Benchmark: the Belgian reply reader (transforms/be_erp parse_reply) on the corpus shapes, against the bare
stdlib parse that any reader needs, measured in the same run.

    .venv/bin/python bench/mail_parse.py [--seconds 2]

Baseline: `email.message_from_bytes(raw, policy=compat32)`, a walk over every part and a decode of each leaf
(what the old reader did at least). Hub: parse_reply (policy.default, file names decoded, every HDR part
decoded by the flat-file codec, TNEF read, bounces parsed). Prints mails/s of each and the ratio, per kind of
shape (a system's reply, a person's client reply, a bounce) and for the whole corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).absolute().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import email  # noqa: E402
import email.policy  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from tests.mail_corpus.build import load, shapes  # noqa: E402
from transforms.be_erp import parse_reply  # noqa: E402
from engine.errors import PermanentError  # noqa: E402


def baseline(raw: bytes) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in msg.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def hub(raw: bytes) -> None:
    try:
        parse_reply(raw)
    except PermanentError:
        pass  # the refusals are part of the corpus: their cost counts


def rate(func: Callable[[bytes], None], mails: list[bytes], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for raw in mails:
            func(raw)
        done += len(mails)
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    args = parser.parse_args()
    corpus = shapes()
    groups = {
        "system reply (whole-message attachment)": [s for s in corpus if s.name == "whole-message-attachment"],
        "client replies (Outlook, Apple, Thunderbird, Gmail ...)": [s for s in corpus if s.expect == "reply"],
        "bounces (Postfix, Microsoft 365, Gmail, qmail)": [s for s in corpus if s.expect == "bounce"],
        "whole corpus": corpus,
    }
    print(f"{'shapes':58} {'baseline/s':>11} {'hub/s':>9} {'ratio':>6}")
    for label, chosen in groups.items():
        mails = [load(s.name) for s in chosen]
        base, ours = rate(baseline, mails, args.seconds), rate(hub, mails, args.seconds)
        print(f"{label + f' ({len(mails)})':58} {base:11.0f} {ours:9.0f} {ours / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The books of a runner's pull requests: how many messages it asked a durable consumer for and has
not received yet (its credit).

Deliveries carry the stream's subject, not the request's, so they count down the total; the server's
status for a request (408 expired, 409 refused, both with the messages it still owed) comes on that
request's own reply subject (a token after the feed's inbox). A request that dies without a word (its
consumer leader was killed or frozen) leaves credit that nothing counts down; it is written off by a
bound, not by attribution: a request older than its expiry (plus grace) is over whatever happened to
it, so the credit can never exceed what the requests still within their expiry asked for. Without
that bound a flow pulled a fraction of its window after a leader change for as long as its younger
requests kept delivering.
"""

from __future__ import annotations

from collections import OrderedDict

GRACE = 2.0  # seconds after a request's expiry before its silence means it is over


class PullCredit:
    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.total = 0                                              # asked for, not received
        self._open: OrderedDict[str, tuple[int, float]] = OrderedDict()  # token -> (batch, sent at)
        self._seq = 0

    def __len__(self) -> int:
        return len(self._open)

    def asked(self, n: int, now: float) -> str:
        """A request for `n` messages is going out; the token for its reply subject."""
        self._seq += 1
        token = str(self._seq)
        self._open[token] = (n, now)
        self.total += n
        return token

    def delivered(self) -> None:
        if self.total:
            self.total -= 1

    def closed(self, token: str, still_owed: int | None = None) -> None:
        """The server ended this request owing `still_owed` messages (None: all of them, it never
        reached a consumer)."""
        entry = self._open.pop(token, None)
        if entry is not None:
            self.total = max(0, self.total - (entry[0] if still_owed is None else still_owed))

    def expired(self, now: float) -> int:
        """Forget requests past their expiry and cap the credit at what the others asked for;
        returns the credit written off (what requests that died silently still owed)."""
        while self._open:
            sent = next(iter(self._open.values()))[1]
            if now < sent + self.expires + GRACE:
                break  # in the order they were sent: the rest are younger
            self._open.popitem(last=False)
        bound = sum(n for n, _ in self._open.values())
        gone = max(0, self.total - bound)
        self.total -= gone
        return gone

    def clear(self) -> int:
        """Every open request is gone (a reconnect, a consumer leader change); returns the credit."""
        gone, self.total = self.total, 0
        self._open.clear()
        return gone

"""The books of a runner's pull requests: what it asked a durable consumer for and has not received.

Each request has its own reply subject (a token after the feed's inbox), so the server's status for
it (408 expired, 409, 503) closes exactly that request. Deliveries carry the stream's subject, not the
request's, so they are counted against the oldest open request, the order in which the consumer
serves one client's requests. A request that dies without a word (its consumer leader was killed or
frozen) is dropped when it must have expired: credit never stays counted for a request that is gone,
even while the runner's other requests keep messages coming (the leak that left a flow pulling a
fraction of its window after a leader change).
"""

from __future__ import annotations

from collections import OrderedDict

GRACE = 2.0  # seconds after a request's expiry before its silence means it is gone


class PullCredit:
    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.total = 0                                          # messages asked for and not received
        self._open: OrderedDict[str, list[float]] = OrderedDict()  # token -> [remaining, sent at]
        self._seq = 0

    def __len__(self) -> int:
        return len(self._open)

    def asked(self, n: int, now: float) -> str:
        """A request for `n` messages is going out; the token for its reply subject."""
        self._seq += 1
        token = str(self._seq)
        self._open[token] = [n, now]
        self.total += n
        return token

    def delivered(self) -> None:
        if not self._open:
            return  # a late delivery for a request already written off: nothing to count down
        token = next(iter(self._open))
        entry = self._open[token]
        entry[0] -= 1
        self.total -= 1
        if entry[0] <= 0:
            del self._open[token]  # a request served in full ends without a status

    def closed(self, token: str) -> None:
        """The server ended this request (expired, refused, no responders): its rest is not coming."""
        entry = self._open.pop(token, None)
        if entry is not None:
            self.total -= int(entry[0])

    def expired(self, now: float) -> int:
        """Drop the requests that should have ended by now without a word from the server; returns
        the credit written off."""
        gone = 0
        while self._open:
            token, (remaining, sent) = next(iter(self._open.items()))
            if now < sent + self.expires + GRACE:
                break  # requests are in the order they were sent: the rest are younger
            del self._open[token]
            gone += int(remaining)
        self.total -= gone
        return gone

    def clear(self) -> int:
        """Every open request is gone (a reconnect, a consumer leader change); returns the credit."""
        gone, self.total = self.total, 0
        self._open.clear()
        return gone

"""pymap's IMAP server over the shared store, on a loopback port it keeps across stop and start.

pymap's own service entry point owns its config and listens until the process ends; the sandbox needs a
listener it can close (dropping every client, as a real server restart does) and open again on the same
port while the store lives on, so it runs pymap's `IMAPServer` connection handler on its own listener.
"""

from __future__ import annotations

import asyncio
import ssl

from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.imap import IMAPServer

from engine.tasks import cancel_and_wait
from sandbox.mail.store import MailStore


class ImapServer:
    """IMAP4rev1 with IDLE, MOVE and UIDPLUS; implicit TLS when given a server context."""

    def __init__(self, store: MailStore, host: str = "127.0.0.1", *, ssl_context: ssl.SSLContext | None = None,
                 port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._handler = IMAPServer(store.login, store.config)
        self._accept = ProxyProtocolReader(store.config.proxy_protocol).get_callback(self._serve)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """Clients connected now."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen (again): on a free port the first time, then on the same port."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=self.ssl_context,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every client off (each gets `* BYE`); the store keeps its messages."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await cancel_and_wait(list(self._connections))
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     sock_info: SocketInfo) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handler(reader, writer, sock_info)
        finally:
            self._connections.discard(task)
            writer.close()

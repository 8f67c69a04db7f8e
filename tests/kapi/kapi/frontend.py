"""The public port: reads each connection's first request head; ``pods/{log,exec,attach,
portforward}`` go to ``proxy.KubeletProxy`` on the raw connection (aiohttp cannot hand
an upgraded connection over), everything else is piped to the kmock server on an
internal port.

A piped request is sent on with ``Connection: close``, so the backend closes after its
response and the client, seeing ``Connection: close``, opens a new connection for its next
request: every connection carries one request, and the next request's head is always
read here.
"""

from __future__ import annotations

import asyncio
import json

from .errors import status_object
from .proxy import STREAM_PATH, Head, KubeletProxy, close, relay, render_head

HEAD_LIMIT = 1 << 20


class Frontend:
    def __init__(self, backend_port: int, proxy: KubeletProxy) -> None:
        self.backend_port = backend_port
        self.proxy = proxy

    async def start(self, host: str, port: int) -> asyncio.AbstractServer:
        return await asyncio.start_server(self.handle, host, port, limit=HEAD_LIMIT, reuse_address=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.readuntil(b'\r\n\r\n')
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            close(writer)
            return
        head = Head(raw)
        method, target = (head.first.split(' ') + ['', ''])[:2]
        match = STREAM_PATH.fullmatch(target.partition('?')[0])
        if match and (method == 'GET' or (method == 'POST' and match.group(3) != 'log')):
            peer = writer.get_extra_info('peername')
            await self.proxy.serve(head, (reader, writer), peer[0] if peer else '')
            return
        await self.pipe(head, reader, writer)

    async def pipe(self, head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection('127.0.0.1', self.backend_port)
        except OSError as e:
            body = json.dumps(status_object(503, 'ServiceUnavailable', f'kapi backend: {e}')).encode()
            writer.write(render_head('HTTP/1.1 503 Service Unavailable', [
                ('Content-Type', 'application/json'), ('Content-Length', str(len(body))),
                ('Connection', 'close')]) + body)
            close(writer)
            return
        backend_writer.write(render_head(head.first, head.without('Connection', 'Keep-Alive') +
                                         [('Connection', 'close')]))
        upstream = asyncio.ensure_future(self._upstream(reader, backend_writer))
        try:
            await relay(backend_reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            upstream.cancel()
            await asyncio.gather(upstream, return_exceptions=True)
            close(backend_writer)
            close(writer)

    @staticmethod
    async def _upstream(reader: asyncio.StreamReader, backend: asyncio.StreamWriter) -> None:
        """The request body (and anything after) to the backend; the client's EOF is passed
        on as a half-close, so the backend still answers, and a client that went away
        (a watch it stopped) closes the backend's side."""
        try:
            await relay(reader, backend)
            if backend.can_write_eof():
                backend.write_eof()
        except (ConnectionError, OSError):
            close(backend)

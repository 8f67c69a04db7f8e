"""``pods/log``, ``pods/exec``, ``pods/attach`` and ``pods/portforward`` relayed to the pod's
node's kubelet, the way the API server does it.

The kubelet's address is the Node's ``status.addresses`` (InternalIP, else Hostname) and
port ``status.daemonEndpoints.kubeletEndpoint.Port`` (10250 when unset). The connection is
TLS presenting ``--kubelet-client-cert``/``--kubelet-client-key``; the kubelet's certificate
is verified against ``--kubelet-ca`` (with the address as the name) when given, and not
verified otherwise (the API server's default without ``--kubelet-certificate-authority``).

Paths and parameters are the API server's (``LogLocation``, ``streamLocation``,
``PortForwardLocation``): ``/containerLogs/NS/POD/CONTAINER?follow=true&...``,
``/exec/NS/POD/CONTAINER?command=..&input=1&output=1&error=1&tty=1`` (PodExecOptions'
stdin/stdout/stderr/tty become input/output/error/tty), ``/attach/...``,
``/portForward/NS/POD?port=..``; keys sorted as Go's ``url.Values.Encode`` writes them.
Without ``container`` the only container is used; a pod with several is a 400
(``a container name must be specified for pod P, choose one of: [a b]``).

Logs: the kubelet's answer is streamed back as it arrives (its framing kept, with
``Connection: close``); a non-2xx answer becomes a Status as the API server's response
checker makes it. Upgrades (``Connection: Upgrade``, SPDY/3.1 or websocket): the client's
headers go to the kubelet (less ``Authorization``, with ``X-Forwarded-For``), the kubelet's
answer comes back verbatim, and after a ``101`` bytes are relayed both ways until either
side ends, when both connections are closed (the API server's UpgradeAwareHandler).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
from typing import Any

from .errors import ApiError, bad_request, not_found
from .reqlog import RequestLog
from .resources import core
from .store import Store

STREAM_PATH = re.compile(r'/api/v1/namespaces/([^/]+)/pods/([^/]+)/(log|exec|attach|portforward)/?')
CONNECT_TIMEOUT = 30.0
BUFFER = 64 * 1024
_TRUE = ('1', 't', 'T', 'TRUE', 'true', 'True')


class Head:
    """A parsed HTTP/1.x request or response head."""

    def __init__(self, raw: bytes) -> None:
        lines = raw.decode('latin-1').split('\r\n')
        self.first = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(':')
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str, default: str = '') -> str:
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), default)

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(n, v) for n, v in self.headers if n.lower() not in drop]


def render_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    return (first + '\r\n' + ''.join(f'{n}: {v}\r\n' for n, v in headers) + '\r\n').encode('latin-1')


def status_response(error: ApiError) -> bytes:
    body = json.dumps(error.status()).encode()
    head = render_head(f'HTTP/1.1 {error.code} {error.reason}', [
        ('Content-Type', 'application/json'), ('Content-Length', str(len(body))), ('Connection', 'close')])
    return head + body


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(BUFFER)
        if not data:
            return
        writer.write(data)
        await writer.drain()


async def relay_both(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Copies a→b and b→a until either direction ends (EOF or error), then closes both."""
    tasks = [asyncio.ensure_future(relay(a[0], b[1])), asyncio.ensure_future(relay(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (a[1], b[1]):
            close(writer)


def close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:
        pass


async def read_framed_body(reader: asyncio.StreamReader, head: Head, limit: int = 1 << 20) -> bytes:
    """The body of a response, framing included (Content-Length, chunked, or until EOF)."""
    if head.get('Transfer-Encoding').lower() == 'chunked':
        out = bytearray()
        while len(out) < limit:
            line = await reader.readline()
            out += line
            size = int(line.split(b';')[0].strip() or b'0', 16)
            if size == 0:
                while True:
                    trailer = await reader.readline()
                    out += trailer
                    if trailer in (b'\r\n', b''):
                        return bytes(out)
            out += await reader.readexactly(size + 2)
        return bytes(out)
    length = head.get('Content-Length')
    if length:
        return await reader.readexactly(min(int(length), limit))
    return await reader.read(limit)


def dechunk(framed: bytes, head: Head) -> bytes:
    if head.get('Transfer-Encoding').lower() != 'chunked':
        return framed
    out, rest = bytearray(), framed
    while rest:
        line, _, rest = rest.partition(b'\r\n')
        size = int(line.split(b';')[0].strip() or b'0', 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return bytes(out)


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _flag(query: dict[str, list[str]], key: str) -> bool:
    return _one(query, key) in _TRUE


def _container(pod: dict[str, Any], wanted: str | None) -> str:
    spec = pod.get('spec') or {}
    name = pod['metadata']['name']
    containers = [c.get('name') for c in spec.get('containers') or []]
    everything = [c.get('name') for f in ('initContainers', 'containers', 'ephemeralContainers')
                  for c in spec.get(f) or []]
    if not wanted:
        if len(containers) == 1:
            return containers[0]
        if not containers:
            raise bad_request(f'a container name must be specified for pod {name}')
        raise bad_request(f'a container name must be specified for pod {name}, choose one of: '
                          f'[{" ".join(everything)}]')
    if wanted not in everything:
        raise bad_request(f'container {wanted} is not valid for pod {name}')
    return wanted


class KubeletProxy:
    def __init__(self, store: Store, reqlog: RequestLog, client_cert: str | None, client_key: str | None,
                 kubelet_ca: str | None) -> None:
        self.store = store
        self.reqlog = reqlog
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
        if kubelet_ca:
            context.load_verify_locations(kubelet_ca)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.tls = context

    def locate(self, path: str, query: dict[str, list[str]]) -> tuple[str, int, str] | None:
        """(host, port, kubelet path and query) for a request; None for the logs of a pod
        that is on no node (the API server answers those with an empty body)."""
        match = STREAM_PATH.fullmatch(path)
        assert match is not None
        ns, name, sub = (urllib.parse.unquote(g) for g in match.groups())
        pod = self.store.find(core('pods'), ns, name)
        if pod is None:
            raise not_found('pods', '', name)
        params: list[tuple[str, str]] = []
        container = ''
        if sub != 'portforward':
            container = _container(pod, _one(query, 'container'))
        if sub == 'log':
            for flag in ('follow', 'previous', 'timestamps'):
                if _flag(query, flag):
                    params.append((flag, 'true'))
            for key in ('sinceSeconds', 'sinceTime', 'tailLines', 'limitBytes'):
                value = _one(query, key)
                if value:
                    params.append((key, value))
        elif sub in ('exec', 'attach'):
            streams = {key: _flag(query, key) for key in ('stdin', 'stdout', 'stderr', 'tty')}
            if not (streams['stdin'] or streams['stdout'] or streams['stderr']):
                raise bad_request('you must specify at least 1 of stdin, stdout, stderr')
            for key, kubelet_key in (('stdin', 'input'), ('stdout', 'output'), ('stderr', 'error'), ('tty', 'tty')):
                if streams[key]:
                    params.append((kubelet_key, '1'))
            if sub == 'exec':
                commands = query.get('command') or []
                if not commands:
                    raise bad_request('you must specify at least one command for the container')
                params.extend(('command', c) for c in commands)
        else:
            ports = [p for value in query.get('ports') or [] for p in value.split(',') if p]
            if ports:
                params.append(('port', ','.join(ports)))
        node_name = (pod.get('spec') or {}).get('nodeName')
        if not node_name:
            if sub == 'log':
                return None
            raise bad_request(f'pod {name} does not have a host assigned')
        node = self.store.find(core('nodes'), None, node_name)
        if node is None:
            raise not_found('nodes', '', node_name)
        status = node.get('status') or {}
        addresses = status.get('addresses') or []
        host = next((a.get('address') for t in ('InternalIP', 'Hostname') for a in addresses
                     if a.get('type') == t and a.get('address')), None)
        if not host:
            raise ApiError(500, f'no preferred addresses found; known addresses: {addresses}', 'InternalError')
        port = ((status.get('daemonEndpoints') or {}).get('kubeletEndpoint') or {}).get('Port') or 10250
        kubelet_path = {
            'log': f'/containerLogs/{ns}/{name}/{container}',
            'exec': f'/exec/{ns}/{name}/{container}',
            'attach': f'/attach/{ns}/{name}/{container}',
            'portforward': f'/portForward/{ns}/{name}',
        }[sub]
        params.sort(key=lambda kv: kv[0])  # stable: values of a key keep their order
        encoded = urllib.parse.urlencode(params)
        return host, int(port), kubelet_path + (f'?{encoded}' if encoded else '')

    async def serve(self, head: Head, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    peer: str) -> None:
        method, target, _ = (head.first.split(' ') + ['', ''])[:3]
        path, _, query_string = target.partition('?')
        query = urllib.parse.parse_qs(query_string, keep_blank_values=True)
        headers = {n: v for n, v in head.headers}
        is_log = STREAM_PATH.fullmatch(path).group(3) == 'log'  # type: ignore[union-attr]
        status = 500
        try:
            try:
                location = self.locate(path, query)
                if location is None:
                    status = 200
                    client[1].write(render_head('HTTP/1.1 200 OK', [
                        ('Content-Type', 'text/plain'), ('Content-Length', '0'), ('Connection', 'close')]))
                    await client[1].drain()
                    return
                host, port, kubelet_target = location
                url = f'https://{host}:{port}{kubelet_target}'
                try:
                    kubelet = await asyncio.wait_for(
                        asyncio.open_connection(host, port, ssl=self.tls, server_hostname=host),
                        CONNECT_TIMEOUT)
                except ConnectionRefusedError:
                    why = f'dial tcp {host}:{port}: connect: connection refused'
                    message = f'Get "{url}": {why}' if is_log else f'error dialing backend: {why}'
                    raise ApiError(500, message, 'InternalError')
                except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                    why = f'{type(e).__name__}: {e}' if not str(e) else str(e)
                    message = f'Get "{url}": {why}' if is_log else f'error dialing backend: {why}'
                    raise ApiError(500, message, 'InternalError')
            except ApiError as e:
                status = e.code
                client[1].write(status_response(e))
                await client[1].drain()
                return
            if is_log:
                status = await self._logs(head, client, kubelet, host, port, kubelet_target, path)
            else:
                status = await self._upgrade(head, client, kubelet, host, port, kubelet_target, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            flat = {k: v[0] for k, v in query.items() if v}
            self.reqlog.record(method, path, query_string, flat, headers, status)
            close(client[1])

    async def _logs(self, head: Head, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    kubelet: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str, port: int,
                    target: str, path: str) -> int:
        request = render_head(f'GET {target} HTTP/1.1', [
            ('Host', f'{host}:{port}'),
            ('User-Agent', head.get('User-Agent', 'orca-kapi')),
            ('Accept', '*/*'),
            ('Accept-Encoding', 'identity'),
            ('Connection', 'close'),
        ])
        kubelet[1].write(request)
        await kubelet[1].drain()
        answer = Head(await kubelet[0].readuntil(b'\r\n\r\n'))
        code = int(answer.first.split(' ')[1])
        if 200 <= code <= 206:
            client[1].write(render_head(answer.first, answer.without('Connection', 'Keep-Alive') +
                                        [('Connection', 'close')]))
            await client[1].drain()
            await relay_both(client, kubelet)
            return code
        body = dechunk(await read_framed_body(kubelet[0], answer), answer).decode('utf-8', 'replace').strip()
        close(kubelet[1])
        name = path.split('/')[5]
        if code == 400:
            error = ApiError(400, body, 'BadRequest')
        elif code == 500:
            error = ApiError(500, f'Internal error occurred: {body}', 'InternalError')
        elif code == 404:
            error = ApiError(404, f'the server could not find the requested resource ( pods/log {name})', 'NotFound')
        else:
            error = ApiError(code, body or f'the server responded with the status code {code} but did not return '
                                           f'more information (get pods/log {name})', None)
        client[1].write(status_response(error))
        await client[1].drain()
        return code

    async def _upgrade(self, head: Head, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                       kubelet: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str, port: int,
                       target: str, peer: str) -> int:
        method = head.first.split(' ')[0]
        headers = head.without('Host', 'Authorization', 'Proxy-Authorization', 'X-Forwarded-For')
        forwarded = head.get('X-Forwarded-For')
        headers = [('Host', f'{host}:{port}')] + headers + [
            ('X-Forwarded-For', f'{forwarded}, {peer}' if forwarded else peer)]
        kubelet[1].write(render_head(f'{method} {target} HTTP/1.1', headers))
        await kubelet[1].drain()
        raw = await kubelet[0].readuntil(b'\r\n\r\n')
        answer = Head(raw)
        code = int(answer.first.split(' ')[1])
        client[1].write(raw)
        await client[1].drain()
        if code == 101:
            await relay_both(client, kubelet)
        else:
            client[1].write(await read_framed_body(kubelet[0], answer))
            await client[1].drain()
            close(kubelet[1])
        return code


__all__ = ['KubeletProxy', 'Head', 'STREAM_PATH', 'status_response', 'relay_both']

"""The kmock handler: a ``kmock.KubernetesScaffold`` whose resource requests are served
from ``store.Store`` with the API server's semantics, and whose discovery documents are
the ones kubectl accepts.

kmock provides the HTTP server (aiohttp), the request model, the resource declarations
(``kmock.ResourceInfo``) and the fallback DSL for non-resource paths (discovery,
``/version``, ``/healthz``); kmock's own object handling (``KubernetesEmulator``: merge-only
updates, no resourceVersions, no selectors) is replaced, which is why this subclasses the
stateless scaffold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import time
import traceback
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering
from typing_extensions import override

from . import auth, objects, openapi, protobuf, resources, selection, tables
from .errors import ApiError, bad_request, status_object
from .reqlog import RequestLog, is_watch
from .resources import RESOURCES, Resource, Target
from .store import Expired, Store

SERVER_VERSION = {
    'major': '1',
    'minor': '32',
    'gitVersion': 'v1.32.0+orca-kapi',
    'gitCommit': '0000000000000000000000000000000000000000',
    'gitTreeState': 'clean',
    'buildDate': '2025-01-01T00:00:00Z',
    'goVersion': 'go1.23.4',
    'compiler': 'gc',
    'platform': 'linux/amd64',
}

# A watch without timeoutSeconds ends after this long (the real server picks 30–60 min).
DEFAULT_WATCH_SECONDS = 1800
BOOKMARK_EVERY = 30.0


def _json(payload: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(payload, separators=(',', ':')).encode(), status=status,
                                content_type='application/json')


def _success(res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
    details = {'name': obj['metadata']['name'], 'kind': res.plural, 'uid': obj['metadata'].get('uid')}
    if res.group:
        details['group'] = res.group
    return {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success', 'details': details}


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ''):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f'invalid {name}: {value!r}')


class _Ctx:
    """Per-request state: whether the request log already has the request."""
    __slots__ = ('logged', 'review')

    def __init__(self) -> None:
        self.logged = False
        self.review: dict[str, Any] | None = None


@attrs.define(kw_only=True)
class KubeApiServer(kmock.KubernetesScaffold):
    reqlog: RequestLog
    rules: auth.AccessRules
    store: Store = attrs.field(factory=Store)
    # Requests are recorded in the JSON log, not kept in memory (kmock keeps every one).
    served: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for r in RESOURCES:
            self.resources[r.key] = kmock.ResourceInfo(
                kind=r.kind, singular=r.singular, namespaced=r.namespaced, verbs=set(r.verbs),
                shortnames=set(r.short), categories=set(r.categories), subresources=set(r.subresources))
        for path in ('/healthz', '/livez', '/readyz'):
            self.fallback[f'get {path}'] << b'ok'
        self.fallback['get', re.compile(r'/openapi/v3/.+')] << self._serve_openapi_document
        self.fallback['get /openapi/v3'] << openapi.index()
        self.store.create(resources.core('namespaces'), None, {'metadata': {'name': 'default'}})
        for ns in ('kube-system', 'kube-public', 'kube-node-lease'):
            self.store.create(resources.core('namespaces'), None, {'metadata': {'name': ns}})

    # --- entry point ---------------------------------------------------------------

    @override
    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.served += 1
        ctx = _Ctx()
        try:
            body = await raw.read()
            target = resources.parse_path(raw.path)
            if target is not None:
                response = await self._serve_resource(raw, body, target, ctx)
            else:
                response = await self._serve_kmock(self._kmock_request(raw, body))
        except ApiError as e:
            response = _json(e.status(), e.code)
        except kmock.KubernetesError as e:
            response = _json(status_object(e.status, None, e.message or e.reason or 'error'), e.status)
        except Exception as e:  # a bug here: say so, and keep serving
            traceback.print_exc(file=sys.stderr)
            response = _json(status_object(500, 'InternalError', f'kapi: {type(e).__name__}: {e}'), 500)
        if not ctx.logged:
            self.reqlog.record(raw.method, raw.path, raw.rel_url.raw_query_string, raw.query, raw.headers,
                               response.status, ctx.review)
        return response

    async def _serve_kmock(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """kmock's reactions (discovery, /version, /healthz) for a non-resource request.

        kmock matches a request against its reactions by looking for it among the requests
        it has seen, so it is recorded for the time it is handled; afterwards it is dropped
        (and the reactions' own records are trimmed) so memory does not grow with every
        request."""
        self._requests.append(request)
        try:
            return await self._handle(request)
        finally:
            self._requests[:] = [r for r in self._requests if r is not request]
            for payload in self._payloads:
                seen = getattr(payload, '_requests', None)
                if isinstance(seen, list) and len(seen) > 100:
                    del seen[:-100]

    def _kmock_request(self, raw: aiohttp.web.BaseRequest, body: bytes) -> rendering.Request:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        return rendering.Request(
            id=self.served, raw_request=raw, url=raw.url, method=raw.method,
            params=dict(raw.query), headers=dict(raw.headers), cookies=dict(raw.cookies),
            body=body, text=body.decode('utf-8', 'replace'), data=data)

    # --- discovery (kmock's scaffold routes these paths here) ------------------------

    @override
    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return SERVER_VERSION

    @override
    async def _serve_root(self, request: rendering.Request) -> rendering.Payload:
        paths = {'/api', '/api/v1', '/apis', '/healthz', '/livez', '/readyz', '/version'}
        for group, versions in resources.groups().items():
            paths.add(f'/apis/{group}')
            paths.update(f'/apis/{group}/{v}' for v in versions)
        return {'paths': sorted(paths)}

    @override
    async def _serve_api(self, request: rendering.Request) -> rendering.Payload:
        host = request.headers.get('Host', '127.0.0.1')
        return {'kind': 'APIVersions', 'versions': ['v1'],
                'serverAddressByClientCIDRs': [{'clientCIDR': '0.0.0.0/0', 'serverAddress': host}]}

    @staticmethod
    def _group(group: str, versions: list[str]) -> dict[str, Any]:
        listed = [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions]
        return {'name': group, 'versions': listed, 'preferredVersion': listed[0]}

    @override
    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        return {'kind': 'APIGroupList', 'apiVersion': 'v1',
                'groups': [self._group(g, vs) for g, vs in resources.groups().items()]}

    @override
    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.url.path.strip('/').split('/')[1]
        versions = resources.groups().get(group)
        if not versions:
            raise ApiError(404, 'the server could not find the requested resource', 'NotFound')
        return {'kind': 'APIGroup', 'apiVersion': 'v1', **self._group(group, versions)}

    @override
    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        parts = request.url.path.strip('/').split('/')
        group, version = ('', parts[1]) if parts[0] == 'api' else (parts[1], parts[2])
        served = [r for r in RESOURCES if r.group == group and r.version == version]
        if not served:
            raise ApiError(404, 'the server could not find the requested resource', 'NotFound')
        return {
            'kind': 'APIResourceList',
            'apiVersion': 'v1',
            'groupVersion': f'{group}/{version}' if group else version,
            'resources': [entry for r in served for entry in r.discovery()],
        }

    async def _serve_openapi_document(self, request: rendering.Request) -> rendering.Payload:
        doc = openapi.document(request.url.path[len('/openapi/v3/'):])
        if doc is None:
            raise ApiError(404, 'the server could not find the requested resource', 'NotFound')
        return doc

    # --- resources -----------------------------------------------------------------

    async def _serve_resource(self, raw: aiohttp.web.BaseRequest, body: bytes, target: Target,
                              ctx: _Ctx) -> aiohttp.web.StreamResponse:
        res = resources.lookup(target.group, target.version, target.plural)
        missing = ApiError(404, 'the server could not find the requested resource', 'NotFound')
        if res is None or (target.namespace is not None and not res.namespaced):
            raise missing
        if target.subresource is not None and target.subresource not in res.subresources:
            raise missing
        if res.namespaced and target.name is not None and target.namespace is None:
            raise missing
        method, query, ns, name, sub = raw.method.upper(), raw.query, target.namespace, target.name, target.subresource
        data = self._body(body, raw.headers.get('Content-Type', '')) if method in ('POST', 'PUT', 'PATCH') else None
        store = self.store

        if method == 'GET':
            if is_watch(query):
                return await self._watch(raw, res, ns, name, ctx)
            if name is None:
                return self._list(res, ns, query, self._table(raw, res))
            if sub in (None, 'status'):
                obj = store.get(res, ns, name)
                if self._table(raw, res) and sub is None:
                    return _json(tables.table(res.plural, [obj], {'resourceVersion': obj['metadata']['resourceVersion']},
                                              query.get('includeObject', 'Metadata')))
                return _json(obj)
            raise ApiError(400, f'{res.plural}/{sub} is served by the front end only', 'BadRequest')
        if method == 'POST':
            if name is None:
                if res.plural == 'subjectaccessreviews':
                    answer = self.rules.review(data)
                    ctx.review = {'spec': answer.get('spec'), 'status': answer['status']}
                    return _json(answer, 201)
                if res.namespaced and ns is None:
                    raise missing
                return _json(store.create(res, ns, data), 201)
            if res.plural == 'serviceaccounts' and sub == 'token':
                return _json(auth.token_request(store, ns or '', name, data), 201)
            if res.plural == 'pods' and sub == 'binding':
                return _json(self._bind(res, ns, name, data), 201)
            if res.plural == 'pods' and sub == 'eviction':
                options = (data or {}).get('deleteOptions') or {} if isinstance(data, dict) else {}
                store.delete(res, ns, name, options, None)
                return _json({'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success'}, 201)
            raise ApiError(405, f'the server does not allow this method on the requested resource', 'MethodNotAllowed')
        if name is None:
            if method == 'DELETE':
                return self._delete_collection(res, ns, query, data_options(body, raw.headers.get('Content-Type', '')))
            raise ApiError(405, 'the server does not allow this method on the requested resource', 'MethodNotAllowed')
        if method == 'PUT':
            return _json(store.replace(res, ns, name, data, self._write_sub(sub)))
        if method == 'PATCH':
            content_type = raw.headers.get('Content-Type', '')
            obj, created = store.patch(res, ns, name, content_type, data, self._write_sub(sub))
            return _json(obj, 201 if created else 200)
        if method == 'DELETE':
            obj = store.delete(res, ns, name, data_options(body, raw.headers.get('Content-Type', '')),
                               _int_param(query, 'gracePeriodSeconds'))
            if res.plural in ('pods', 'namespaces') and not res.group:
                return _json(obj)
            return _json(_success(res, obj))
        raise ApiError(405, 'the server does not allow this method on the requested resource', 'MethodNotAllowed')

    @staticmethod
    def _write_sub(sub: str | None) -> str | None:
        if sub in (None, 'status', 'finalize'):
            return sub
        raise ApiError(405, 'the server does not allow this method on the requested resource', 'MethodNotAllowed')

    @staticmethod
    def _body(body: bytes, content_type: str) -> Any:
        if not body:
            return None
        if content_type.startswith(protobuf.CONTENT_TYPE):
            return protobuf.decode(body)
        try:
            return json.loads(body)
        except ValueError as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}")

    @staticmethod
    def _table(raw: aiohttp.web.BaseRequest, res: Resource) -> bool:
        return tables.served(res.group, res.plural) and tables.wants_table(raw.headers.get('Accept', ''))

    def _list(self, res: Resource, ns: str | None, query: Any, table: bool) -> aiohttp.web.Response:
        items = self.store.list(res, ns, selection.parse_fields(query.get('fieldSelector')),
                                selection.parse_labels(query.get('labelSelector')))
        meta: dict[str, Any] = {'resourceVersion': str(self.store.rv)}
        start = 0
        token = query.get('continue')
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token.encode()))['start'])
            except (ValueError, KeyError, TypeError):
                raise bad_request(f'invalid continue token: {token}')
        limit = _int_param(query, 'limit')
        page = items[start:start + limit] if limit else items[start:]
        if limit and start + limit < len(items):
            meta['continue'] = base64.urlsafe_b64encode(json.dumps({'start': start + limit}).encode()).decode()
            meta['remainingItemCount'] = len(items) - start - limit
        if table:
            return _json(tables.table(res.plural, page, meta, query.get('includeObject', 'Metadata')))
        return _json({'kind': f'{res.kind}List', 'apiVersion': res.group_version, 'metadata': meta, 'items': page})

    def _delete_collection(self, res: Resource, ns: str | None, query: Any,
                           options: dict[str, Any]) -> aiohttp.web.Response:
        if res.namespaced and ns is None:
            raise ApiError(404, 'the server could not find the requested resource', 'NotFound')
        items = self.store.list(res, ns, selection.parse_fields(query.get('fieldSelector')),
                                selection.parse_labels(query.get('labelSelector')))
        done = []
        for obj in items:
            meta = obj['metadata']
            done.append(self.store.delete(res, meta.get('namespace'), meta['name'], options,
                                          _int_param(query, 'gracePeriodSeconds')))
        return _json({'kind': f'{res.kind}List', 'apiVersion': res.group_version,
                      'metadata': {'resourceVersion': str(self.store.rv)}, 'items': done})

    def _bind(self, res: Resource, ns: str | None, name: str, data: Any) -> dict[str, Any]:
        node = ((data or {}).get('target') or {}).get('name') if isinstance(data, dict) else None
        if not node:
            raise bad_request('Binding: target.name is required')
        self.store.bind(res, ns, name, node)
        return {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success', 'code': 201}

    async def _watch(self, raw: aiohttp.web.BaseRequest, res: Resource, ns: str | None, name: str | None,
                     ctx: _Ctx) -> aiohttp.web.StreamResponse:
        query = raw.query
        fields = selection.parse_fields(query.get('fieldSelector'))
        labels = selection.parse_labels(query.get('labelSelector'))
        timeout = _int_param(query, 'timeoutSeconds') or DEFAULT_WATCH_SECONDS
        bookmarks = query.get('allowWatchBookmarks', '').lower() in ('1', 'true')
        initial = query.get('sendInitialEvents', '').lower() in ('1', 'true')
        table = self._table(raw, res)
        include = query.get('includeObject', 'Metadata')

        async def send(kind: str, obj: dict[str, Any]) -> None:
            if table and kind != 'BOOKMARK':
                obj = tables.table(res.plural, [obj], {'resourceVersion': obj['metadata'].get('resourceVersion')},
                                   include)
            await self._send(response, kind, obj)
        response = aiohttp.web.StreamResponse(status=200, headers={'Content-Type': 'application/json'})
        if raw.version >= (1, 1):
            response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(res, ns, name, fields, labels, query.get('resourceVersion'), initial)
        except Expired as e:
            await response.prepare(raw)
            self._log_started(raw, ctx)
            error = status_object(410, 'Expired', str(e))
            await response.write(json.dumps({'type': 'ERROR', 'object': error}).encode() + b'\n')
            await response.write_eof()
            return response
        try:
            await response.prepare(raw)
            self._log_started(raw, ctx)
            if initial:
                # The initial events are queued; the bookmark that ends them goes right after.
                while not watcher.queue.empty():
                    await send(*watcher.queue.get_nowait())
                await send('BOOKMARK', self._bookmark(res, initial_end=True))
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + BOOKMARK_EVERY
            while not watcher.overflowed:
                now = time.monotonic()
                if now >= deadline:
                    break
                transport = raw.transport
                if transport is None or transport.is_closing():
                    break
                try:
                    kind, obj = await asyncio.wait_for(watcher.queue.get(), timeout=min(1.0, deadline - now))
                except asyncio.TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await send('BOOKMARK', self._bookmark(res))
                        next_bookmark = time.monotonic() + BOOKMARK_EVERY
                    continue
                await send(kind, obj)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.store.watchers.discard(watcher)
        return response

    def _bookmark(self, res: Resource, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {'resourceVersion': str(self.store.rv)}
        if initial_end:
            meta['annotations'] = {'k8s.io/initial-events-end': 'true'}
        return {'kind': res.kind, 'apiVersion': res.group_version, 'metadata': meta}

    @staticmethod
    async def _send(response: aiohttp.web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
        await response.write(json.dumps({'type': kind, 'object': obj}, separators=(',', ':')).encode() + b'\n')

    def _log_started(self, raw: aiohttp.web.BaseRequest, ctx: _Ctx) -> None:
        self.reqlog.record(raw.method, raw.path, raw.rel_url.raw_query_string, raw.query, raw.headers, 200)
        ctx.logged = True


def data_options(body: bytes, content_type: str) -> dict[str, Any]:
    """DeleteOptions from a DELETE body (empty when there is none)."""
    if not body:
        return {}
    if content_type.startswith(protobuf.CONTENT_TYPE):
        return protobuf.decode(body)
    try:
        options = json.loads(body)
    except ValueError as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}")
    return options if isinstance(options, dict) else {}


"""The request log: one JSON object per line and request, flushed as written, for tests
that check which requests a client made (e.g. that an RBAC ClusterRole covers them).

Fields: ``time``, ``method``, ``path``, ``query``, ``verb`` (as RBAC names it: get, list,
watch, create, update, patch, delete, deletecollection; the lower-case HTTP method for
non-resource paths), ``apiGroup`` (``""`` for the core group, null for non-resource
paths), ``apiVersion``, ``resource``, ``subresource``, ``namespace``, ``name``, ``status``
(the HTTP status the response started with), ``userAgent``, ``token`` (the bearer token,
when one was sent), and ``review`` (the spec and decision of a SubjectAccessReview).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any, TextIO

from .resources import Target, parse_path

_STREAMS = ('exec', 'attach', 'portforward')


def is_watch(query: Mapping[str, str]) -> bool:
    return query.get('watch', '').lower() in ('1', 'true')


def rbac_verb(method: str, target: Target | None, query: Mapping[str, str]) -> str:
    method = method.upper()
    if target is None:
        return method.lower()
    if target.subresource in _STREAMS:
        # Since 1.31 (AuthorizePodWebsocketUpgradeCreatePermission, on by default) the API
        # server requires `create` for these, whether the upgrade came as GET or POST.
        return 'create'
    if method in ('GET', 'HEAD'):
        if is_watch(query):
            return 'watch'
        return 'get' if target.name else 'list'
    if method == 'POST':
        return 'create'
    if method == 'PUT':
        return 'update'
    if method == 'PATCH':
        return 'patch'
    if method == 'DELETE':
        return 'delete' if target.name else 'deletecollection'
    return method.lower()


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get('Authorization') or headers.get('authorization') or ''
    if value[:7].lower() == 'bearer ':
        return value[7:].strip()
    return None


class RequestLog:
    def __init__(self, path: str | None) -> None:
        self.file: TextIO | None = open(path, 'a', encoding='utf-8') if path else None

    def record(self, method: str, path: str, query_string: str, query: Mapping[str, str],
               headers: Mapping[str, str], status: int, review: dict[str, Any] | None = None) -> None:
        target = parse_path(path)
        entry: dict[str, Any] = {
            'time': datetime.datetime.now(tz=datetime.timezone.utc).isoformat(timespec='milliseconds'),
            'method': method.upper(),
            'path': path,
            'query': query_string,
            'verb': rbac_verb(method, target, query),
            'apiGroup': target.group if target else None,
            'apiVersion': target.version if target else None,
            'resource': target.plural if target else None,
            'subresource': target.subresource if target else None,
            'namespace': target.namespace if target else None,
            'name': target.name if target else None,
            'status': status,
            'userAgent': headers.get('User-Agent') or headers.get('user-agent'),
        }
        token = bearer(headers)
        if token is not None:
            entry['token'] = token
        if review is not None:
            entry['review'] = review
        if self.file is not None:
            self.file.write(json.dumps(entry, separators=(',', ':')) + '\n')
            self.file.flush()

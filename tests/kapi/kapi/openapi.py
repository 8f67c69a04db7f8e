"""A minimal OpenAPI v3 for kubectl's validation.

kubectl (1.27+) validates ``create``/``apply``/``replace`` on the server when the OpenAPI
v3 document of the resource's group-version shows that its PATCH operation takes the
``fieldValidation`` query parameter; then it sends ``fieldValidation=Strict`` and needs no
schema. So each ``/openapi/v3/<group-version>`` document holds just the item paths with a
PATCH operation carrying ``x-kubernetes-group-version-kind`` and that parameter, and no
schemas. (The emulator does not check fields: unknown fields are stored as sent.)
``/openapi/v2`` is not served (404): without it kubectl's client-side validation
would fail, but kubectl only falls back to it when the v3 documents lack the parameter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import RESOURCES


def _gv_path(group: str, version: str) -> str:
    return f'api/{version}' if not group else f'apis/{group}/{version}'


def _documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for r in RESOURCES:
        gv = _gv_path(r.group, r.version)
        doc = docs.setdefault(gv, {
            'openapi': '3.0.0',
            'info': {'title': 'Kubernetes', 'version': 'v1.32.0'},
            'paths': {},
            'components': {'schemas': {}},
        })
        scope = '/namespaces/{namespace}' if r.namespaced else ''
        parameters = [
            {'name': 'name', 'in': 'path', 'required': True, 'schema': {'type': 'string'}},
            {'name': 'fieldValidation', 'in': 'query', 'schema': {'type': 'string', 'uniqueItems': True}},
            {'name': 'fieldManager', 'in': 'query', 'schema': {'type': 'string', 'uniqueItems': True}},
            {'name': 'dryRun', 'in': 'query', 'schema': {'type': 'string', 'uniqueItems': True}},
        ]
        if r.namespaced:
            parameters.insert(0, {'name': 'namespace', 'in': 'path', 'required': True, 'schema': {'type': 'string'}})
        if 'patch' in r.verbs:
            doc['paths'][f'/{gv}{scope}/{r.plural}/{{name}}'] = {
                'patch': {
                    'operationId': f'patch{r.kind}',
                    'x-kubernetes-action': 'patch',
                    'x-kubernetes-group-version-kind': {'group': r.group, 'version': r.version, 'kind': r.kind},
                    'parameters': parameters,
                    'responses': {'200': {'description': 'OK'}},
                },
            }
    return docs


DOCUMENTS = _documents()
_HASHES = {gv: hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()[:128]
           for gv, doc in DOCUMENTS.items()}


def index() -> dict[str, Any]:
    return {'paths': {gv: {'serverRelativeURL': f'/openapi/v3/{gv}?hash={h}'} for gv, h in _HASHES.items()}}


def document(gv: str) -> dict[str, Any] | None:
    return DOCUMENTS.get(gv.strip('/'))

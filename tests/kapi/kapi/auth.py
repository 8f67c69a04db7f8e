"""TokenRequest (``serviceaccounts/token``) and SubjectAccessReview.

Tokens are JWT-shaped like the real ones (``iss``, ``sub``, ``aud``, ``exp``, ``iat``,
``nbf``, ``jti``, and the ``kubernetes.io`` claim naming the namespace, the service
account and the bound pod, its node, or secret), signed with HS256 and a key made at
start (the real API server signs with RS256; nothing here verifies tokens).

SubjectAccessReviews are answered from ``--sar-allow`` rules ``USER:VERB:RESOURCE:SUBRESOURCE``
(each part a glob, ``*`` for any; SUBRESOURCE ``*`` also matches none; RESOURCE matches
the path of a non-resource review): allowed when one matches, else denied with a reason.
"""

from __future__ import annotations

import base64
import copy
import datetime
import fnmatch
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

from . import objects
from .errors import ApiError, bad_request, conflict, invalid, not_found
from .resources import core
from .store import Store

ISSUER = 'https://kubernetes.default.svc.cluster.local'
_KEY = os.urandom(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def jwt(payload: dict[str, Any]) -> str:
    header = _b64(json.dumps({'alg': 'HS256', 'kid': 'orca-kapi'}, separators=(',', ':')).encode())
    body = _b64(json.dumps(payload, separators=(',', ':')).encode())
    signature = hmac.new(_KEY, f'{header}.{body}'.encode(), hashlib.sha256).digest()
    return f'{header}.{body}.{_b64(signature)}'


def token_request(store: Store, namespace: str, name: str, body: Any) -> dict[str, Any]:
    """The answered TokenRequest for ServiceAccount ``namespace/name``."""
    sa = store.get(core('serviceaccounts'), namespace, name)
    if not isinstance(body, dict):
        body = {}
    spec = copy.deepcopy(body.get('spec') or {})
    audiences = spec.get('audiences') or [ISSUER]
    seconds = spec.get('expirationSeconds') or 3600
    if not isinstance(seconds, int) or seconds < 600:
        raise invalid('TokenRequest', 'authentication.k8s.io', name, 'spec.expirationSeconds',
                      f'Invalid value: {seconds}: may not specify a duration less than 10 minutes')
    if seconds > 2 ** 32:
        raise invalid('TokenRequest', 'authentication.k8s.io', name, 'spec.expirationSeconds',
                      f'Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds')
    claims: dict[str, Any] = {
        'namespace': namespace,
        'serviceaccount': {'name': name, 'uid': sa['metadata']['uid']},
    }
    bound = spec.get('boundObjectRef')
    if bound:
        claims.update(_bound_claims(store, namespace, name, bound))
    issued = int(time.time())
    payload = {
        'aud': audiences,
        'exp': issued + seconds,
        'iat': issued,
        'iss': ISSUER,
        'jti': str(uuid.uuid4()),
        'kubernetes.io': claims,
        'nbf': issued,
        'sub': f'system:serviceaccount:{namespace}:{name}',
    }
    spec['audiences'] = audiences
    spec['expirationSeconds'] = seconds
    expires = datetime.datetime.fromtimestamp(issued + seconds, tz=datetime.timezone.utc)
    return {
        'kind': 'TokenRequest',
        'apiVersion': 'authentication.k8s.io/v1',
        'metadata': {'name': name, 'namespace': namespace, 'creationTimestamp': objects.timestamp()},
        'spec': spec,
        'status': {'token': jwt(payload), 'expirationTimestamp': objects.timestamp(expires)},
    }


def _bound_claims(store: Store, namespace: str, account: str, ref: dict[str, Any]) -> dict[str, Any]:
    kind, name, uid = ref.get('kind'), ref.get('name', ''), ref.get('uid')
    plural = {'Pod': 'pods', 'Secret': 'secrets', 'Node': 'nodes'}.get(kind or '')
    if plural is None:
        raise bad_request(f'cannot bind token to object of type {kind}')
    obj = store.find(core(plural), None if plural == 'nodes' else namespace, name)
    if obj is None:
        raise not_found(plural, '', name)
    if uid and uid != obj['metadata']['uid']:
        raise conflict(plural, '', name, f'the UID in the bound object reference ({uid}) does not match the UID '
                                         f'in record. The object might have been deleted and then recreated')
    claims: dict[str, Any] = {kind.lower(): {'name': name, 'uid': obj['metadata']['uid']}}
    if plural == 'pods':
        if (obj.get('spec') or {}).get('serviceAccountName', 'default') != account:
            raise bad_request(f'cannot bind token for serviceaccount "{account}" to pod running with different '
                              f'serviceaccount name.')
        node_name = (obj.get('spec') or {}).get('nodeName')
        node = store.find(core('nodes'), None, node_name) if node_name else None
        if node is not None:
            claims['node'] = {'name': node_name, 'uid': node['metadata']['uid']}
    return claims


class AccessRules:
    """``--sar-allow`` rules."""

    def __init__(self, rules: list[str]) -> None:
        self.rules = []
        for rule in rules:
            parts = rule.split(':')
            if len(parts) != 4:
                raise ValueError(f'--sar-allow {rule!r}: expected USER:VERB:RESOURCE:SUBRESOURCE')
            self.rules.append((rule, parts))

    def review(self, body: Any) -> dict[str, Any]:
        """The answered SubjectAccessReview."""
        if not isinstance(body, dict) or not isinstance(body.get('spec'), dict):
            raise ApiError(400, 'SubjectAccessReview: spec is required', 'BadRequest')
        spec = body['spec']
        attrs = spec.get('resourceAttributes') or {}
        other = spec.get('nonResourceAttributes') or {}
        user = spec.get('user', '')
        verb = attrs.get('verb') or other.get('verb') or ''
        resource = attrs.get('resource') or other.get('path') or ''
        sub = attrs.get('subresource') or ''
        asked = f'{user}:{verb}:{resource}:{sub}'
        status: dict[str, Any] = {'allowed': False, 'reason': f'no --sar-allow rule matches {asked}'}
        for rule, (u, v, r, s) in self.rules:
            if (fnmatch.fnmatchcase(user, u) and fnmatch.fnmatchcase(verb, v)
                    and fnmatch.fnmatchcase(resource, r) and (fnmatch.fnmatchcase(sub, s) or s == '*')):
                status = {'allowed': True, 'reason': f'allowed by --sar-allow {rule}'}
                break
        answer = copy.deepcopy(body)
        answer['apiVersion'] = 'authorization.k8s.io/v1'
        answer['kind'] = 'SubjectAccessReview'
        answer['metadata'] = {'creationTimestamp': None}
        answer['status'] = status
        return answer

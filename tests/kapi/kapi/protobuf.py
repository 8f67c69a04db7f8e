"""Decoding of the protobuf request bodies kubectl's typed clients send.

kubectl's typed clients (``create namespace|configmap|secret|serviceaccount|token``,
``drain``'s evictions) send ``application/vnd.kubernetes.protobuf`` bodies: the magic
``k8s\\0`` and a ``runtime.Unknown`` holding the apiVersion, kind and the object's own
protobuf encoding. They are turned into the JSON form here for the kinds listed in
``KINDS`` (field numbers from k8s.io/api's ``generated.proto``); other kinds get a 415.
Responses are always JSON (these clients accept it).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from .errors import ApiError

MAGIC = b'k8s\x00'
CONTENT_TYPE = 'application/vnd.kubernetes.protobuf'

# A field: (JSON name, type); types: 'string', 'bytes', 'int', 'bool', 'time', 'map',
# 'bytesmap' (values base64 in JSON), a message name, or ('repeated', type).
Schema = dict[int, tuple[str, Any]]

MESSAGES: dict[str, Schema] = {
    'Unknown': {1: ('typeMeta', 'TypeMeta'), 2: ('raw', 'bytes'), 3: ('contentEncoding', 'string'),
                4: ('contentType', 'string')},
    'TypeMeta': {1: ('apiVersion', 'string'), 2: ('kind', 'string')},
    'ObjectMeta': {
        1: ('name', 'string'), 2: ('generateName', 'string'), 3: ('namespace', 'string'),
        4: ('selfLink', 'string'), 5: ('uid', 'string'), 6: ('resourceVersion', 'string'),
        7: ('generation', 'int'), 8: ('creationTimestamp', 'time'), 9: ('deletionTimestamp', 'time'),
        10: ('deletionGracePeriodSeconds', 'int'), 11: ('labels', 'map'), 12: ('annotations', 'map'),
        13: ('ownerReferences', ('repeated', 'OwnerReference')), 14: ('finalizers', ('repeated', 'string')),
    },
    'OwnerReference': {1: ('kind', 'string'), 3: ('name', 'string'), 4: ('uid', 'string'),
                       5: ('apiVersion', 'string'), 6: ('controller', 'bool'), 7: ('blockOwnerDeletion', 'bool')},
    'ObjectReference': {1: ('kind', 'string'), 2: ('namespace', 'string'), 3: ('name', 'string'),
                        4: ('uid', 'string'), 5: ('apiVersion', 'string'), 6: ('resourceVersion', 'string'),
                        7: ('fieldPath', 'string')},
    'LocalObjectReference': {1: ('name', 'string')},
    'Namespace': {1: ('metadata', 'ObjectMeta'), 2: ('spec', 'NamespaceSpec'), 3: ('status', 'NamespaceStatus')},
    'NamespaceSpec': {1: ('finalizers', ('repeated', 'string'))},
    'NamespaceStatus': {1: ('phase', 'string')},
    'ConfigMap': {1: ('metadata', 'ObjectMeta'), 2: ('data', 'map'), 3: ('binaryData', 'bytesmap'),
                  4: ('immutable', 'bool')},
    'Secret': {1: ('metadata', 'ObjectMeta'), 2: ('data', 'bytesmap'), 3: ('type', 'string'),
               4: ('stringData', 'map'), 5: ('immutable', 'bool')},
    'ServiceAccount': {1: ('metadata', 'ObjectMeta'), 2: ('secrets', ('repeated', 'ObjectReference')),
                       3: ('imagePullSecrets', ('repeated', 'LocalObjectReference')),
                       4: ('automountServiceAccountToken', 'bool')},
    'TokenRequest': {1: ('metadata', 'ObjectMeta'), 2: ('spec', 'TokenRequestSpec')},
    'TokenRequestSpec': {1: ('audiences', ('repeated', 'string')), 4: ('expirationSeconds', 'int'),
                         3: ('boundObjectRef', 'BoundObjectReference')},
    'BoundObjectReference': {1: ('kind', 'string'), 2: ('apiVersion', 'string'), 3: ('name', 'string'),
                             4: ('uid', 'string')},
    'Eviction': {1: ('metadata', 'ObjectMeta'), 2: ('deleteOptions', 'DeleteOptions')},
    'DeleteOptions': {1: ('gracePeriodSeconds', 'int'), 2: ('preconditions', 'Preconditions'),
                      3: ('orphanDependents', 'bool'), 4: ('propagationPolicy', 'string'),
                      5: ('dryRun', ('repeated', 'string'))},
    'Preconditions': {1: ('uid', 'string'), 2: ('resourceVersion', 'string')},
    'Time': {1: ('seconds', 'int'), 2: ('nanos', 'int')},
}
KINDS = ('Namespace', 'ConfigMap', 'Secret', 'ServiceAccount', 'TokenRequest', 'Eviction', 'DeleteOptions')


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = int.from_bytes(data[i:i + 8], 'little'), i + 8
        elif wire == 5:
            value, i = int.from_bytes(data[i:i + 4], 'little'), i + 4
        else:
            raise ValueError(f'unsupported wire type {wire}')
        out.append((number, wire, value))
    return out


def _scalar(kind: str, value: Any) -> Any:
    if kind == 'string':
        return value.decode('utf-8')
    if kind == 'bytes':
        return value
    if kind == 'int':
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == 'bool':
        return bool(value)
    if kind == 'time':
        seconds = decode_message('Time', value).get('seconds', 0)
        at = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
        return at.strftime('%Y-%m-%dT%H:%M:%SZ')
    return decode_message(kind, value)


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    schema = MESSAGES[name]
    obj: dict[str, Any] = {}
    for number, _, value in _fields(data):
        if number not in schema:
            continue
        key, kind = schema[number]
        if kind in ('map', 'bytesmap'):
            entry = {n: v for n, _, v in _fields(value)}
            raw = entry.get(2, b'')
            obj.setdefault(key, {})[entry.get(1, b'').decode()] = (
                raw.decode('utf-8') if kind == 'map' else base64.b64encode(raw).decode())
        elif isinstance(kind, tuple):
            obj.setdefault(key, []).append(_scalar(kind[1], value))
        else:
            obj[key] = _scalar(kind, value)
    return obj


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object (415 for kinds not in ``KINDS``)."""
    if not body.startswith(MAGIC):
        raise ApiError(400, 'protobuf body without the k8s\\0 prefix', 'BadRequest')
    unknown = decode_message('Unknown', body[len(MAGIC):])
    type_meta = unknown.get('typeMeta') or {}
    kind = type_meta.get('kind', '')
    if kind not in KINDS:
        raise ApiError(415, f'the emulator decodes protobuf bodies of {", ".join(KINDS)} only, not {kind!r}; '
                            f'send JSON (e.g. kubectl create -f FILE)', 'UnsupportedMediaType')
    obj = decode_message(kind, unknown.get('raw', b''))
    obj['apiVersion'] = type_meta.get('apiVersion', '')
    obj['kind'] = kind
    return obj

"""The PATCH content types of the API server.

- ``application/merge-patch+json``: RFC 7386 (objects merge recursively, ``null``
  deletes, anything else — lists included — replaces).
- ``application/strategic-merge-patch+json``: simplified. It is a merge patch, except:
  lists whose field name is in ``MERGE_KEYS`` are merged item by item by that key
  (``containers``/``volumes``/``env``… by ``name``, ``conditions`` and node
  ``addresses`` by ``type``, ``containerStatuses`` by ``name``, ``ports`` by
  ``containerPort`` or ``port``, ``ownerReferences`` by ``uid``…); ``finalizers`` is
  merged as a set; the directives ``$patch: replace|delete`` (maps and list items),
  ``$deleteFromPrimitiveList/<field>`` and ``$retainKeys`` are honoured, and
  ``$setElementOrder/<field>`` is ignored. The real API server takes the merge keys
  from the Go types; the field-name table covers the core types ORCA and kubectl touch.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test).
- ``application/apply-patch+yaml`` (server-side apply): the body must be JSON (YAML is
  not parsed); applied as a strategic merge patch, creating the object when missing.
  Field ownership is not tracked.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE = 'application/merge-patch+json'
STRATEGIC = 'application/strategic-merge-patch+json'
JSON_PATCH = 'application/json-patch+json'
APPLY = 'application/apply-patch+yaml'
APPLY_CBOR = 'application/apply-patch+cbor'

MERGE_KEYS = {
    'containers': 'name',
    'initContainers': 'name',
    'ephemeralContainers': 'name',
    'volumes': 'name',
    'env': 'name',
    'volumeMounts': 'mountPath',
    'volumeDevices': 'devicePath',
    'imagePullSecrets': 'name',
    'secrets': 'name',
    'resourceClaims': 'name',
    'conditions': 'type',
    'containerStatuses': 'name',
    'initContainerStatuses': 'name',
    'ephemeralContainerStatuses': 'name',
    'addresses': 'type',
    'ownerReferences': 'uid',
    'podIPs': 'ip',
    'hostIPs': 'ip',
    'hostAliases': 'ip',
    'topologySpreadConstraints': 'topologyKey',
}
PRIMITIVE_SETS = {'finalizers'}


def apply(content_type: str, original: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The object after ``patch`` (of ``content_type``) is applied to ``original``."""
    base = content_type.split(';')[0].strip().lower()
    if base == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request('json patch must be a list of operations')
        return json_patch(original, patch)
    if not isinstance(patch, dict):
        raise bad_request(f'the patch of type {base} must be a JSON object')
    if base == MERGE:
        return merge_patch(original, patch)
    if base in (STRATEGIC, APPLY):
        result = strategic_merge(original, patch)
        return result if isinstance(result, dict) else {}
    raise ApiError(415, f'the body of the request was in an unknown format - accepted media types include: '
                        f'{JSON_PATCH}, {MERGE}, {STRATEGIC}, {APPLY}', 'UnsupportedMediaType')


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _clean(value: Any) -> Any:
    """A patch value without its directives, for where nothing is merged into."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith('$') and v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value if not (isinstance(v, dict) and v.get('$patch') == 'delete')]
    return copy.deepcopy(value)


def strategic_merge(original: Any, patch: Any) -> Any:
    """A strategic merge patch of a map (see the module docs); ``None`` deletes the map."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get('$patch')
    if directive == 'delete':
        return None
    if directive == 'replace' or not isinstance(original, dict):
        return _clean(patch)
    result = dict(original)
    for key, value in patch.items():
        if key in ('$patch', '$retainKeys') or key.startswith('$setElementOrder/'):
            continue
        if key.startswith('$deleteFromPrimitiveList/'):
            field = key.split('/', 1)[1]
            drop = value if isinstance(value, list) else [value]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in drop]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = value
    retain = patch.get('$retainKeys')
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    if field in PRIMITIVE_SETS and isinstance(original, list):
        merged = list(original)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    key = MERGE_KEYS.get(field)
    if field == 'ports':
        key = 'containerPort' if any(isinstance(i, dict) and 'containerPort' in i for i in patch + (original or [])) else 'port'
    if key is None or not isinstance(original, list) or not all(isinstance(i, dict) for i in patch):
        return _clean(patch)
    if any(i.get('$patch') == 'replace' for i in patch):
        return _clean([i for i in patch if i.get('$patch') != 'replace'])
    result = [copy.deepcopy(i) for i in original]
    for item in patch:
        if key not in item:
            result.append(_clean(item))
            continue
        index = next((n for n, have in enumerate(result) if isinstance(have, dict) and have.get(key) == item[key]), None)
        if item.get('$patch') == 'delete':
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_clean(item))
        else:
            merged = strategic_merge(result[index], item)
            if merged is None:
                del result[index]
            else:
                result[index] = merged
    return result


def _pointer(path: str) -> list[str]:
    if path == '':
        return []
    if not path.startswith('/'):
        raise bad_request(f'invalid JSON pointer: {path!r}')
    return [p.replace('~1', '/').replace('~0', '~') for p in path[1:].split('/')]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ApiError(422, f'the server rejected our request due to an error in our request: '
                                f'doc is missing path: "{path}"', 'Invalid')
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ApiError(422, f'doc is missing path: "{path}"', 'Invalid')
    return node


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise bad_request('cannot remove the whole document')
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, f'doc is missing path: "{path}"', 'Invalid')


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, f'doc is missing key: "{path}"', 'Invalid')
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == '-' and not replace:
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = copy.deepcopy(value)
            else:
                parent.insert(int(last), copy.deepcopy(value))
        else:
            raise ApiError(422, f'index out of range at "{path}"', 'Invalid')
    else:
        raise ApiError(422, f'doc is missing path: "{path}"', 'Invalid')
    return doc


def json_patch(original: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """RFC 6902."""
    doc: Any = copy.deepcopy(original)
    for op in ops:
        if not isinstance(op, dict) or 'op' not in op or 'path' not in op:
            raise bad_request(f'invalid JSON patch operation: {op!r}')
        kind, path = op['op'], op['path']
        if kind == 'add':
            doc = _add(doc, path, op.get('value'))
        elif kind == 'remove':
            _remove(doc, path)
        elif kind == 'replace':
            doc = _add(doc, path, op.get('value'), replace=True)
        elif kind == 'move':
            value = _remove(doc, op['from'])
            doc = _add(doc, path, value)
        elif kind == 'copy':
            doc = _add(doc, path, _get(doc, op['from']))
        elif kind == 'test':
            if _get(doc, path) != op.get('value'):
                raise ApiError(422, f'testing value {path} failed', 'Invalid')
        else:
            raise bad_request(f'unexpected JSON patch operation {kind!r}')
    if not isinstance(doc, dict):
        raise bad_request('the patched document is not an object')
    return doc

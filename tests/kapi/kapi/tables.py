"""Server-side printing: ``meta.k8s.io/v1 Table`` answers for kubectl's ``get``.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...``; for pods,
nodes and namespaces the answer is a Table with the columns of the real API server
(pods: NAME READY STATUS RESTARTS AGE, and IP NODE NOMINATED NODE READINESS GATES with
``-o wide``; nodes: NAME STATUS ROLES AGE VERSION, and INTERNAL-IP EXTERNAL-IP OS-IMAGE
KERNEL-VERSION CONTAINER-RUNTIME; namespaces: NAME STATUS AGE), watches included (one
Table per event). Other resources answer plain lists, which kubectl prints as NAME AGE.
"""

from __future__ import annotations

import datetime
from typing import Any

from .objects import now

TABLE_KINDS = {('', 'pods'), ('', 'nodes'), ('', 'namespaces')}


def wants_table(accept: str) -> bool:
    return 'as=Table' in accept and 'g=meta.k8s.io' in accept


def served(group: str, plural: str) -> bool:
    return (group, plural) in TABLE_KINDS


def _column(name: str, kind: str = 'string', priority: int = 0, fmt: str = '') -> dict[str, Any]:
    return {'name': name, 'type': kind, 'format': fmt, 'description': name, 'priority': priority}


def human_age(created: str | None) -> str:
    """Go's ``duration.HumanDuration`` of the time since ``created``."""
    if not created:
        return '<unknown>'
    try:
        at = datetime.datetime.strptime(created, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return '<unknown>'
    seconds = max(int((now() - at).total_seconds()), 0)
    if seconds < 120:
        return f'{seconds}s'
    minutes = seconds // 60
    if minutes < 10:
        return f'{minutes}m{seconds % 60}s' if seconds % 60 else f'{minutes}m'
    if minutes < 180:
        return f'{minutes}m'
    hours = minutes // 60
    if hours < 8:
        return f'{hours}h{minutes % 60}m' if minutes % 60 else f'{hours}h'
    if hours < 48:
        return f'{hours}h'
    days = hours // 24
    if hours < 24 * 8:
        return f'{days}d{hours % 24}h' if hours % 24 else f'{days}d'
    if days < 365 * 2:
        return f'{days}d'
    return f'{days // 365}y{days % 365}d' if days < 365 * 8 else f'{days // 365}y'


def _pod_row(pod: dict[str, Any]) -> list[Any]:
    meta, spec, status = pod['metadata'], pod.get('spec') or {}, pod.get('status') or {}
    statuses = status.get('containerStatuses') or []
    ready = sum(1 for c in statuses if c.get('ready'))
    restarts = sum(int(c.get('restartCount') or 0) for c in statuses)
    reason = status.get('reason') or status.get('phase') or 'Unknown'
    for c in statuses:
        state = c.get('state') or {}
        waiting, terminated = state.get('waiting'), state.get('terminated')
        if waiting and waiting.get('reason'):
            reason = waiting['reason']
        elif terminated:
            reason = terminated.get('reason') or (f'Signal:{terminated["signal"]}' if terminated.get('signal')
                                                  else f'ExitCode:{terminated.get("exitCode", 0)}')
    if meta.get('deletionTimestamp'):
        reason = 'Terminating'
    ips = status.get('podIPs') or ([{'ip': status['podIP']}] if status.get('podIP') else [])
    gates = spec.get('readinessGates') or []
    return [meta['name'], f'{ready}/{len(spec.get("containers") or [])}', reason, str(restarts),
            human_age(meta.get('creationTimestamp')), ips[0]['ip'] if ips else '<none>',
            spec.get('nodeName') or '<none>', status.get('nominatedNodeName') or '<none>',
            f'{len(gates)}/{len(gates)}' if gates else '<none>']


def _node_row(node: dict[str, Any]) -> list[Any]:
    meta, spec, status = node['metadata'], node.get('spec') or {}, node.get('status') or {}
    ready = next((c for c in status.get('conditions') or [] if c.get('type') == 'Ready'), None)
    state = 'Unknown' if ready is None or ready.get('status') == 'Unknown' else (
        'Ready' if ready.get('status') == 'True' else 'NotReady')
    if spec.get('unschedulable'):
        state += ',SchedulingDisabled'
    roles = sorted(k.split('/', 1)[1] for k in (meta.get('labels') or {})
                   if k.startswith('node-role.kubernetes.io/') and k.split('/', 1)[1])
    info = status.get('nodeInfo') or {}
    addresses = status.get('addresses') or []

    def address(kind: str) -> str:
        return next((a['address'] for a in addresses if a.get('type') == kind and a.get('address')), '<none>')
    return [meta['name'], state, ','.join(roles) or '<none>', human_age(meta.get('creationTimestamp')),
            info.get('kubeletVersion', ''), address('InternalIP'), address('ExternalIP'),
            info.get('osImage') or '<unknown>', info.get('kernelVersion') or '<unknown>',
            info.get('containerRuntimeVersion') or '<unknown>']


def _namespace_row(ns: dict[str, Any]) -> list[Any]:
    return [ns['metadata']['name'], (ns.get('status') or {}).get('phase', ''),
            human_age(ns['metadata'].get('creationTimestamp'))]


COLUMNS = {
    'pods': [_column('Name', fmt='name'), _column('Ready'), _column('Status'), _column('Restarts'),
             _column('Age'), _column('IP', priority=1), _column('Node', priority=1),
             _column('Nominated Node', priority=1), _column('Readiness Gates', priority=1)],
    'nodes': [_column('Name', fmt='name'), _column('Status'), _column('Roles'), _column('Age'),
              _column('Version'), _column('Internal-IP', priority=1), _column('External-IP', priority=1),
              _column('OS-Image', priority=1), _column('Kernel-Version', priority=1),
              _column('Container-Runtime', priority=1)],
    'namespaces': [_column('Name', fmt='name'), _column('Status'), _column('Age')],
}
ROWS = {'pods': _pod_row, 'nodes': _node_row, 'namespaces': _namespace_row}


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': obj['metadata']}


def table(plural: str, items: list[dict[str, Any]], meta: dict[str, Any], include_object: str) -> dict[str, Any]:
    """A Table of ``items``; rows carry the object's metadata (or the whole object with
    ``includeObject=Object``, or nothing with ``None``)."""
    rows = []
    for obj in items:
        row: dict[str, Any] = {'cells': ROWS[plural](obj)}
        if include_object == 'Object':
            row['object'] = obj
        elif include_object != 'None':
            row['object'] = _partial(obj)
        rows.append(row)
    return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1', 'metadata': meta,
            'columnDefinitions': COLUMNS[plural], 'rows': rows}

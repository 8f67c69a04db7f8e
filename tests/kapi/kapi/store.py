"""The objects, their resourceVersions, the event history and the watchers.

Every write takes the next value of one global counter as the object's
``metadata.resourceVersion`` and appends an event (``ADDED``, ``MODIFIED``, ``DELETED``)
to a bounded history; a watch from resourceVersion N replays the events after N, then
follows new ones, and gets an ``ERROR`` event with a 410 ``Expired`` Status when events
after N were already dropped (as the real API server's watch cache does). Writes are
synchronous (no ``await``), so a watch registers and replays without missing events.

Stored objects are never mutated: every write stores a new dict, so events can share them.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import datetime
from typing import Any

from . import objects, patching
from .errors import STALE, ApiError, already_exists, conflict, not_found
from .resources import RESOURCES, Resource, core
from .selection import Predicate

Key = tuple[str, str, str]  # (resource key, namespace or '', name)

# How many events a slow watcher may have queued before it is cut off (it re-lists).
WATCHER_QUEUE_LIMIT = 50_000


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    resource: str
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


class Watcher:
    """One watch request: its filter and the queue of (type, object) it has to send."""

    def __init__(self, res: Resource, namespace: str | None, name: str | None,
                 fields: Predicate | None, labels: Predicate | None) -> None:
        self.res = res
        self.namespace = namespace
        self.name = name
        self.fields = fields
        self.labels = labels
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.overflowed = False

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get('metadata') or {}
        if self.namespace is not None and meta.get('namespace') != self.namespace:
            return False
        if self.name is not None and meta.get('name') != self.name:
            return False
        if self.fields is not None and not self.fields(obj):
            return False
        return self.labels is None or self.labels(obj)

    def offer(self, event: Event) -> None:
        """Queues what this watcher sees of ``event``: an object that starts or stops
        matching the selectors is seen ADDED or DELETED, as the real API server does."""
        if event.resource != self.res.key or self.overflowed:
            return
        now = self.matches(event.obj)
        if event.type == 'MODIFIED':
            before = event.old is not None and self.matches(event.old)
            kind = ('MODIFIED' if before else 'ADDED') if now else ('DELETED' if before else None)
        else:
            kind = event.type if now else None
        if kind is None:
            return
        if self.queue.qsize() >= WATCHER_QUEUE_LIMIT:
            self.overflowed = True
            return
        self.queue.put_nowait((kind, event.obj))


class Expired(Exception):
    """The watch asked for events older than the history holds."""


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.setdefault('metadata', {})


class Store:
    def __init__(self, history_limit: int = 10_000) -> None:
        self.rv = 0
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: collections.deque[Event] = collections.deque()
        self.history_limit = history_limit
        self.compacted = 0  # the newest resourceVersion whose event was dropped
        self.watchers: set[Watcher] = set()

    # --- reading -------------------------------------------------------------------

    @staticmethod
    def key(res: Resource, namespace: str | None, name: str) -> Key:
        return (res.key, namespace or '' if res.namespaced else '', name)

    def find(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get(self.key(res, namespace, name))

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.find(res, namespace, name)
        if obj is None:
            raise not_found(res.plural, res.group, name)
        return obj

    def list(self, res: Resource, namespace: str | None, fields: Predicate | None = None,
             labels: Predicate | None = None) -> list[dict[str, Any]]:
        items = []
        for (rkey, ns, _), obj in sorted(self.objects.items()):
            if rkey != res.key or (namespace is not None and res.namespaced and ns != namespace):
                continue
            if fields is not None and not fields(obj):
                continue
            if labels is not None and not labels(obj):
                continue
            items.append(obj)
        return items

    # --- writing -------------------------------------------------------------------

    def _commit(self, res: Resource, kind: str, obj: dict[str, Any], old: dict[str, Any] | None,
                ) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        _meta(obj)['resourceVersion'] = str(self.rv)
        key = self.key(res, obj['metadata'].get('namespace'), obj['metadata']['name'])
        if kind == 'DELETED':
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        event = Event(self.rv, res.key, kind, obj, old)
        self.history.append(event)
        while len(self.history) > self.history_limit:
            self.compacted = self.history.popleft().rv
        for watcher in list(self.watchers):
            watcher.offer(event)
        if kind == 'DELETED' and res.plural == 'pods' and not res.group:
            self._maybe_finish_namespace(obj['metadata'].get('namespace'))
        return obj

    def _check_namespace(self, res: Resource, namespace: str | None, name: str) -> None:
        if not res.namespaced:
            return
        ns = self.find(core('namespaces'), None, namespace or '')
        if ns is None:
            raise not_found('namespaces', '', namespace or '')
        if ns['metadata'].get('deletionTimestamp'):
            raise ApiError(403, f'{res.plural} "{name}" is forbidden: unable to create new content in namespace '
                                f'{namespace} because it is being terminated', 'Forbidden',
                           {'name': name, 'kind': res.plural, 'causes': [{
                               'reason': 'NamespaceTerminating', 'field': 'metadata.namespace',
                               'message': f'namespace {namespace} is being terminated'}]})

    def create(self, res: Resource, namespace: str | None, body: Any) -> dict[str, Any]:
        obj = objects.prepare_create(res, body, namespace)
        name = obj['metadata']['name']
        self._check_namespace(res, obj['metadata'].get('namespace'), name)
        if self.find(res, obj['metadata'].get('namespace'), name) is not None:
            raise already_exists(res.plural, res.group, name)
        created = self._commit(res, 'ADDED', obj, None)
        if res.plural == 'namespaces' and not res.group:
            self.populate_namespace(name)
        return created

    def populate_namespace(self, namespace: str) -> None:
        """What controllers add to a new namespace: the ``default`` ServiceAccount and the
        ``kube-root-ca.crt`` ConfigMap."""
        sa = core('serviceaccounts')
        if self.find(sa, namespace, 'default') is None:
            self._commit(sa, 'ADDED', objects.prepare_create(
                sa, {'metadata': {'name': 'default'}}, namespace), None)
        cm = core('configmaps')
        if self.find(cm, namespace, 'kube-root-ca.crt') is None:
            self._commit(cm, 'ADDED', objects.prepare_create(cm, {
                'metadata': {'name': 'kube-root-ca.crt',
                             'annotations': {'kubernetes.io/description': 'Contains a CA bundle that can be used to '
                                             'verify the kube-apiserver when using internal endpoints such as the '
                                             'internal service IP or kubernetes.default.svc. No other usage is '
                                             'guaranteed across distributions of Kubernetes clusters.'}},
                'data': {'ca.crt': ROOT_CA_PLACEHOLDER},
            }, namespace), None)

    def _write(self, res: Resource, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Stores an update (nothing when it changes nothing, like the real API server),
        and removes an object whose deletion only waited for its finalizers."""
        meta = new['metadata']
        meta['resourceVersion'] = old['metadata'].get('resourceVersion')
        if new == old:
            return old
        if meta.get('deletionTimestamp') and not meta.get('finalizers') and meta.get('deletionGracePeriodSeconds') == 0:
            return self._commit(res, 'DELETED', new, old)
        return self._commit(res, 'MODIFIED', new, old)

    def replace(self, res: Resource, namespace: str | None, name: str, body: Any,
                subresource: str | None) -> dict[str, Any]:
        old = self.get(res, namespace, name)
        sent = (body.get('metadata') or {}).get('resourceVersion') if isinstance(body, dict) else None
        if sent and sent != old['metadata']['resourceVersion']:
            raise conflict(res.plural, res.group, name, STALE)
        new = objects.prepare_update(res, old, body, subresource, name)
        return self._write(res, old, new)

    def patch(self, res: Resource, namespace: str | None, name: str, content_type: str, body: Any,
              subresource: str | None) -> tuple[dict[str, Any], bool]:
        """Applies a patch; returns the object and whether it was created (server-side apply)."""
        old = self.find(res, namespace, name)
        base = content_type.split(';')[0].strip().lower()
        if old is None:
            if base == patching.APPLY and subresource is None:
                obj = dict(body) if isinstance(body, dict) else {}
                obj.setdefault('metadata', {})['name'] = name
                return self.create(res, namespace, obj), True
            raise not_found(res.plural, res.group, name)
        patched = patching.apply(content_type, old, body)
        sent = (patched.get('metadata') or {}).get('resourceVersion')
        if sent and sent != old['metadata']['resourceVersion']:
            raise conflict(res.plural, res.group, name, STALE)
        new = objects.prepare_update(res, old, patched, subresource, name)
        return self._write(res, old, new), False

    def bind(self, res: Resource, namespace: str | None, name: str, node: str) -> dict[str, Any]:
        """``pods/binding``: sets ``spec.nodeName`` (once) and the PodScheduled condition."""
        pod = self.get(res, namespace, name)
        bound = (pod.get('spec') or {}).get('nodeName')
        if bound:
            raise ApiError(409, f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is already '
                                f'assigned to node "{bound}"', 'Conflict', {'name': name, 'kind': 'pods/binding'})
        new = copy.deepcopy(pod)
        new.setdefault('spec', {})['nodeName'] = node
        status = new.setdefault('status', {})
        conditions = [c for c in status.get('conditions') or [] if c.get('type') != 'PodScheduled']
        conditions.append({'type': 'PodScheduled', 'status': 'True', 'lastProbeTime': None,
                           'lastTransitionTime': objects.timestamp()})
        status['conditions'] = conditions
        return self._commit(res, 'MODIFIED', new, pod)

    # --- deleting ------------------------------------------------------------------

    def delete(self, res: Resource, namespace: str | None, name: str, options: dict[str, Any],
               query_grace: int | None) -> dict[str, Any]:
        """Deletes as the API server does: pods bound to a node with a grace period are only
        marked (``deletionTimestamp``), objects with finalizers wait for them."""
        obj = self.get(res, namespace, name)
        meta = obj['metadata']
        pre = options.get('preconditions') or {}
        if pre.get('uid') and pre['uid'] != meta.get('uid'):
            raise ApiError(409, f'Precondition failed: UID in precondition: {pre["uid"]}, UID in object meta: '
                                f'{meta.get("uid")}', 'Conflict', {'name': name, 'kind': res.plural})
        if pre.get('resourceVersion') and pre['resourceVersion'] != meta.get('resourceVersion'):
            raise ApiError(409, f'Precondition failed: ResourceVersion in precondition: {pre["resourceVersion"]}, '
                                f'ResourceVersion in object meta: {meta.get("resourceVersion")}', 'Conflict',
                           {'name': name, 'kind': res.plural})
        grace = options.get('gracePeriodSeconds')
        if grace is None:
            grace = query_grace
        if res.plural == 'pods' and not res.group:
            return self._delete_pod(res, obj, grace)
        if res.plural == 'namespaces' and not res.group:
            return self._delete_namespace(obj)
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                return obj
            new = copy.deepcopy(obj)
            new['metadata']['deletionTimestamp'] = objects.timestamp()
            new['metadata']['deletionGracePeriodSeconds'] = 0
            return self._commit(res, 'MODIFIED', new, obj)
        return self._commit(res, 'DELETED', obj, obj)

    def _delete_pod(self, res: Resource, pod: dict[str, Any], grace: int | None) -> dict[str, Any]:
        spec, meta = pod.get('spec') or {}, pod['metadata']
        if grace is None:
            grace = spec.get('terminationGracePeriodSeconds')
            grace = 30 if grace is None else grace
        grace = int(grace)
        if grace < 0:
            grace = 1  # as the API server reads a negative grace period
        phase = (pod.get('status') or {}).get('phase')
        if not spec.get('nodeName') or phase in ('Succeeded', 'Failed'):
            grace = 0
        current = meta.get('deletionGracePeriodSeconds')
        if meta.get('deletionTimestamp') and current is not None and grace >= current:
            return pod  # already terminating at least as fast
        if grace > 0 or meta.get('finalizers'):
            new = copy.deepcopy(pod)
            at = objects.now() + datetime.timedelta(seconds=grace)
            new['metadata']['deletionTimestamp'] = objects.timestamp(at)
            new['metadata']['deletionGracePeriodSeconds'] = grace
            return self._commit(res, 'MODIFIED', new, pod)
        return self._commit(res, 'DELETED', pod, pod)

    def _delete_namespace(self, ns: dict[str, Any]) -> dict[str, Any]:
        """Marks the namespace Terminating, deletes its objects (pods gracefully) and
        removes it once no pod is left."""
        name = ns['metadata']['name']
        res = core('namespaces')
        if not ns['metadata'].get('deletionTimestamp'):
            new = copy.deepcopy(ns)
            new['metadata']['deletionTimestamp'] = objects.timestamp()
            new['metadata']['deletionGracePeriodSeconds'] = 0
            new['status'] = {'phase': 'Terminating'}
            ns = self._commit(res, 'MODIFIED', new, ns)
        for (rkey, namespace, obj_name), obj in list(self.objects.items()):
            if namespace != name or rkey == res.key:
                continue
            owner = next(r for r in RESOURCES if r.key == rkey)
            if owner.plural == 'pods' and not owner.group:
                if not obj['metadata'].get('deletionTimestamp'):
                    self._delete_pod(owner, obj, None)
            else:
                self._commit(owner, 'DELETED', obj, obj)
        self._maybe_finish_namespace(name)
        return self.find(res, None, name) or ns

    def _maybe_finish_namespace(self, namespace: str | None) -> None:
        if not namespace:
            return
        res = core('namespaces')
        ns = self.find(res, None, namespace)
        if ns is None or not ns['metadata'].get('deletionTimestamp'):
            return
        if any(key[1] == namespace for key in self.objects):
            return
        self._commit(res, 'DELETED', ns, ns)

    # --- watching ------------------------------------------------------------------

    def watch(self, res: Resource, namespace: str | None, name: str | None, fields: Predicate | None,
              labels: Predicate | None, since: str | None, initial_events: bool) -> Watcher:
        """A registered watcher with its first events queued: the current objects as ADDED
        when ``since`` is empty or ``0`` (or ``initial_events``), else the history after
        ``since``. Raises ``Expired`` when that history is gone."""
        watcher = Watcher(res, namespace, name, fields, labels)
        if not since or since == '0' or initial_events:
            for obj in self.list(res, namespace, fields, labels):
                if watcher.matches(obj):
                    watcher.queue.put_nowait(('ADDED', obj))
        else:
            try:
                after = int(since)
            except ValueError:
                raise ApiError(400, f'invalid resource version: {since}', 'BadRequest')
            if after < self.compacted:
                raise Expired(f'too old resource version: {after} ({self.compacted + 1})')
            for event in self.history:
                if event.rv > after:
                    watcher.offer(event)
        self.watchers.add(watcher)
        return watcher


# The data of every namespace's kube-root-ca.crt ConfigMap: a self-signed certificate
# (CN=kubernetes, valid until 2126) whose key was thrown away; no TLS is served.
ROOT_CA_PLACEHOLDER = (
    '-----BEGIN CERTIFICATE-----\n'
    'MIIBgTCCASegAwIBAgIUU7qhuZHhRX0hQnW8DHQGPNsVmcIwCgYIKoZIzj0EAwIw\n'
    'FTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjExMjMxMjAzMzZaGA8yMTI2MTAz\n'
    'MDEyMDMzNlowFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqG\n'
    'SM49AwEHA0IABO5M3HiaFXhZyZ0l+qAmgmuRrlDGtmZDlz6SaPvb5bnnzNQfCmFA\n'
    'PBTKDYVpmwBaHOpJ8Hco29EjGHQ+8haAxSCjUzBRMB0GA1UdDgQWBBRtV02E5Tp2\n'
    'M+De4rcelZpbHXOhTTAfBgNVHSMEGDAWgBRtV02E5Tp2M+De4rcelZpbHXOhTTAP\n'
    'BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIHITFhOPjnHpmh1kcFIB\n'
    'bCCXgL+sRb/u1Bpz1t85ByXBAiEAj1CvqGK0ikU+8jIPyDS85K0j7ykaiTqFoupo\n'
    'dmedPFg=\n'
    '-----END CERTIFICATE-----\n'
)

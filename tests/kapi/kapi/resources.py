"""The resources the emulator serves, with what discovery says about them.

Each ``Resource`` is also declared to kmock (``kmock.ResourceInfo``) by the server; the
extra data here (subresource kinds, list kinds, whether ``status`` is a subresource) is
what kubectl's discovery and the store need beyond kmock's model.
"""

from __future__ import annotations

import dataclasses

ALL_VERBS = ('create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch')
NO_COLLECTION_DELETE = ('create', 'delete', 'get', 'list', 'patch', 'update', 'watch')
STATUS_VERBS = ('get', 'patch', 'update')


@dataclasses.dataclass(frozen=True)
class Sub:
    """A subresource as discovery lists it (``group``/``version`` when they differ)."""
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: dict[str, Sub] = dataclasses.field(default_factory=dict)

    @property
    def group_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise (also the apiVersion)."""
        return f'{self.group}/{self.version}' if self.group else self.version

    @property
    def key(self) -> str:
        """``v1/pods``, ``coordination.k8s.io/v1/leases``: the key in kmock's resources."""
        return f'{self.group_version}/{self.plural}'

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def has_status(self) -> bool:
        """Whether ``.status`` is written only through the ``status`` subresource."""
        return 'status' in self.subresources

    def discovery(self) -> list[dict]:
        """The ``APIResource`` entries of this resource and its subresources."""
        main = {
            'name': self.plural,
            'singularName': self.singular,
            'namespaced': self.namespaced,
            'kind': self.kind,
            'verbs': list(self.verbs),
        }
        if self.short:
            main['shortNames'] = list(self.short)
        if self.categories:
            main['categories'] = list(self.categories)
        entries = [main]
        for name, sub in sorted(self.subresources.items()):
            entry = {
                'name': f'{self.plural}/{name}',
                'singularName': '',
                'namespaced': self.namespaced,
                'kind': sub.kind,
                'verbs': list(sub.verbs),
            }
            if sub.group is not None:
                entry['group'] = sub.group
                entry['version'] = sub.version
            entries.append(entry)
        return entries




def _status(kind: str) -> dict[str, Sub]:
    return {'status': Sub(kind, STATUS_VERBS)}


RESOURCES: tuple[Resource, ...] = (
    Resource('', 'v1', 'namespaces', 'Namespace', False, NO_COLLECTION_DELETE, ('ns',),
             subresources={**_status('Namespace'), 'finalize': Sub('Namespace', ('update',))}),
    Resource('', 'v1', 'nodes', 'Node', False, ALL_VERBS, ('no',), subresources=_status('Node')),
    Resource('', 'v1', 'pods', 'Pod', True, ALL_VERBS, ('po',), ('all',), subresources={
        **_status('Pod'),
        'log': Sub('Pod', ('get',)),
        'exec': Sub('PodExecOptions', ('create', 'get')),
        'attach': Sub('PodAttachOptions', ('create', 'get')),
        'portforward': Sub('PodPortForwardOptions', ('create', 'get')),
        'binding': Sub('Binding', ('create',)),
        'eviction': Sub('Eviction', ('create',), 'policy', 'v1'),
    }),
    Resource('', 'v1', 'configmaps', 'ConfigMap', True, ALL_VERBS, ('cm',)),
    Resource('', 'v1', 'secrets', 'Secret', True, ALL_VERBS),
    Resource('', 'v1', 'serviceaccounts', 'ServiceAccount', True, ALL_VERBS, ('sa',), subresources={
        'token': Sub('TokenRequest', ('create',), 'authentication.k8s.io', 'v1'),
    }),
    Resource('', 'v1', 'persistentvolumeclaims', 'PersistentVolumeClaim', True, ALL_VERBS, ('pvc',),
             subresources=_status('PersistentVolumeClaim')),
    Resource('', 'v1', 'persistentvolumes', 'PersistentVolume', False, ALL_VERBS, ('pv',),
             subresources=_status('PersistentVolume')),
    Resource('', 'v1', 'events', 'Event', True, ALL_VERBS, ('ev',)),
    Resource('', 'v1', 'services', 'Service', True, NO_COLLECTION_DELETE, ('svc',), ('all',),
             subresources=_status('Service')),
    Resource('', 'v1', 'endpoints', 'Endpoints', True, ALL_VERBS, ('ep',)),
    Resource('coordination.k8s.io', 'v1', 'leases', 'Lease', True, ALL_VERBS),
    Resource('events.k8s.io', 'v1', 'events', 'Event', True, ALL_VERBS, ('ev',)),
    Resource('authorization.k8s.io', 'v1', 'subjectaccessreviews', 'SubjectAccessReview', False,
             ('create',)),
)

BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.plural): r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    return BY_PATH.get((group, version, plural))


def core(plural: str) -> Resource:
    resource = BY_PATH[('', 'v1', plural)]
    return resource


def groups() -> dict[str, list[str]]:
    """Non-core groups and their versions, in declaration order."""
    result: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in result.setdefault(r.group, []):
            result[r.group].append(r.version)
    return result


@dataclasses.dataclass(frozen=True)
class Target:
    """What a resource URL names: ``/api/v1/namespaces/NS/pods/NAME/SUB``."""
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_path(path: str) -> Target | None:
    """The resource a URL path names; None for discovery and non-resource paths.

    (kmock's own parser reads ``/api/v1/namespaces/x`` as a namespace prefix and fails on
    ``/api/v1/namespaces``, so it is not used for routing.)"""
    segments = [s for s in path.split('/') if s]
    if len(segments) >= 3 and segments[0] == 'api':
        group, version, rest = '', segments[1], segments[2:]
    elif len(segments) >= 4 and segments[0] == 'apis':
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    namespace = None
    if rest[0] == 'namespaces' and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ('status', 'finalize')):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = '/'.join(rest[2:]) or None
    return Target(group, version, plural, namespace, name, sub)

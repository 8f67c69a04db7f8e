"""What the API server does to an object beyond storing it: system metadata on create,
the defaults of pods (and what the default admission plugins add), validation of names
and pods, and which parts of an object an update may change.
"""

from __future__ import annotations

import copy
import datetime
import random
import re
import uuid
from typing import Any

from .errors import ApiError, bad_request, invalid
from .resources import Resource

_NAME_CHARS = 'bcdfghjklmnpqrstvwxz2456789'
_SUBDOMAIN = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')
_LABEL = re.compile(r'[a-z0-9]([-a-z0-9]*[a-z0-9])?')


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.timezone.utc)


def timestamp(at: datetime.datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` is written."""
    return (at or now()).strftime('%Y-%m-%dT%H:%M:%SZ')


def name_suffix() -> str:
    return ''.join(random.choice(_NAME_CHARS) for _ in range(5))


def check_name(res: Resource, name: str) -> None:
    pattern, limit = (_LABEL, 63) if res.plural in ('namespaces', 'services') else (_SUBDOMAIN, 253)
    if not name or len(name) > limit or not pattern.fullmatch(name):
        raise invalid(res.kind, res.group, name, 'metadata.name',
                      f'Invalid value: "{name}": a lowercase RFC 1123 '
                      f'{"label" if pattern is _LABEL else "subdomain"} must consist of lower case alphanumeric '
                      f'characters, \'-\' or \'.\', and must start and end with an alphanumeric character')


def prepare_create(res: Resource, body: Any, namespace: str | None) -> dict[str, Any]:
    """The object to store for a create of ``body`` (resourceVersion set by the store)."""
    if not isinstance(body, dict):
        raise bad_request('the body of the request must be a JSON object')
    obj = copy.deepcopy(body)
    kind = obj.get('kind')
    if kind and kind != res.kind:
        raise bad_request(f'the kind of the object ({kind}) does not match the resource ({res.kind})')
    obj['apiVersion'] = res.group_version
    obj['kind'] = res.kind
    meta = obj.get('metadata')
    if not isinstance(meta, dict):
        meta = obj['metadata'] = {}
    if not meta.get('name'):
        if meta.get('generateName'):
            meta['name'] = meta['generateName'] + name_suffix()
        else:
            raise invalid(res.kind, res.group, '', 'metadata.name',
                          'Required value: name or generateName is required')
    check_name(res, meta['name'])
    if res.namespaced:
        if meta.get('namespace') and namespace and meta['namespace'] != namespace:
            raise bad_request('the namespace of the provided object does not match the namespace sent on the request')
        meta['namespace'] = namespace or meta.get('namespace')
    else:
        meta.pop('namespace', None)
    for key in ('deletionTimestamp', 'deletionGracePeriodSeconds', 'resourceVersion', 'selfLink', 'managedFields'):
        meta.pop(key, None)
    meta['uid'] = str(uuid.uuid4())
    meta['creationTimestamp'] = timestamp()
    meta['generation'] = 1
    if res.plural == 'pods' and not res.group:
        _prepare_pod(obj)
    elif res.plural == 'namespaces' and not res.group:
        obj['spec'] = {'finalizers': ['kubernetes']}
        obj['status'] = {'phase': 'Active'}
        meta.setdefault('labels', {})['kubernetes.io/metadata.name'] = meta['name']
    elif res.plural == 'services' and not res.group:
        spec = obj.setdefault('spec', {})
        spec.setdefault('type', 'ClusterIP')
        spec.setdefault('sessionAffinity', 'None')
        obj.setdefault('status', {'loadBalancer': {}})
    return obj


def _prepare_pod(pod: dict[str, Any]) -> None:
    spec = pod.get('spec')
    name = pod['metadata']['name']
    if not isinstance(spec, dict):
        raise invalid('Pod', '', name, 'spec.containers', 'Required value')
    validate_pod_spec(name, spec)
    default_pod_spec(spec)
    status: dict[str, Any] = {'phase': 'Pending', 'qosClass': qos_class(spec)}
    if spec.get('nodeName'):
        status['conditions'] = [{'type': 'PodScheduled', 'status': 'True', 'lastProbeTime': None,
                                 'lastTransitionTime': timestamp()}]
    pod['status'] = status


def validate_pod_spec(name: str, spec: dict[str, Any]) -> None:
    containers = spec.get('containers')
    if not isinstance(containers, list) or not containers:
        raise invalid('Pod', '', name, 'spec.containers', 'Required value')
    seen: set[str] = set()
    for field in ('initContainers', 'containers'):
        for i, c in enumerate(spec.get(field) or []):
            if not isinstance(c, dict) or not c.get('name'):
                raise invalid('Pod', '', name, f'spec.{field}[{i}].name', 'Required value')
            if c['name'] in seen:
                raise invalid('Pod', '', name, f'spec.{field}[{i}].name', f'Duplicate value: "{c["name"]}"')
            seen.add(c['name'])
            if not c.get('image'):
                raise invalid('Pod', '', name, f'spec.{field}[{i}].image', 'Required value')


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    probe.setdefault('timeoutSeconds', 1)
    probe.setdefault('periodSeconds', 10)
    probe.setdefault('successThreshold', 1)
    probe.setdefault('failureThreshold', 3)
    if isinstance(probe.get('httpGet'), dict):
        probe['httpGet'].setdefault('scheme', 'HTTP')


def _default_container(c: dict[str, Any]) -> None:
    image = str(c.get('image', ''))
    last = image.rsplit('/', 1)[-1]
    tagged = ':' in last and not last.endswith(':latest')
    c.setdefault('imagePullPolicy', 'IfNotPresent' if tagged or '@' in image else 'Always')
    c.setdefault('terminationMessagePath', '/dev/termination-log')
    c.setdefault('terminationMessagePolicy', 'File')
    c.setdefault('resources', {})
    for port in c.get('ports') or []:
        if isinstance(port, dict):
            port.setdefault('protocol', 'TCP')
    for probe in ('livenessProbe', 'readinessProbe', 'startupProbe'):
        _default_probe(c.get(probe))
    for env in c.get('env') or []:
        ref = (env.get('valueFrom') or {}).get('fieldRef') if isinstance(env, dict) else None
        if isinstance(ref, dict):
            ref.setdefault('apiVersion', 'v1')


def default_pod_spec(spec: dict[str, Any]) -> None:
    """The defaults the API server writes into a pod spec (``SetDefaults_PodSpec`` and
    friends) and the tolerations of the DefaultTolerationSeconds admission plugin.
    The ServiceAccount admission plugin's token volume is not added."""
    spec.setdefault('restartPolicy', 'Always')
    spec.setdefault('terminationGracePeriodSeconds', 30)
    spec.setdefault('dnsPolicy', 'ClusterFirst')
    spec.setdefault('securityContext', {})
    spec.setdefault('schedulerName', 'default-scheduler')
    spec.setdefault('enableServiceLinks', True)
    spec.setdefault('priority', 0)
    spec.setdefault('preemptionPolicy', 'PreemptLowerPriority')
    account = spec.get('serviceAccountName') or spec.get('serviceAccount') or 'default'
    spec['serviceAccountName'] = account
    spec['serviceAccount'] = account
    for field in ('initContainers', 'containers'):
        for c in spec.get(field) or []:
            if isinstance(c, dict):
                _default_container(c)
    for volume in spec.get('volumes') or []:
        if not isinstance(volume, dict):
            continue
        for source in ('configMap', 'secret', 'projected', 'downwardAPI'):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault('defaultMode', 420)
    tolerations = spec.setdefault('tolerations', [])
    for key in ('node.kubernetes.io/not-ready', 'node.kubernetes.io/unreachable'):
        if not any(isinstance(t, dict) and t.get('key') == key and t.get('effect') in (None, '', 'NoExecute')
                   for t in tolerations):
            tolerations.append({'key': key, 'operator': 'Exists', 'effect': 'NoExecute', 'tolerationSeconds': 300})


def qos_class(spec: dict[str, Any]) -> str:
    containers = [c for c in (spec.get('containers') or []) + (spec.get('initContainers') or [])
                  if isinstance(c, dict)]
    any_set, guaranteed = False, True
    for c in containers:
        resources = c.get('resources') or {}
        requests = resources.get('requests') or {}
        limits = resources.get('limits') or {}
        if requests or limits:
            any_set = True
        for r in ('cpu', 'memory'):
            if r not in limits or requests.get(r, limits[r]) != limits[r]:
                guaranteed = False
    if not any_set:
        return 'BestEffort'
    return 'Guaranteed' if guaranteed else 'Burstable'


_POD_UPDATE_FORBIDDEN = (
    'Forbidden: pod updates may not change fields other than `spec.containers[*].image`,'
    '`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` '
    '(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` '
    '(allow it to be set to 1 if it was previously negative)')


def check_pod_update(name: str, old_spec: dict[str, Any], new_spec: Any) -> None:
    """Rejects the pod spec changes the API server rejects (``ValidatePodUpdate``)."""
    if not isinstance(new_spec, dict):
        raise invalid('Pod', '', name, 'spec', 'Required value')
    new = copy.deepcopy(new_spec)
    default_pod_spec(new)
    old = copy.deepcopy(old_spec)
    for field in ('containers', 'initContainers'):
        olds, news = old.get(field) or [], new.get(field) or []
        if len(olds) == len(news):
            for o, n in zip(olds, news):
                if isinstance(o, dict) and isinstance(n, dict):
                    n['image'] = o.get('image')
    new['activeDeadlineSeconds'] = old.get('activeDeadlineSeconds')
    old_tolerations = old.get('tolerations') or []
    if all(t in (new.get('tolerations') or []) for t in old_tolerations):
        new['tolerations'] = old_tolerations
    new['schedulingGates'] = old.get('schedulingGates')
    if {k: v for k, v in new.items() if v is not None} != {k: v for k, v in old.items() if v is not None}:
        raise ApiError(422, f'Pod "{name}" is invalid: spec: {_POD_UPDATE_FORBIDDEN}', 'Invalid', {
            'name': name, 'kind': 'Pod',
            'causes': [{'reason': 'FieldValueForbidden', 'message': _POD_UPDATE_FORBIDDEN, 'field': 'spec'}],
        })


IMMUTABLE_META = ('uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'namespace')


def prepare_update(res: Resource, old: dict[str, Any], body: Any, subresource: str | None,
                   name: str) -> dict[str, Any]:
    """The object to store when ``body`` replaces ``old`` (through ``subresource``)."""
    if not isinstance(body, dict):
        raise bad_request('the body of the request must be a JSON object')
    meta = body.get('metadata') if isinstance(body.get('metadata'), dict) else {}
    if meta.get('name') and meta['name'] != name:
        raise bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL ({name})')
    if subresource == 'status':
        new = copy.deepcopy(old)
        if 'status' in body:
            new['status'] = copy.deepcopy(body['status'])
        else:
            new.pop('status', None)
        return new
    new = copy.deepcopy(body)
    new['apiVersion'] = res.group_version
    new['kind'] = res.kind
    new_meta = new.setdefault('metadata', {})
    if not isinstance(new_meta, dict):
        new_meta = new['metadata'] = {}
    old_meta = old['metadata']
    new_meta['name'] = name
    for key in IMMUTABLE_META:
        if key in old_meta:
            new_meta[key] = old_meta[key]
        else:
            new_meta.pop(key, None)
    new_meta.pop('selfLink', None)
    if res.has_status:
        if 'status' in old:
            new['status'] = copy.deepcopy(old['status'])
        else:
            new.pop('status', None)
    if res.plural == 'pods' and not res.group:
        check_pod_update(name, old.get('spec') or {}, new.get('spec'))
        default_pod_spec(new['spec'])
    elif res.plural == 'namespaces' and not res.group and subresource != 'finalize':
        new['spec'] = copy.deepcopy(old.get('spec', {}))  # only namespaces/finalize changes it
    generation = old_meta.get('generation', 1)
    new_meta['generation'] = generation + 1 if new.get('spec') != old.get('spec') else generation
    return new

"""Unit tests of the emulator's pure parts (run by tests/tests/kapi_emulator.rs, or
``.venv/bin/python3 -m unittest discover -s tests/kapi``)."""

from __future__ import annotations

import asyncio
import unittest

from kapi import patching, protobuf, selection, tables
from kapi.errors import ApiError
from kapi.resources import core, parse_path
from kapi.store import Expired, Store


def pod(name: str, node: str | None = None, labels: dict | None = None) -> dict:
    spec = {'containers': [{'name': 'c', 'image': 'busybox'}]}
    if node:
        spec['nodeName'] = node
    return {'metadata': {'name': name, 'labels': labels or {}}, 'spec': spec}


class Selectors(unittest.TestCase):
    def test_fields(self) -> None:
        match = selection.parse_fields('spec.nodeName=n1,metadata.name!=b')
        self.assertTrue(match(pod('a', 'n1')))
        self.assertFalse(match(pod('b', 'n1')))
        self.assertFalse(match(pod('a', 'n2')))
        self.assertTrue(selection.parse_fields('spec.nodeName=')(pod('a')))

    def test_labels(self) -> None:
        obj = pod('a', labels={'app': 'web', 'tier': 'db'})
        for text, expected in [('app=web', True), ('app==web', True), ('app!=web', False), ('app', True),
                               ('!app', False), ('missing!=x', True), ('app in (x, web)', True),
                               ('app notin (web)', False), ('app=web,tier in (db)', True), ('tier=web', False)]:
            self.assertEqual(selection.parse_labels(text)(obj), expected, text)
        with self.assertRaises(ApiError):
            selection.parse_labels('app in (')


class Patches(unittest.TestCase):
    def test_merge_patch(self) -> None:
        self.assertEqual(patching.merge_patch({'a': {'b': 1, 'c': 2}, 'l': [1]}, {'a': {'b': None}, 'l': [2]}),
                         {'a': {'c': 2}, 'l': [2]})

    def test_strategic_merge_by_key(self) -> None:
        status = {'conditions': [{'type': 'Ready', 'status': 'False'}, {'type': 'Initialized', 'status': 'True'}]}
        patch = {'conditions': [{'type': 'Ready', 'status': 'True'}, {'type': 'PodScheduled', 'status': 'True'}]}
        merged = patching.strategic_merge(status, patch)
        self.assertEqual([(c['type'], c['status']) for c in merged['conditions']],
                         [('Ready', 'True'), ('Initialized', 'True'), ('PodScheduled', 'True')])
        removed = patching.strategic_merge(status, {'conditions': [{'type': 'Ready', '$patch': 'delete'}],
                                                    '$setElementOrder/conditions': [{'type': 'Initialized'}]})
        self.assertEqual([c['type'] for c in removed['conditions']], ['Initialized'])
        meta = patching.strategic_merge({'finalizers': ['a']}, {'finalizers': ['b']})
        self.assertEqual(meta['finalizers'], ['a', 'b'])
        self.assertEqual(patching.strategic_merge({'finalizers': ['a', 'b']},
                                                  {'$deleteFromPrimitiveList/finalizers': ['a']}),
                         {'finalizers': ['b']})
        self.assertEqual(patching.strategic_merge({'x': {'a': 1}}, {'x': {'$patch': 'replace', 'b': 2}}),
                         {'x': {'b': 2}})

    def test_json_patch(self) -> None:
        doc = {'metadata': {'labels': {'a/b': '1'}}, 'l': [1, 2]}
        out = patching.json_patch(doc, [
            {'op': 'replace', 'path': '/metadata/labels/a~1b', 'value': '2'},
            {'op': 'add', 'path': '/l/-', 'value': 3},
            {'op': 'remove', 'path': '/l/0'},
            {'op': 'test', 'path': '/l', 'value': [2, 3]},
        ])
        self.assertEqual(out, {'metadata': {'labels': {'a/b': '2'}}, 'l': [2, 3]})
        self.assertEqual(doc['l'], [1, 2], 'the original is untouched')
        with self.assertRaises(ApiError):
            patching.json_patch(doc, [{'op': 'test', 'path': '/l', 'value': []}])


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


class Protobuf(unittest.TestCase):
    def test_token_request(self) -> None:
        spec = _field(1, b'aud') + bytes([4 << 3, 0xb0, 0x09]) + _field(3, _field(1, b'Pod') + _field(3, b'p'))
        raw = _field(1, _field(1, b'sa')) + _field(2, spec)
        unknown = _field(1, _field(1, b'authentication.k8s.io/v1') + _field(2, b'TokenRequest')) + _field(2, raw)
        obj = protobuf.decode(protobuf.MAGIC + unknown)
        self.assertEqual(obj['kind'], 'TokenRequest')
        self.assertEqual(obj['metadata'], {'name': 'sa'})
        self.assertEqual(obj['spec'], {'audiences': ['aud'], 'expirationSeconds': 1200,
                                       'boundObjectRef': {'kind': 'Pod', 'name': 'p'}})


class Semantics(unittest.TestCase):
    def setUp(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.store = Store(history_limit=100)
        self.store.create(core('namespaces'), None, {'metadata': {'name': 'default'}})
        self.pods = core('pods')

    def tearDown(self) -> None:
        self.loop.close()

    def test_graceful_deletion_and_finalizers(self) -> None:
        self.store.create(self.pods, 'default', pod('bound', 'n1'))
        kept = self.store.delete(self.pods, 'default', 'bound', {}, None)
        self.assertEqual(kept['metadata']['deletionGracePeriodSeconds'], 30)
        self.assertIsNotNone(self.store.find(self.pods, 'default', 'bound'))
        with self.assertRaises(ApiError):
            self.store.delete(self.pods, 'default', 'bound', {'preconditions': {'uid': 'x'}}, 0)
        self.store.delete(self.pods, 'default', 'bound', {'gracePeriodSeconds': 0}, None)
        self.assertIsNone(self.store.find(self.pods, 'default', 'bound'))

        cms = core('configmaps')
        self.store.create(cms, 'default', {'metadata': {'name': 'f', 'finalizers': ['x']}})
        self.store.delete(cms, 'default', 'f', {}, None)
        self.assertIsNotNone(self.store.find(cms, 'default', 'f'))
        self.store.patch(cms, 'default', 'f', patching.MERGE, {'metadata': {'finalizers': None}}, None)
        self.assertIsNone(self.store.find(cms, 'default', 'f'))

    def test_watchers_see_objects_enter_and_leave_a_selection(self) -> None:
        since = str(self.store.rv)
        self.store.create(self.pods, 'default', pod('a', labels={'x': '1'}))
        self.store.patch(self.pods, 'default', 'a', patching.MERGE, {'metadata': {'labels': {'x': '2'}}}, None)
        self.store.patch(self.pods, 'default', 'a', patching.MERGE, {'metadata': {'labels': {'x': '1'}}}, None)
        watcher = self.store.watch(self.pods, None, None, None, selection.parse_labels('x=1'), since, False)
        seen = []
        while not watcher.queue.empty():
            seen.append(watcher.queue.get_nowait()[0])
        self.assertEqual(seen, ['ADDED', 'DELETED', 'ADDED'])

    def test_old_versions_expire(self) -> None:
        for n in range(150):
            self.store.create(core('configmaps'), 'default', {'metadata': {'name': f'c{n}'}})
        with self.assertRaises(Expired):
            self.store.watch(core('configmaps'), None, None, None, None, '1', False)

    def test_pod_specs_are_immutable_but_images(self) -> None:
        self.store.create(self.pods, 'default', pod('p', 'n1'))
        image = {'spec': {'containers': [{'name': 'c', 'image': 'busybox:2'}]}}
        self.store.patch(self.pods, 'default', 'p', patching.STRATEGIC, image, None)
        with self.assertRaises(ApiError) as e:
            self.store.patch(self.pods, 'default', 'p', patching.MERGE, {'spec': {'nodeName': 'n2'}}, None)
        self.assertEqual(e.exception.code, 422)


class Paths(unittest.TestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_path('/api/v1/namespaces').plural, 'namespaces')
        ns = parse_path('/api/v1/namespaces/default')
        self.assertEqual((ns.plural, ns.name, ns.namespace), ('namespaces', 'default', None))
        status = parse_path('/api/v1/namespaces/default/status')
        self.assertEqual((status.plural, status.name, status.subresource), ('namespaces', 'default', 'status'))
        lease = parse_path('/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1')
        self.assertEqual((lease.group, lease.namespace, lease.plural, lease.name),
                         ('coordination.k8s.io', 'kube-node-lease', 'leases', 'n1'))
        self.assertIsNone(parse_path('/apis/coordination.k8s.io/v1'))
        self.assertEqual(tables.human_age(None), '<unknown>')


if __name__ == '__main__':
    unittest.main()

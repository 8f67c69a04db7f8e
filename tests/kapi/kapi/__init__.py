"""ORCA's Kubernetes API emulator: kmock extended into an API server good enough for
ORCA's Virtual Kubelet (a kube-rs client) and for the real kubectl.

Modules:

- ``resources``: the served resources (kinds, verbs, short names, subresources).
- ``errors``: ``ApiError`` and the ``Status`` objects the API server answers errors with.
- ``selection``: field and label selectors.
- ``patching``: JSON merge patch, strategic merge patch (simplified), JSON patch.
- ``objects``: what the API server does to an object on create and update (defaults,
  metadata, validation).
- ``store``: the objects, the global resourceVersion, the event history and watchers,
  create/replace/patch/delete with graceful pod deletion.
- ``auth``: TokenRequest (JWT-shaped tokens) and SubjectAccessReview rules.
- ``reqlog``: the JSON-lines request log and RBAC verbs.
- ``server``: the kmock handler (``KubernetesScaffold`` subclass): discovery, routing.
- ``proxy``: pods/log, exec, attach and portforward relayed to the node's kubelet.
- ``frontend``: the public TCP port, which hands those to ``proxy`` and pipes the rest to
  the kmock (aiohttp) server on an internal port.
"""

#!/usr/bin/env python3
"""ORCA's Kubernetes API emulator for tests: kmock extended into an API server that ORCA's
Virtual Kubelet (kube-rs) and the real kubectl can use. See ``kapi/__init__.py`` for the
modules and tests/src/env/kapi.rs for the launcher.

    python3 tests/kapi/orca_kapi.py --host 127.0.0.1 --port P --log FILE \\
        [--kubelet-client-cert C --kubelet-client-key K] [--kubelet-ca CA] [--sar-allow RULE ...]

Serves plain HTTP on HOST:PORT (any bearer token, or none, is accepted), appends one JSON
line per request to FILE, prints ``kapi: serving on http://HOST:PORT`` when ready and
answers ``GET /healthz`` with ``ok``. SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import kmock

from kapi.auth import AccessRules
from kapi.frontend import Frontend
from kapi.proxy import KubeletProxy
from kapi.reqlog import RequestLog
from kapi.server import KubeApiServer


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='orca_kapi', description=__doc__.split('\n\n')[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--log', help='the JSON-lines request log (appended)')
    parser.add_argument('--kubelet-client-cert', help='client certificate presented to kubelets (PEM)')
    parser.add_argument('--kubelet-client-key', help='its key (PEM)')
    parser.add_argument('--kubelet-ca', help='CA to verify kubelets\' serving certificates with (default: none)')
    parser.add_argument('--sar-allow', action='append', default=[], metavar='USER:VERB:RESOURCE:SUBRESOURCE',
                        help='allow SubjectAccessReviews matching this rule (globs; repeatable)')
    parser.add_argument('--history', type=int, default=10_000, help='watch events kept for resourceVersion replays')
    args = parser.parse_args(argv)
    if bool(args.kubelet_client_cert) != bool(args.kubelet_client_key):
        parser.error('--kubelet-client-cert and --kubelet-client-key go together')
    return args


async def serve(args: argparse.Namespace) -> None:
    reqlog = RequestLog(args.log)
    handler = KubeApiServer(reqlog=reqlog, rules=AccessRules(args.sar_allow))
    handler.store.history_limit = args.history
    proxy = KubeletProxy(handler.store, reqlog, args.kubelet_client_cert, args.kubelet_client_key,
                         args.kubelet_ca)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with handler, kmock.Server(handler, host='127.0.0.1', port=0, user_agent='') as backend:
        frontend = await Frontend(backend.port, proxy).start(args.host, args.port)
        print(f'kapi: serving on http://{args.host}:{args.port} (kmock {kmock.__version__}, '
              f'backend 127.0.0.1:{backend.port})', flush=True)
        try:
            await stop.wait()
        finally:
            frontend.close()
    print('kapi: stopped', flush=True)


def main() -> None:
    args = arguments()
    try:
        asyncio.run(serve(args))
    except OSError as e:
        print(f'kapi: {e}', file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == '__main__':
    main()

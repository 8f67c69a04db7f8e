"""Errors as the Kubernetes API server reports them: a ``Status`` object with ``code``,
``reason``, ``message`` and ``details``."""

from __future__ import annotations

from typing import Any

REASONS = {
    400: 'BadRequest',
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'NotFound',
    405: 'MethodNotAllowed',
    406: 'NotAcceptable',
    409: 'Conflict',
    410: 'Expired',
    415: 'UnsupportedMediaType',
    422: 'Invalid',
    429: 'TooManyRequests',
    500: 'InternalError',
    502: 'InternalError',
    503: 'ServiceUnavailable',
    504: 'Timeout',
}


def status_object(code: int, reason: str | None, message: str, details: dict[str, Any] | None = None,
                  ) -> dict[str, Any]:
    """A ``v1 Status`` of a failure."""
    status: dict[str, Any] = {
        'kind': 'Status',
        'apiVersion': 'v1',
        'metadata': {},
        'status': 'Failure',
        'message': message,
        'reason': reason if reason is not None else REASONS.get(code, ''),
        'code': code,
    }
    if details:
        status['details'] = details
    return status


class ApiError(Exception):
    """A request failed; rendered as a ``Status`` with HTTP status ``code``."""

    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASONS.get(code, 'Unknown')
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, self.details)


def qualified(plural: str, group: str) -> str:
    """``pods``, ``leases.coordination.k8s.io``: how messages name a resource."""
    return f'{plural}.{group}' if group else plural


def _details(name: str, plural: str, group: str) -> dict[str, Any]:
    details: dict[str, Any] = {'name': name, 'kind': plural}
    if group:
        details['group'] = group
    return details


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, f'{qualified(plural, group)} "{name}" not found', 'NotFound',
                    _details(name, plural, group))


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(409, f'{qualified(plural, group)} "{name}" already exists', 'AlreadyExists',
                    _details(name, plural, group))


def conflict(plural: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
                    'Conflict', _details(name, plural, group))


STALE = 'the object has been modified; please apply your changes to the latest version and try again'


def invalid(kind: str, group: str, name: str, field: str, problem: str) -> ApiError:
    """422 ``Invalid``, e.g. ``Pod "x" is invalid: spec.containers: Required value``."""
    qualified_kind = f'{kind}.{group}' if group else kind
    details: dict[str, Any] = {
        'name': name, 'kind': kind,
        'causes': [{'reason': 'FieldValueInvalid', 'message': f'{problem}', 'field': field}],
    }
    if group:
        details['group'] = group
    return ApiError(422, f'{qualified_kind} "{name}" is invalid: {field}: {problem}', 'Invalid', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, 'BadRequest')

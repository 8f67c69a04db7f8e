"""Field and label selectors, as ``?fieldSelector=`` and ``?labelSelector=`` carry them.

Field selectors: ``path=value``, ``path==value``, ``path!=value``, joined by commas (AND).
Any dotted path of the object is accepted (``spec.nodeName``, ``metadata.name``,
``involvedObject.kind``, ``status.phase``...); a missing field reads as ``""`` and booleans
as ``true``/``false``. (The real API server accepts only a per-resource list of fields and
answers 400 for others; this is more lenient.)

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
``a>1``, ``a<1``, joined by commas (AND), with the real API server's meaning (``a!=b``
and ``notin`` also match objects without the label).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]


def _split_commas(text: str) -> list[str]:
    """Splits on commas outside parentheses, honouring backslash escapes."""
    parts, depth, current, escaped = [], 0, [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == '\\':
            current.append(ch)
            escaped = True
        elif ch == '(':
            depth += 1
            current.append(ch)
        elif ch == ')':
            depth -= 1
            current.append(ch)
        elif ch == ',' and depth == 0:
            parts.append(''.join(current))
            current = []
        else:
            current.append(ch)
    parts.append(''.join(current))
    return [p.strip() for p in parts if p.strip()]


def _unescape(value: str) -> str:
    return re.sub(r'\\(.)', r'\1', value)


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string value of a dotted field path; ``""`` when absent."""
    value: Any = obj
    for part in path.split('.'):
        if not isinstance(value, dict):
            return ''
        value = value.get(part)
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (dict, list)):
        return ''
    return str(value)


def parse_fields(text: str | None) -> Predicate | None:
    if not text:
        return None
    checks: list[tuple[str, str, bool]] = []
    for term in _split_commas(text):
        m = re.fullmatch(r'([^=!]+?)\s*(==|=|!=)\s*(.*)', term)
        if not m:
            raise bad_request(f'invalid selector: \'{text}\'; can\'t understand \'{term}\'')
        checks.append((m.group(1).strip(), _unescape(m.group(3).strip()), m.group(2) == '!='))

    def match(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, path) != value) if negate else (field_value(obj, path) == value)
                   for path, value, negate in checks)
    return match


_LABEL_KEY = r'[A-Za-z0-9./_-]+'


def parse_labels(text: str | None) -> Predicate | None:
    if not text:
        return None
    checks: list[Predicate] = []
    for term in _split_commas(text):
        checks.append(_label_requirement(term, text))

    def match(obj: dict[str, Any]) -> bool:
        return all(check(obj) for check in checks)
    return match


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get('metadata') or {}).get('labels') or {}


def _label_requirement(term: str, whole: str) -> Predicate:
    m = re.fullmatch(rf'({_LABEL_KEY})\s+(in|notin)\s*\((.*)\)', term)
    if m:
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(',') if v.strip()}
        if op == 'in':
            return lambda obj: _labels(obj).get(key) in values
        return lambda obj: _labels(obj).get(key) not in values
    m = re.fullmatch(rf'({_LABEL_KEY})\s*(==|=|!=|>|<)\s*(.*)', term)
    if m:
        key, op, value = m.group(1), m.group(2), m.group(3).strip()
        if op in ('=', '=='):
            return lambda obj: _labels(obj).get(key) == value
        if op == '!=':
            return lambda obj: _labels(obj).get(key) != value
        try:
            bound = int(value)
        except ValueError:
            raise bad_request(f'unable to parse requirement: for \'gt\', \'lt\' operators, the value must be an integer: {whole}')

        def compare(obj: dict[str, Any]) -> bool:
            have = _labels(obj).get(key)
            try:
                number = int(have) if have is not None else None
            except ValueError:
                return False
            return number is not None and (number > bound if op == '>' else number < bound)
        return compare
    m = re.fullmatch(rf'!\s*({_LABEL_KEY})', term)
    if m:
        key = m.group(1)
        return lambda obj: key not in _labels(obj)
    m = re.fullmatch(_LABEL_KEY, term)
    if m:
        return lambda obj: term in _labels(obj)
    raise bad_request(f'unable to parse requirement: found \'{term}\' in selector \'{whole}\'')

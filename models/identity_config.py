"""The ``[identity]`` table of the configuration: which identity names a profile.

- ``namespace``: one ``identityMap`` namespace names a profile (its primary identity,
  else its first); absent: the primary identity of any namespace.
- ``namespaces``: identity stitching (:mod:`models.stitching`): the namespaces that name
  a person, the highest priority first; ``max_identities`` caps one person's identities.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_IDENTITIES", "parse_identity"]

#: the largest person a link may make (Adobe's identity graph keeps 50 identities)
MAX_IDENTITIES = 50


def parse_identity(table: dict[str, Any]) -> tuple[str | None, tuple[str, ...], int]:
    """The ``[identity]`` table: ``(namespace, namespaces, max_identities)``.

    >>> parse_identity({"namespaces": ["CRMID", "ECID"]})
    (None, ('CRMID', 'ECID'), 50)
    >>> parse_identity({"namespaces": ["ECID"], "namespace": "ECID"})
    Traceback (most recent call last):
    ...
    ValueError: identity: set namespace (one namespace names a profile) or namespaces (identity stitching), not both
    """
    allowed = {"namespace", "namespaces", "max_identities"}
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"identity: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    namespace = table.get("namespace")
    if namespace is not None and (type(namespace) is not str or not namespace):
        raise ValueError('identity.namespace: must be an identityMap namespace such as "ECID"')
    namespaces = table.get("namespaces", [])
    if (
        type(namespaces) is not list
        or any(type(ns) is not str or not ns for ns in namespaces)
        or len(set(namespaces)) != len(namespaces)
    ):
        raise ValueError(
            "identity.namespaces: must be a list of distinct identityMap namespaces, the "
            'highest priority first, e.g. ["CRMID", "Email", "ECID"]'
        )
    if namespace is not None and namespaces:
        raise ValueError(
            "identity: set namespace (one namespace names a profile) or namespaces "
            "(identity stitching), not both"
        )
    cap = table.get("max_identities", MAX_IDENTITIES)
    if type(cap) is not int or not 2 <= cap <= MAX_IDENTITIES:
        raise ValueError(
            f"identity.max_identities: must be a whole number from 2 to {MAX_IDENTITIES} "
            "(the identities one person may hold)"
        )
    return namespace, tuple(namespaces), cap

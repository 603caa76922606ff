"""Secrets kept out of what is printed and logged: URLs with their password masked.

Standard library only, so every part of ``stream/`` can use it, the embedded servers'
modules included (they work before the rest of the stack is importable).
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

#: ``scheme://user:PASSWORD@host``: everything between the user's colon and the ``@``
_NETLOC_PASSWORD = re.compile(r"(?P<head>//[^/?#@:]*:)[^/?#@]*@")
#: ``?password=...`` / ``&pass=...`` (redis-py reads a password from the query too)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|pass|pwd)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Replace the password of a URL by ``***`` so it can be printed or logged.

    Works on any text, even a URL that does not parse (a bad port, an unclosed ``[``).

    Parameters
    ----------
    url : str
        Any URL, e.g. ``redis://user:secret@host:6379/0``.

    Returns
    -------
    str
        The URL with its password masked, in the authority and in the query (unchanged
        if it has none).

    Examples
    --------
    >>> redact_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> redact_url("rediss://:secret@[::1]:6380")
    'rediss://:***@[::1]:6380'
    >>> redact_url("unix:///run/redis.sock?db=0&password=secret")
    'unix:///run/redis.sock?db=0&password=***'
    >>> redact_url("redis://:secret@127.0.0.1:notaport/0")
    'redis://:***@127.0.0.1:notaport/0'
    >>> redact_url("redis://localhost:6379")
    'redis://localhost:6379'
    """
    masked = _NETLOC_PASSWORD.sub(r"\g<head>***@", url)
    return _QUERY_PASSWORD.sub(r"\g<head>***", masked)

"""Secrets kept out of what is printed and logged: URLs with their password masked.

Standard library only, so every part of ``stream/`` can use it, the embedded servers'
modules included (they work before the rest of the stack is importable).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

__all__ = ["SECRET_VARIABLES", "redact_text", "redact_url", "strip_password"]

#: environment variables whose value is a secret: never printed, logged or written
SECRET_VARIABLES: tuple[str, ...] = (
    "REDIS_PASSWORD",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_KEY_PASSWORD",
)
#: secrets shorter than this are not searched for in text (they would mask ordinary words)
_MIN_SECRET_LENGTH = 4

#: ``scheme://user:PASSWORD@host``: everything between the user's colon and the ``@``
_NETLOC_PASSWORD = re.compile(r"(?P<head>//[^/?#@:]*:)[^/?#@]*@")
#: ``?password=...`` / ``&pass=...`` (redis-py reads a password from the query too)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|pass|pwd)=)[^&#]*", re.IGNORECASE)
#: the same, with the user name apart and the whole ``password=`` item (to remove them)
_NETLOC_USER_PASSWORD = re.compile(r"//(?P<user>[^/?#@:]*):[^/?#@]*@")
_QUERY_PASSWORD_ITEM = re.compile(r"(?P<sep>[?&])(?:password|pass|pwd)=[^&#]*", re.IGNORECASE)


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


def strip_password(url: str) -> str:
    """The URL without its password (user name, host, port, path and other query kept).

    What may be written to a file or compared: the password itself is read from the
    environment when the URL is used (``REDIS_PASSWORD``).

    Parameters
    ----------
    url : str
        Any URL, e.g. ``redis://user:secret@host:6379/0``.

    Returns
    -------
    str
        The URL with no password in its authority nor in its query.

    Examples
    --------
    >>> strip_password("redis://user:secret@host:6379/0")
    'redis://user@host:6379/0'
    >>> strip_password("redis://:secret@127.0.0.1:16379/0")
    'redis://127.0.0.1:16379/0'
    >>> strip_password("unix:///run/redis.sock?db=0&password=secret")
    'unix:///run/redis.sock?db=0'
    >>> strip_password("redis://h/0?password=secret&db=1")
    'redis://h/0?db=1'
    >>> strip_password("127.0.0.1:19092")
    '127.0.0.1:19092'
    """
    without = _NETLOC_USER_PASSWORD.sub(lambda m: f"//{m['user']}@" if m["user"] else "//", url)
    without = _QUERY_PASSWORD_ITEM.sub(lambda m: "?" if m["sep"] == "?" else "", without)
    return without.replace("?&", "?").rstrip("?")


def redact_text(text: str, env: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> str:
    """Mask every secret in a text before it is printed or logged.

    URL passwords (:func:`redact_url`) and the values of :data:`SECRET_VARIABLES` and
    of the password of ``REDIS_URL`` in ``env`` (``os.environ`` by default), wherever
    they appear, e.g. in an exception's message.

    Parameters
    ----------
    text : str
        A message, a log line, an exception's text.
    env : Mapping[str, str], optional
        Where the secrets are read; default ``os.environ``.
    extra : iterable of str
        More secrets to mask.

    Returns
    -------
    str
        The text with each secret replaced by ``***``.

    Examples
    --------
    >>> redact_text("AUTH failed for hunter22", {"REDIS_PASSWORD": "hunter22"})
    'AUTH failed for ***'
    >>> redact_text("cannot reach redis://:pw@h:6379/0", {})
    'cannot reach redis://:***@h:6379/0'
    """
    env = os.environ if env is None else env
    secrets = {env.get(name) or "" for name in SECRET_VARIABLES} | set(extra)
    try:
        url_password = urlsplit(env.get("REDIS_URL", "")).password or ""
    except ValueError:
        url_password = ""
    secrets |= {url_password, unquote(url_password)}  # as written and as sent
    masked = redact_url(text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            masked = masked.replace(secret, "***")
    return masked

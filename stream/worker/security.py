"""Kafka and Redis connection security, read from the environment only.

Secrets (SASL and Redis passwords) are only ever taken from environment variables and are
never logged: use :func:`redacted` before printing any kwargs built here.

Kafka variables
    ``KAFKA_SECURITY_PROTOCOL``  PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    ``KAFKA_SASL_MECHANISM``     PLAIN (default) | SCRAM-SHA-256 | SCRAM-SHA-512
    ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``
    ``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``
    (``KAFKA_SSL_KEY_PASSWORD`` for an encrypted key)

Redis variables
    ``REDIS_URL``  ``redis://host:6379/0`` or ``rediss://`` for TLS (default
    ``redis://localhost:6379/0``); ``REDIS_USERNAME`` / ``REDIS_PASSWORD`` when not in
    the URL; ``REDIS_SSL_CA_CERTS``, ``REDIS_SSL_CERTFILE``, ``REDIS_SSL_KEYFILE`` for TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiokafka.helpers import create_ssl_context

from stream.redaction import redact_url

__all__ = [
    "DEFAULT_REDIS_URL",
    "KAFKA_SASL_MECHANISMS",
    "KAFKA_SECURITY_PROTOCOLS",
    "SecurityConfigError",
    "faust_broker_credentials",
    "kafka_security_kwargs",
    "redact_url",
    "redacted",
    "redis_connection_kwargs",
]

KAFKA_SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

_SECRET_KEYS = ("password", "sasl_plain_password")


class SecurityConfigError(ValueError):
    """Raised when the security environment variables are inconsistent."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    """Return a stripped environment value, treating empty strings as unset."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _kafka_ssl_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """Build the TLS context for Kafka from ``KAFKA_SSL_*`` (system CAs if no CA file)."""
    certfile = _get(env, "KAFKA_SSL_CERTFILE")
    keyfile = _get(env, "KAFKA_SSL_KEYFILE")
    if keyfile and not certfile:
        raise SecurityConfigError("KAFKA_SSL_KEYFILE is set but KAFKA_SSL_CERTFILE is not")
    return create_ssl_context(
        cafile=_get(env, "KAFKA_SSL_CAFILE"),
        certfile=certfile,
        keyfile=keyfile,
        password=_get(env, "KAFKA_SSL_KEY_PASSWORD"),
    )


def kafka_security_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """Map the ``KAFKA_*`` security variables to aiokafka client keyword arguments.

    The result can be splatted into ``AIOKafkaConsumer``, ``AIOKafkaProducer`` and
    ``AIOKafkaAdminClient``.

    Parameters
    ----------
    env : Mapping[str, str]
        Usually ``os.environ``.

    Returns
    -------
    dict
        Always ``security_protocol``; ``ssl_context`` for SSL and SASL_SSL;
        ``sasl_mechanism``, ``sasl_plain_username`` and ``sasl_plain_password`` for
        SASL_PLAINTEXT and SASL_SSL. Contains secrets: do not log it, see :func:`redacted`.

    Raises
    ------
    SecurityConfigError
        Unknown protocol or mechanism, or SASL without username and password.
    """
    protocol = (_get(env, "KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper().replace("-", "_")
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise SecurityConfigError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
        )
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _kafka_ssl_context(env)
    if protocol.startswith("SASL_"):
        mechanism = (_get(env, "KAFKA_SASL_MECHANISM") or "PLAIN").upper().replace("_", "-")
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise SecurityConfigError(
                f"KAFKA_SASL_MECHANISM={mechanism!r} is not one of {', '.join(KAFKA_SASL_MECHANISMS)}"
            )
        username = _get(env, "KAFKA_SASL_USERNAME")
        password = env.get("KAFKA_SASL_PASSWORD") or None  # passwords are not stripped
        if username is None or password is None:
            raise SecurityConfigError(
                f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        kwargs.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return kwargs


def faust_broker_credentials(env: Mapping[str, str]) -> Any | None:
    """The same settings as :func:`kafka_security_kwargs`, as a Faust credentials object.

    Pass the result as ``broker_credentials=`` to ``faust.App`` (``None`` = PLAINTEXT).

    Parameters
    ----------
    env : Mapping[str, str]
        Usually ``os.environ``.

    Returns
    -------
    faust.auth.Credentials or None
        ``SSLCredentials`` for SSL, ``SASLCredentials`` for SASL_*, ``None`` for PLAINTEXT.
    """
    from faust.auth import SASLCredentials, SSLCredentials

    kwargs = kafka_security_kwargs(env)
    protocol = kwargs["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(kwargs["ssl_context"])
    return SASLCredentials(
        username=kwargs["sasl_plain_username"],
        password=kwargs["sasl_plain_password"],
        mechanism=kwargs["sasl_mechanism"],
        ssl_context=kwargs.get("ssl_context"),
    )


def redis_connection_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """Map ``REDIS_*`` variables to ``redis.asyncio.Redis.from_url`` keyword arguments.

    Use as ``redis.asyncio.Redis.from_url(**redis_connection_kwargs(os.environ))`` (the
    ``url`` key is the positional URL). Credentials in the URL win over ``REDIS_USERNAME``
    / ``REDIS_PASSWORD``; TLS options are only added for ``rediss://`` URLs.

    Parameters
    ----------
    env : Mapping[str, str]
        Usually ``os.environ``.

    Returns
    -------
    dict
        ``url`` plus optionally ``username``, ``password``, ``ssl_ca_certs``,
        ``ssl_certfile``, ``ssl_keyfile``. Contains secrets: see :func:`redacted`.

    Raises
    ------
    SecurityConfigError
        A URL scheme other than redis, rediss or unix, or TLS files with a non-TLS URL.
    """
    url = _get(env, "REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise SecurityConfigError(f"REDIS_URL scheme {scheme!r} is not redis, rediss or unix")
    kwargs: dict[str, Any] = {"url": url}
    if parts.password is None:
        password = env.get("REDIS_PASSWORD") or None
        if password is not None:
            kwargs["password"] = password
            username = _get(env, "REDIS_USERNAME")
            if username is not None and not parts.username:
                kwargs["username"] = username
    tls_files = {
        "ssl_ca_certs": _get(env, "REDIS_SSL_CA_CERTS"),
        "ssl_certfile": _get(env, "REDIS_SSL_CERTFILE"),
        "ssl_keyfile": _get(env, "REDIS_SSL_KEYFILE"),
    }
    tls_files = {k: v for k, v in tls_files.items() if v is not None}
    if tls_files:
        if scheme != "rediss":
            raise SecurityConfigError(
                "REDIS_SSL_* options need a rediss:// REDIS_URL (TLS); got " + redact_url(url)
            )
        kwargs.update(tls_files)
    return kwargs


def redacted(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of connection kwargs that is safe to log.

    Parameters
    ----------
    kwargs : Mapping[str, Any]
        Output of :func:`kafka_security_kwargs` or :func:`redis_connection_kwargs`.

    Returns
    -------
    dict
        Passwords replaced by ``***``, URLs redacted, SSL contexts shown as ``<SSLContext>``.
    """
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _SECRET_KEYS and value is not None:
            out[key] = "***"
        elif key == "url" and isinstance(value, str):
            out[key] = redact_url(value)
        elif isinstance(value, ssl.SSLContext):
            out[key] = "<SSLContext>"
        else:
            out[key] = value
    return out

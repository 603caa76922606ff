"""Environment -> Kafka / Redis connection kwargs (pure, no servers)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stream.worker import security
from stream.worker.security import (
    SecurityConfigError,
    faust_broker_credentials,
    kafka_security_kwargs,
    redact_url,
    redacted,
    redis_connection_kwargs,
)


@pytest.fixture
def fake_ssl(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Capture create_ssl_context calls instead of reading certificate files."""
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> ssl.SSLContext:
        calls.append(kwargs)
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    monkeypatch.setattr(security, "create_ssl_context", fake)
    return calls


# --- Kafka ------------------------------------------------------------------------------


def test_plaintext_is_the_default() -> None:
    assert kafka_security_kwargs({}) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security_kwargs({"KAFKA_SECURITY_PROTOCOL": " "}) == {
        "security_protocol": "PLAINTEXT"
    }
    assert faust_broker_credentials({}) is None


def test_ssl_maps_files_to_an_ssl_context(fake_ssl: list[dict[str, Any]]) -> None:
    kwargs = kafka_security_kwargs(
        {
            "KAFKA_SECURITY_PROTOCOL": "ssl",
            "KAFKA_SSL_CAFILE": "/certs/ca.pem",
            "KAFKA_SSL_CERTFILE": "/certs/client.pem",
            "KAFKA_SSL_KEYFILE": "/certs/client.key",
        }
    )
    assert kwargs["security_protocol"] == "SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert fake_ssl == [
        {
            "cafile": "/certs/ca.pem",
            "certfile": "/certs/client.pem",
            "keyfile": "/certs/client.key",
            "password": None,
        }
    ]


def test_ssl_without_files_uses_system_cas() -> None:
    kwargs = kafka_security_kwargs({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["ssl_context"].check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "scram_sha_512"])
def test_sasl_plaintext(mechanism: str) -> None:
    kwargs = kafka_security_kwargs(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": " p@ss ",
        }
    )
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism.upper().replace("_", "-"),
        "sasl_plain_username": "svc",
        "sasl_plain_password": " p@ss ",  # passwords are taken verbatim
    }


def test_sasl_ssl_has_both(fake_ssl: list[dict[str, Any]]) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "secret",
        "KAFKA_SSL_CAFILE": "/certs/ca.pem",
    }
    kwargs = kafka_security_kwargs(env)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert fake_ssl[0]["cafile"] == "/certs/ca.pem"

    creds = faust_broker_credentials(env)
    assert creds is not None
    assert creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-256"
    assert "secret" not in repr(creds)


async def test_the_kwargs_are_accepted_by_aiokafka(fake_ssl: list[dict[str, Any]]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    for protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        kwargs = kafka_security_kwargs(
            {
                "KAFKA_SECURITY_PROTOCOL": protocol,
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            }
        )
        admin = AIOKafkaAdminClient(bootstrap_servers="localhost:1", **kwargs)  # validates only
        await admin.close()


@pytest.mark.parametrize(
    "env",
    [
        {"KAFKA_SECURITY_PROTOCOL": "TLS"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "hunter2"},
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "GSSAPI",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "hunter2",
        },
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/k.pem"},
    ],
)
def test_inconsistent_settings_are_rejected_without_leaking_secrets(env: dict[str, str]) -> None:
    with pytest.raises(SecurityConfigError) as info:
        kafka_security_kwargs(env)
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_real_certificate_files(tmp_path: Path) -> None:
    """With real files (generated by openssl) the context loads the CA and the key pair."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.skip("openssl not available")
    kwargs = kafka_security_kwargs(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(cert),
            "KAFKA_SSL_CERTFILE": str(cert),
            "KAFKA_SSL_KEYFILE": str(key),
        }
    )
    assert kwargs["ssl_context"].cert_store_stats()["x509_ca"] >= 1


# --- Redis ------------------------------------------------------------------------------


def test_redis_defaults_and_plain_url() -> None:
    assert redis_connection_kwargs({}) == {"url": "redis://localhost:6379/0"}
    assert redis_connection_kwargs({"REDIS_URL": "redis://redis:6379/2"}) == {
        "url": "redis://redis:6379/2"
    }


def test_redis_password_from_env_only_when_not_in_url() -> None:
    env = {"REDIS_URL": "redis://redis:6379/0", "REDIS_PASSWORD": "pw", "REDIS_USERNAME": "app"}
    assert redis_connection_kwargs(env) == {
        "url": "redis://redis:6379/0",
        "username": "app",
        "password": "pw",
    }
    env["REDIS_URL"] = "redis://u:inurl@redis:6379/0"
    assert redis_connection_kwargs(env) == {"url": "redis://u:inurl@redis:6379/0"}


def test_rediss_gets_tls_files_and_redis_rejects_them() -> None:
    env = {
        "REDIS_URL": "rediss://cache.example:6380/0",
        "REDIS_SSL_CA_CERTS": "/certs/ca.pem",
        "REDIS_SSL_CERTFILE": "/certs/c.pem",
        "REDIS_SSL_KEYFILE": "/certs/c.key",
    }
    assert redis_connection_kwargs(env) == {
        "url": "rediss://cache.example:6380/0",
        "ssl_ca_certs": "/certs/ca.pem",
        "ssl_certfile": "/certs/c.pem",
        "ssl_keyfile": "/certs/c.key",
    }
    env["REDIS_URL"] = "redis://:secret@cache.example:6379/0"
    with pytest.raises(SecurityConfigError) as info:
        redis_connection_kwargs(env)
    assert "secret" not in str(info.value)
    with pytest.raises(SecurityConfigError):
        redis_connection_kwargs({"REDIS_URL": "http://x"})


def test_the_kwargs_are_accepted_by_redis_py() -> None:
    redis = pytest.importorskip("redis.asyncio")
    client = redis.Redis.from_url(
        **redis_connection_kwargs(
            {
                "REDIS_URL": "rediss://cache.example:6380/0",
                "REDIS_PASSWORD": "pw",
                "REDIS_SSL_CA_CERTS": "/certs/ca.pem",
            }
        )
    )
    conn_kwargs = client.connection_pool.connection_kwargs
    assert conn_kwargs["password"] == "pw"
    assert conn_kwargs["ssl_ca_certs"] == "/certs/ca.pem"
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_redaction() -> None:
    assert redact_url("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("rediss://:secret@[::1]:6380") == "rediss://:***@[::1]:6380"
    safe = redacted(
        {
            "url": "redis://u:secret@h/0",
            "password": "pw",
            "sasl_plain_password": "pw2",
            "ssl_context": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            "sasl_plain_username": "svc",
        }
    )
    assert safe == {
        "url": "redis://u:***@h/0",
        "password": "***",
        "sasl_plain_password": "***",
        "ssl_context": "<SSLContext>",
        "sasl_plain_username": "svc",
    }


def test_redact_text_masks_the_secrets_of_the_environment() -> None:
    from stream.redaction import redact_text, strip_password

    env = {
        "REDIS_URL": "redis://app:p%40ss-word@h:6379/0",
        "KAFKA_SASL_PASSWORD": "sasl-secret",
        "KAFKA_SSL_KEY_PASSWORD": "key-secret",
        "REDIS_PASSWORD": "abc",  # too short to search for in text: it would mask words
    }
    text = (
        "failed: p@ss-word refused for redis://app:p%40ss-word@h:6379/0 "
        "(SASL sasl-secret, key key-secret) abc"
    )
    assert redact_text(text, env) == (
        "failed: *** refused for redis://app:***@h:6379/0 (SASL ***, key ***) abc"
    )
    assert redact_text("no secret here", {}) == "no secret here"
    assert strip_password(env["REDIS_URL"]) == "redis://app@h:6379/0"
    assert strip_password("rediss://:x@h:6380/0?ssl_cert_reqs=none&pwd=x") == (
        "rediss://h:6380/0?ssl_cert_reqs=none"
    )

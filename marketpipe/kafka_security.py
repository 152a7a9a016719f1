"""Kafka security settings (``kafka.client``) on every client.

``kafka.client`` holds librdkafka settings and reaches every confluent-kafka client through
``Settings.kafka_client_config()``. Two things here make that hold everywhere:

* ``check_access`` asks Kafka for metadata the way every client will connect and turns a
  refusal (bad SASL credentials, a TLS handshake that fails) into one clear
  ``KafkaAccessError`` at start, instead of a client that retries and logs forever;
  ``require_kafka`` (every command that needs Kafka) also turns a Kafka that does not answer
  within a bounded wait into one line naming the address and what to check;
* ``aiokafka_options`` translates the settings for aiokafka (the producers' control
  listener), including an ``ssl.SSLContext`` built from the ``ssl.*`` files, and rejects
  with a ``ConfigError`` what aiokafka cannot do, before any connector starts.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marketpipe.config import ConfigError, Settings
from marketpipe.errors import UserError

_REFUSALS = {"_AUTHENTICATION": "refused the credentials in kafka.client", "_SSL": "failed the TLS handshake"}
_HINTS = {
    "_AUTHENTICATION": "check sasl.mechanism, sasl.username and sasl.password",
    "_SSL": "check ssl.ca.location in kafka.client",
}
# librdkafka prefixes "<proto>://host:port/id: " and appends "(after 301ms in state AUTH_REQ)"
_LOCATION_RE = re.compile(r"^(\S+://)?\S+?/\S+?: ")
_AFTER_RE = re.compile(r"\s*\(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)\s*$")


ONE_SHOT_WAIT_S = 10.0
"""how long a command that does one thing (topics, replay, tail) waits for Kafka to answer"""


class KafkaAccessError(UserError):
    """Kafka refused this client (credentials, TLS) or did not answer; the message says which."""


class KafkaUnreachable(KafkaAccessError):
    """No broker answered within the wait."""


def require_kafka(
    config: Mapping[str, Any], timeout_s: float = ONE_SHOT_WAIT_S, *, local_broker: bool
) -> None:
    """Return once Kafka answers with these settings; else one ``KafkaAccessError`` that names the
    address and what to check. ``local_broker``: the address is the local broker's (no
    KAFKA_BOOTSTRAP_SERVERS), so the advice is to start it."""
    try:
        check_access(config, timeout_s)
    except KafkaUnreachable as exc:
        if local_broker:
            advice = "is the local broker running? `marketpipe kafka start` starts it"
        else:
            advice = "check that a broker runs at that address (KAFKA_BOOTSTRAP_SERVERS) and is reachable"
        raise KafkaUnreachable(f"{exc.message}; {advice}") from None


def require_kafka_of(
    settings: Settings, *, long_running: bool = False, config: Mapping[str, Any] | None = None
) -> None:
    """``require_kafka`` with the settings' client config (or ``config``); ``long_running``
    commands (stream, sink, produce) wait ``kafka.connect_timeout_s``, the others that or
    ``ONE_SHOT_WAIT_S``, whichever is shorter."""
    timeout_s = settings.kafka.connect_timeout_s
    if not long_running:
        timeout_s = min(timeout_s, ONE_SHOT_WAIT_S)
    config = settings.kafka_client_config() if config is None else config
    require_kafka(config, timeout_s, local_broker=settings.uses_local_broker)


def check_access(config: Mapping[str, Any], timeout_s: float = 15.0, *, unreachable_ok: bool = False) -> bool:
    """Raise ``KafkaAccessError`` when Kafka refuses these settings; True once it answered metadata.

    A Kafka that cannot be reached at all raises too, unless ``unreachable_ok`` (clients
    that wait for Kafka to come back, like the producers and the sink): then it returns
    False once every broker was tried.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    probe: dict[str, Any] = {**config, "error_cb": errors.append, "logger": _quiet_logger()}
    try:
        admin = AdminClient(probe)
    except KafkaException as exc:
        raise KafkaAccessError(f"kafka.client is not valid for librdkafka: {exc.args[0].str()}") from None
    bootstrap = config.get("bootstrap.servers", "?")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=0.5)
            return True
        except KafkaException as exc:
            last = str(exc.args[0].str() if exc.args else exc)
        admin.poll(0)  # serves error_cb
        refusal = next((e for e in errors if e.name() in _REFUSALS), None)
        if refusal is not None:
            raise KafkaAccessError(_refusal_message(bootstrap, refusal.name(), refusal.str()))
        all_down = any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors)
        if unreachable_ok and all_down:
            return False
        if time.monotonic() >= deadline:
            detail = _clean(next((e.str() for e in errors if e.code() == KafkaError._TRANSPORT), last))
            raise KafkaUnreachable(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s ({detail})")


def _refusal_message(bootstrap: str, name: str, detail: str) -> str:
    return f"Kafka at {bootstrap} {_REFUSALS[name]}: {_clean(detail)} ({_HINTS[name]})"


def _clean(detail: str) -> str:
    return _AFTER_RE.sub("", _LOCATION_RE.sub("", detail))


def _quiet_logger() -> logging.Logger:
    """librdkafka's own log lines would repeat the refusal every few hundred ms."""
    logger = logging.getLogger("marketpipe.kafka_security.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


# -- aiokafka -----------------------------------------------------------------------------

_AIOKAFKA_NAMES = {
    "bootstrap.servers": "bootstrap_servers",
    "client.id": "client_id",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",  # librdkafka's older name
    "sasl.username": "sasl_plain_username",  # aiokafka uses these for SCRAM too
    "sasl.password": "sasl_plain_password",
}
_SSL_KEYS = {
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "ssl.cipher.suites",
    "enable.ssl.certificate.verification",
}
_AIOKAFKA_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def aiokafka_options(client_config: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka keyword arguments equivalent to these librdkafka settings.

    Raises ``ConfigError`` naming the setting for anything aiokafka cannot honour (so a
    security setting is never silently dropped).
    """
    unsupported = sorted(
        key
        for key in client_config
        if key not in _AIOKAFKA_NAMES
        and key not in _SSL_KEYS
        and (key.startswith(("sasl.", "ssl.", "ssl_")) or key in ("enable.ssl.certificate.verification",))
    )
    if unsupported:
        raise ConfigError(
            f"kafka.client: {', '.join(unsupported)} cannot be used by the producers' control listener "
            f"(aiokafka); it takes {', '.join(sorted(_SSL_KEYS | set(_AIOKAFKA_NAMES)))}"
        )
    options: dict[str, Any] = {
        _AIOKAFKA_NAMES[k]: v for k, v in client_config.items() if k in _AIOKAFKA_NAMES
    }
    protocol = options.get("security_protocol", "PLAINTEXT").upper()
    options["security_protocol"] = protocol
    if "sasl_mechanism" in options:
        options["sasl_mechanism"] = mechanism = options["sasl_mechanism"].upper()
        if mechanism not in _AIOKAFKA_MECHANISMS:
            raise ConfigError(
                f"kafka.client: sasl.mechanism {mechanism} cannot be used by the producers' control "
                f"listener (aiokafka); use one of {', '.join(_AIOKAFKA_MECHANISMS)}"
            )
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(client_config)
    return options


def ssl_context(client_config: Mapping[str, str]) -> ssl.SSLContext:
    """A client ``SSLContext`` from librdkafka's ``ssl.*`` settings (files read now: errors say which)."""
    context = ssl.create_default_context(
        cafile=_file(client_config, "ssl.ca.location", directory_ok=True),
        capath=_directory(client_config, "ssl.ca.location"),
        cadata=client_config.get("ssl.ca.pem"),
    )
    if _false(client_config.get("enable.ssl.certificate.verification", "true")):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif client_config.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    certificate = _file(client_config, "ssl.certificate.location")
    key = _file(client_config, "ssl.key.location")
    if key and not certificate:
        raise ConfigError("kafka.client: ssl.key.location needs ssl.certificate.location")
    if certificate:
        try:
            context.load_cert_chain(certificate, key, client_config.get("ssl.key.password"))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"kafka.client: cannot load ssl.certificate.location / ssl.key.location: {exc}"
            ) from None
    if "ssl.cipher.suites" in client_config:
        context.set_ciphers(client_config["ssl.cipher.suites"])
    return context


def _file(config: Mapping[str, str], key: str, *, directory_ok: bool = False) -> str | None:
    value = config.get(key)
    if value is None or value == "probe":  # librdkafka's "probe": the system's CA store, the default here
        return None
    path = Path(value)
    if directory_ok and path.is_dir():
        return None
    if not path.is_file():
        raise ConfigError(f"kafka.client: {key} {value} is not a readable file")
    return value


def _directory(config: Mapping[str, str], key: str) -> str | None:
    value = config.get(key)
    return value if value and Path(value).is_dir() else None


def _false(value: str) -> bool:
    return value.strip().lower() in ("false", "0", "no", "off")

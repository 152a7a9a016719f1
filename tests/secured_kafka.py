"""A local broker whose only client listener authenticates (SASL/PLAIN, optionally over TLS).

Started through the project's own code (``marketpipe.kafka_local`` with
``kafka.local.security_protocol`` and ``kafka.local.sasl_users``) in its own directory,
apart from the session's plaintext broker. The fixtures ``sasl_kafka`` (SASL_PLAINTEXT) and
``sasl_ssl_kafka`` (SASL_SSL, self-signed certificate made at start) in conftest.py yield a
``SecuredKafka``; a test reaches the broker with settings whose credentials are only in
``kafka.client``::

    settings = sasl_kafka.settings(prefix)                 # Settings for in-process clients
    env = sasl_kafka.env(prefix)                           # the same for a `marketpipe ...` process
    bad = sasl_kafka.settings(prefix, password="wrong")    # every client must refuse to run
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketpipe.config import LocalBrokerSettings, LocalSecurityProtocol, Settings, load_settings
from marketpipe.kafka_local import LocalKafka, free_port

USER = "marketpipe-app"
PASSWORD = "app-secret-1"


@dataclass
class SecuredKafka:
    broker: LocalKafka

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def protocol(self) -> str:
        return self.broker.settings.security_protocol

    def client_config(self, password: str | None = None) -> dict[str, str]:
        """`kafka.client`: the security settings alone (no bootstrap.servers)."""
        config = self.broker.client_config(USER, password)
        del config["bootstrap.servers"]
        return config

    def librdkafka_config(self, password: str | None = None) -> dict[str, str]:
        """bootstrap.servers plus `kafka.client`, for a client the test itself builds."""
        return {"bootstrap.servers": self.bootstrap, **self.client_config(password)}

    def settings(self, prefix: str, password: str | None = None, **overrides: Any) -> Settings:
        kafka = {
            "bootstrap_servers": self.bootstrap,
            "client": self.client_config(password),
            "topic_prefix": prefix,
        }
        return load_settings(kafka=kafka, **overrides)

    def env(self, prefix: str, password: str | None = None) -> dict[str, str]:
        """Environment for a `marketpipe` process: credentials only in MARKETPIPE_KAFKA__CLIENT."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPIPE_KAFKA")}
        return inherited | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MARKETPIPE_KAFKA__CLIENT": json.dumps(self.client_config(password)),
            "MARKETPIPE_KAFKA__TOPIC_PREFIX": prefix,
        }

    def stop(self) -> None:
        self.broker.stop()


def start_secured_kafka(directory: Path, protocol: LocalSecurityProtocol) -> SecuredKafka:
    settings = LocalBrokerSettings(
        port=free_port(),
        controller_port=free_port(),
        heap="512m",
        security_protocol=protocol,
        sasl_users={USER: PASSWORD},
    )
    broker = LocalKafka(directory, settings)
    broker.start()
    return SecuredKafka(broker)

"""One typed settings object for every marketpipe command.

Sources, lowest to highest priority: defaults, the TOML file (``--config`` or
``MARKETPIPE_CONFIG``, default ``marketpipe.toml`` when present), environment
variables with the ``MARKETPIPE_`` prefix (nested fields with ``__``, e.g.
``MARKETPIPE_KAFKA__LINGER_MS``), and a few well-known un-prefixed variables
(``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``, ``CLICKHOUSE_DSN``).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from marketpipe.errors import EXIT_USAGE, UserError
from marketpipe.exchanges import EXCHANGES, REGISTRY, Exchange
from marketpipe.exchanges.binance import BOOK_STREAM as BINANCE_BOOK_STREAM
from marketpipe.exchanges.binance import STREAMS as BINANCE_STREAMS
from marketpipe.logs import log_event

log = logging.getLogger(__name__)

DEFAULT_INTERVALS = ("1s", "1m", "5m", "15m", "1h", "4h", "1d")
SYMBOL_RE = re.compile(
    r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}(-PERP|-[0-9]{8}(-[0-9]+(\.[0-9]+)?-[CP])?)?(-INV|-QUANTO)?$"
)
"""a normalised instrument name (marketpipe/instruments.py): BTC-USDT, BTC-USDT-PERP, BTC-USD-PERP-INV,
BTC-USD-20260925-INV, BTC-USD-20260925-60000-C"""
SYMBOL_RULE = (
    "symbols are normalised names in capitals: BASE-QUOTE for spot (BTC-USDT), "
    "BASE-QUOTE-PERP for perpetuals, BASE-QUOTE-YYYYMMDD for dated futures, -INV after an inverse "
    "contract's name (BTC-USD-PERP-INV)"
)
_INTERVAL_RE = re.compile(r"^(\d+)([smhd])$")
_INTERVAL_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


class ConfigError(UserError, ValueError):
    """Bad configuration; the message says which setting and how to fix it (exit code 2)."""

    default_exit_code = EXIT_USAGE


def check_symbols(symbols: Sequence[str], source: str) -> list[str]:
    """The symbols when each is a normalised name; else a ConfigError naming ``source``."""
    bad = [symbol for symbol in symbols if not SYMBOL_RE.match(symbol)]
    if bad:
        raise ConfigError(f"{source}: {', '.join(bad)}: {SYMBOL_RULE}")
    return list(symbols)


class _Section(BaseModel):
    """A settings table: a key it does not know is an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")


def interval_to_us(interval: str) -> int:
    match = _INTERVAL_RE.match(interval)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"interval {interval!r} must look like 1s, 5m, 1h or 1d")
    return int(match.group(1)) * _INTERVAL_UNIT_US[match.group(2)]


LocalSecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL"]
_LOCAL_USER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LOCAL_PASSWORD_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}")  # printable ASCII but " and \


class LocalBrokerSettings(_Section):
    """The single-node KRaft broker that `marketpipe kafka start` runs from Maven jars."""

    kafka_version: str = "4.3.1"
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    heap: str = "1g"
    start_timeout_s: float = Field(60.0, gt=0)
    security_protocol: LocalSecurityProtocol = Field(
        "PLAINTEXT",
        description="the client listener on `port`; the TLS ones use a self-signed certificate made at start",
    )
    sasl_users: dict[str, str] = Field(
        default_factory=dict, description="SASL/PLAIN user -> password the broker accepts"
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalBrokerSettings:
        if self.port == self.controller_port:
            raise ValueError("kafka.local.port and kafka.local.controller_port must differ")
        return self

    @model_validator(mode="after")
    def _sasl_users_fit(self) -> LocalBrokerSettings:
        if self.security_protocol.startswith("SASL_") and not self.sasl_users:
            raise ValueError(
                f"kafka.local.security_protocol {self.security_protocol} needs kafka.local.sasl_users"
            )
        for user, password in self.sasl_users.items():
            # they are written into the broker's JAAS line, where these characters would need escaping
            if not _LOCAL_USER_RE.fullmatch(user) or not _LOCAL_PASSWORD_RE.fullmatch(password):
                raise ValueError(
                    f"kafka.local.sasl_users[{user!r}]: user names use letters, digits, '.', '_', '-'; "
                    "passwords are printable ASCII without quotes or backslashes"
                )
        return self


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")


def client_security_problem(client: dict[str, str]) -> str | None:
    """What in `kafka.client` would make every client fail to connect in a way librdkafka explains badly."""
    if "bootstrap.servers" in client:
        return (
            "bootstrap.servers belongs in kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS), not kafka.client"
        )
    protocol = client.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        return f"security.protocol {protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}"
    mechanism = client.get("sasl.mechanism", client.get("sasl.mechanisms", "")).upper()
    sasl_keys = sorted(key for key in client if key.startswith("sasl."))
    if not protocol.startswith("SASL_"):
        # librdkafka would ignore them and connect without authenticating
        return (
            f"{', '.join(sasl_keys)} need security.protocol SASL_SSL or SASL_PLAINTEXT" if sasl_keys else None
        )
    if mechanism not in SASL_MECHANISMS:
        # unset, librdkafka falls back to GSSAPI (Kerberos), which is rarely what was meant
        return f"security.protocol {protocol} needs sasl.mechanism, one of {', '.join(SASL_MECHANISMS)}"
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        missing = [key for key in ("sasl.username", "sasl.password") if not client.get(key)]
        if missing:
            return f"sasl.mechanism {mechanism} needs {' and '.join(missing)}"
    return None


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        None, description="Existing cluster to use; when unset, commands use the local broker."
    )
    # Passed through verbatim to every librdkafka client (and translated for aiokafka), e.g.
    # {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", ...}
    client: dict[str, str] = Field(default_factory=dict)
    topic_prefix: str = ""
    replication_factor: int = Field(1, ge=1)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    linger_ms: int = Field(20, ge=0)
    connect_timeout_s: float = Field(
        30.0,
        gt=0,
        description="how long stream, sink and produce wait at start for a Kafka that does not answer "
        "before they exit with an error (a Kafka lost later is waited for)",
    )
    local: LocalBrokerSettings = Field(default_factory=lambda: LocalBrokerSettings())

    @field_validator("client", mode="before")
    @classmethod
    def _client_values_as_text(cls, value: Any) -> Any:
        """TOML gives `enable.ssl.certificate.verification = false` as a bool; librdkafka reads text."""
        if not isinstance(value, dict):
            return value
        nested = [key for key, item in value.items() if isinstance(item, dict | list)]
        if nested:
            raise ValueError(
                f"kafka.client.{nested[0]} is a table: quote librdkafka names in TOML, "
                '"ssl.ca.location" = "...", not ssl.ca.location = "..."'
            )
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}

    @field_validator("client")
    @classmethod
    def _client_security_fits(cls, value: dict[str, str]) -> dict[str, str]:
        problem = client_security_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_chars(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("kafka.topic_prefix may only use letters, digits, '.', '_' and '-'")
        return value


class ClickHouseSettings(_Section):
    dsn: str | None = Field(
        None, description="chdb:///path (embedded) or http(s)://user:pass@host:8123/db; default embedded."
    )


class StreamSettings(_Section):
    ohlcv_intervals: list[str] = Field(default_factory=lambda: list(DEFAULT_INTERVALS))
    ohlcv_update_interval_s: float = Field(1.0, gt=0)
    ohlcv_grace_s: float = Field(2.0, ge=0)
    bucket_interval_s: float = Field(1.0, gt=0)
    session_timeout_s: float = Field(
        20.0,
        ge=6,
        description="a worker silent this long (crashed) leaves the group and its partitions move on",
    )
    worker_id: str | None = Field(
        None,
        description="stable name of this stream worker (its transactional ids); default: the host name",
    )
    batch_size: int = Field(5000, ge=1, description="records consumed per transaction at most")
    poll_interval_ms: int = Field(
        100,
        ge=1,
        description="longest wait for a first record (one arriving ends it at once): an idle "
        "loop's cadence, so how soon it sees a stop, a flush request or a finished commit",
    )
    commit_interval_ms: int = Field(
        40,
        ge=0,
        le=10_000,
        description="transactions begin at least this far apart (a round gathers input meanwhile): "
        "fewer commits for the broker and the worker at low rates, at most this much more latency",
    )
    commit_min_records: int = Field(
        100,
        ge=0,
        description="a round holding fewer records keeps gathering, until commit_max_interval_ms after "
        "the previous transaction began (a transaction's cost to the broker does not depend on its "
        "size); 0: off",
    )
    commit_max_interval_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="how long after the previous transaction a round short of commit_min_records "
        "waits at most: the latency this adds at low rates",
    )
    checkpoint_interval_s: float = Field(
        5.0, gt=0, description="state checkpoint cadence: bounds the input re-read after a restart"
    )
    transaction_timeout_s: float = Field(
        15.0, ge=1, description="an abandoned transaction blocks read-committed consumers this long at most"
    )
    stall_timeout_s: float = Field(
        60.0, gt=0, description="a stage with unread input and no progress this long exits (and is restarted)"
    )
    max_ts_ahead_s: float = Field(
        300.0, gt=0, description="exchange timestamps further ahead of the receive time are dead letters"
    )
    max_ts_behind_s: float = Field(
        7 * 86_400.0, gt=0, description="exchange timestamps further behind the receive time are dead letters"
    )
    bucket_max_distance_pct: float = Field(5.0, gt=0, le=100)
    bucket_sizes: dict[str, float] = Field(default_factory=dict, description="symbol -> bucket size")
    quote_equivalents: list[list[str]] = Field(
        default_factory=list, description='e.g. [["USD", "USDT", "USDC"]]; off when empty'
    )

    @field_validator("ohlcv_intervals")
    @classmethod
    def _intervals_parse(cls, value: list[str]) -> list[str]:
        for interval in value:
            interval_to_us(interval)
        return value

    @model_validator(mode="after")
    def _commit_pacing(self) -> StreamSettings:
        if self.commit_max_interval_ms < self.commit_interval_ms:
            raise ValueError(
                f"commit_max_interval_ms ({self.commit_max_interval_ms}) is below commit_interval_ms "
                f"({self.commit_interval_ms}): raise it, or lower commit_interval_ms"
            )
        return self


BybitCategory = Literal["spot", "linear", "inverse"]
BYBIT_CATEGORIES: tuple[BybitCategory, ...] = ("spot", "linear", "inverse")


class ConnectorSettings(_Section):
    """Connector overrides for one exchange; ``None`` keeps the exchange module's default."""

    ws_url: str | None = Field(
        default=None, description="websocket base URL (the connector appends its path)"
    )
    rest_url: str | None = Field(default=None, description="REST base URL")
    protocol: Literal["v1", "v2"] = Field(default="v2", description="kraken only: websocket API version")
    categories: list[BybitCategory] = Field(
        default_factory=lambda: list(BYBIT_CATEGORIES),
        min_length=1,
        description="bybit only: the v5 categories one connector serves (symbols resolve in each)",
    )
    streams: list[str] | None = Field(
        default=None,
        min_length=1,
        description=f"binance only: the streams subscribed per symbol, from {', '.join(BINANCE_STREAMS)} "
        f"(default all; {BINANCE_BOOK_STREAM} is required, the book is synced from it)",
    )
    max_symbols_per_connection: int | None = Field(default=None, ge=1)
    silence_timeout_s: float | None = Field(
        default=None, gt=0, description="reconnect after this long without a frame"
    )
    rest_min_interval_s: float | None = Field(default=None, ge=0, description="spacing between REST requests")
    connect_interval_s: float | None = Field(
        default=None, ge=0, description="spacing between connection attempts"
    )
    ping_interval_s: float | None = Field(default=None, gt=0, description="application ping cadence")
    max_connection_age_s: float | None = Field(default=None, gt=0, description="planned reconnect after")
    book_depth: int | None = Field(default=None, ge=1, description="book depth for exchanges that take one")

    @field_validator("streams")
    @classmethod
    def _binance_streams(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [stream for stream in value if stream not in BINANCE_STREAMS]
        if unknown:
            raise ValueError(
                f"unknown Binance stream(s) {', '.join(unknown)}: choose from {', '.join(BINANCE_STREAMS)}"
            )
        if BINANCE_BOOK_STREAM not in value:
            raise ValueError(f"{BINANCE_BOOK_STREAM} is required: the book is synced from it")
        return list(dict.fromkeys(value))

    @model_validator(mode="before")
    @classmethod
    def _category_is_now_categories(cls, data: Any) -> Any:
        if isinstance(data, dict) and "category" in data:
            raise ValueError(
                "bybit `category` is replaced by `categories`, a list of spot, linear, inverse "
                "(default all three): one connector serves every category"
            )
        return data


class ProducerOptions(_Section):
    """``[producers]``: what every connector shares. :data:`ProducerSettings` adds one
    ``ConnectorSettings`` table per registered exchange (``[producers.binance_futures]``,
    ``MARKETPIPE_PRODUCERS__BINANCE_FUTURES__WS_URL``)."""

    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    breaker_failures: int = Field(
        default=5, ge=1, description="consecutive failures that open an exchange's breaker"
    )
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    # librdkafka's local queue is the bounded buffer; beyond it frames are dropped
    # and the connection ends with a gap marker (see docs/producers.md).
    buffer_max_messages: int = Field(default=200_000, ge=1)
    buffer_max_kbytes: int = Field(default=512 * 1024, ge=1)
    message_timeout_ms: int = Field(default=120_000, ge=1000)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    ws_compression: bool = Field(
        default=True,
        description="offer permessage-deflate on every websocket (exchanges that take it send book "
        "frames several times smaller); false saves the connector the inflating (6-9 µs a frame)",
    )

    @model_validator(mode="after")
    def _streams_are_binance_only(self) -> ProducerOptions:
        for key, value in self:
            if isinstance(value, ConnectorSettings) and value.streams is not None and key != "binance":
                raise ValueError(f"producers.{key}.streams: only binance chooses its streams")
        return self

    def for_exchange(self, exchange: str) -> ConnectorSettings:
        found = getattr(self, exchange.replace("-", "_"), None)  # binance-futures: binance_futures
        if not isinstance(found, ConnectorSettings):
            raise ValueError(f"no connector settings for exchange {exchange!r}")
        return found


def producer_settings_model(rows: Sequence[Exchange] = REGISTRY) -> type[ProducerOptions]:
    """``ProducerOptions`` with a ``ConnectorSettings`` field per row, named by its settings key."""
    fields: dict[str, Any] = {
        row.settings_key: (ConnectorSettings, Field(default_factory=lambda: ConnectorSettings()))
        for row in rows
    }
    return create_model("ProducerSettings", __base__=ProducerOptions, __module__=__name__, **fields)


if TYPE_CHECKING:  # to mypy the exchange tables are reached through for_exchange only
    ProducerSettings = ProducerOptions
else:
    ProducerSettings = producer_settings_model()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MARKETPIPE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path(".marketpipe")
    # NoDecode: comma-separated in the environment (MARKETPIPE_SYMBOLS=BTC-USDT,ETH-USDT)
    exchanges: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(EXCHANGES))
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            *("BTC-USDT", "ETH-USDT", "BTC-USD", "ETH-USD"),
            *("BTC-USDT-PERP", "ETH-USDT-PERP", "BTC-USD-PERP-INV", "ETH-USD-PERP-INV"),
        ]
    )
    schema_registry_url: str | None = Field(
        None, validation_alias=AliasChoices("schema_registry_url", "SCHEMA_REGISTRY_URL")
    )
    metrics_port: int = Field(9464, ge=0, le=65535)
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    clickhouse: ClickHouseSettings = Field(default_factory=lambda: ClickHouseSettings())
    streams: StreamSettings = Field(default_factory=lambda: StreamSettings())
    producers: ProducerSettings = Field(default_factory=lambda: ProducerSettings())

    @field_validator("exchanges", "symbols", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("["):
            import json

            return json.loads(value)
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("exchanges")
    @classmethod
    def _known_exchanges(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in EXCHANGES]
        if unknown:
            raise ValueError(f"unknown exchange(s) {unknown}; choose from {', '.join(EXCHANGES)}")
        return value

    @field_validator("symbols")
    @classmethod
    def _normalised_symbols(cls, value: list[str]) -> list[str]:
        bad = [symbol for symbol in value if not SYMBOL_RE.match(symbol)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: {SYMBOL_RULE}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, _KnownEnvSettings(settings_cls)]
        config_file = _config_file()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    # -- derived values -------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self.kafka.bootstrap_servers:
            return self.kafka.bootstrap_servers
        return f"{self.kafka.local.host}:{self.kafka.local.port}"

    @property
    def uses_local_broker(self) -> bool:
        return not self.kafka.bootstrap_servers

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse.dsn or f"chdb:///{self.data_dir.resolve() / 'clickhouse'}"

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka configuration shared by every confluent-kafka client (its own log lines go
        through logging, rate-limited: see marketpipe.kafka_logs)."""
        from marketpipe.kafka_logs import librdkafka_logger

        return {
            "bootstrap.servers": self.bootstrap_servers,
            **self.kafka.client,
            "logger": librdkafka_logger(),
        }


def _config_file() -> Path | None:
    explicit = os.environ.get("MARKETPIPE_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"MARKETPIPE_CONFIG points at {path}, which is not a file")
        return path
    default = Path("marketpipe.toml")
    return default if default.is_file() else None


_UNPREFIXED_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "CLICKHOUSE_DSN": ("clickhouse", "dsn"),
}


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings; raise ConfigError with a readable message.

    The message names the file and line or the variable, what is wrong and the accepted
    form; ``MARKETPIPE_*`` variables that set nothing are logged as warnings, with the
    closest known name.
    """
    nested: dict[str, dict[str, Any]] = {}
    for env_name, (section, field) in _UNPREFIXED_ENV.items():
        if os.environ.get(env_name):
            nested.setdefault(section, {})[field] = os.environ[env_name]
    for section, fields in nested.items():
        base = overrides.get(section)
        if isinstance(base, BaseModel):
            base = base.model_dump()
        overrides[section] = {**fields, **(base or {})}
    config_file = _config_file()
    table = _read_toml(config_file) if config_file is not None else {}
    _warn_unknown_variables()
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, config_file, table)) from None
    except SettingsError as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise ConfigError(f"invalid configuration: {exc}") from None


# -- environment variables --------------------------------------------------------------

_OTHER_VARIABLES = ("MARKETPIPE_CONFIG", "MARKETPIPE_JAR_CACHE")
"""MARKETPIPE_* variables read outside the settings object"""
_warned: set[str] = set()


def _env_names(model: type[BaseModel], prefix: str) -> tuple[list[str], list[str]]:
    """The variables that set a field of ``model``: exact names, and prefixes of free-form tables."""
    exact: list[str] = []
    open_prefixes: list[str] = []
    for name, field in model.model_fields.items():
        if field.validation_alias is not None:  # read from its alias only (SCHEMA_REGISTRY_URL)
            continue
        env = f"{prefix}{name.upper()}"
        exact.append(env)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            more, more_open = _env_names(annotation, env + "__")
            exact += more
            open_prefixes += more_open
        elif get_origin(annotation) is dict:
            open_prefixes.append(env + "__")
    return exact, open_prefixes


def unknown_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """``MARKETPIPE_*`` variables that set nothing -> the closest known name (None: nothing close)."""
    exact, open_prefixes = _env_names(Settings, "MARKETPIPE_")
    known = [*exact, *_OTHER_VARIABLES]
    candidates = [*known, *(alias.upper() for alias in ("SCHEMA_REGISTRY_URL", *_UNPREFIXED_ENV))]
    unknown: dict[str, str | None] = {}
    for name in environ:
        upper = name.upper()
        if not upper.startswith("MARKETPIPE_") or upper in known or upper.startswith(tuple(open_prefixes)):
            continue
        close = difflib.get_close_matches(upper, candidates, n=1, cutoff=0.6)
        unknown[name] = close[0] if close else None
    return unknown


def _warn_unknown_variables() -> None:
    for name, close in unknown_variables(os.environ).items():
        if name not in _warned:
            _warned.add(name)
            event = "not a marketpipe setting, ignored"
            if close:
                log_event(log, logging.WARNING, event, variable=name, did_you_mean=close)
            else:
                log_event(log, logging.WARNING, event, variable=name, settings_in="docs/runbook.md")


def _takes_text_list(annotation: Any) -> bool:
    return get_origin(annotation) is list and get_args(annotation) == (str,)


class _KnownEnvSettings(EnvSettingsSource):
    """The environment, without unknown ``MARKETPIPE_*`` names (warned about instead); list
    settings also take comma-separated values (MARKETPIPE_STREAMS__OHLCV_INTERVALS=1m,5m)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        unknown = {name.lower() for name in unknown_variables(os.environ)}
        return {
            name: value for name, value in super()._load_env_vars().items() if name.lower() not in unknown
        }

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            annotation = field.annotation if field is not None else None
            if isinstance(value, str) and _takes_text_list(annotation):
                return [part.strip() for part in value.split(",") if part.strip()]
            example = '{"name": "value"}' if get_origin(annotation) is dict else '[["USD", "USDT"]]'
            raise ConfigError(
                f"{self._variable(field_name, value)}={value!r} is not JSON; this setting takes JSON, "
                f"e.g. {example}"
            ) from None

    def _variable(self, field_name: str, value: Any) -> str:
        suffix = field_name.lower()
        found = (name for name, env in self.env_vars.items() if env == value and name.endswith(suffix))
        return next(found, f"MARKETPIPE_…{field_name}").upper()


# -- the TOML file ----------------------------------------------------------------------

_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_HEADER = re.compile(r"^\[\[?\s*([^\]]+?)\s*\]\]?")
_TOML_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = _TOML_AT.search(message)
        where = f"{path}:{at.group(1)}:{at.group(2)}" if at else str(path)
        raise ConfigError(f"{where}: not valid TOML: {_TOML_AT.sub('', message)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the settings file: {exc}") from None


def _toml_parts(text: str) -> tuple[str, ...]:
    if text[:1] in "\"'":
        return (text[1:-1],)
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def _toml_line(path: Path, loc: tuple[str, ...]) -> int | None:
    """The line of the file that sets ``loc`` (a table header or a key), if it can be told."""
    table: tuple[str, ...] = ()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        header = _TOML_HEADER.match(stripped)
        if header:
            table = _toml_parts(header.group(1))
            if table == loc:
                return number
            continue
        key = _TOML_KEY.match(stripped)
        if key and (table + _toml_parts(key.group(1)))[: len(loc)] == loc:
            return number
    return None


def _in_table(table: Mapping[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = table
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


# -- explaining validation errors -------------------------------------------------------


def _explain(exc: ValidationError, config_file: Path | None, table: Mapping[str, Any]) -> str:
    problems = [_problem(error, config_file, table) for error in exc.errors()]
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    return "invalid configuration:\n" + "\n".join(f"  - {problem}" for problem in problems)


def _problem(error: Any, config_file: Path | None, table: Mapping[str, Any]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    source = _source_of(loc, config_file, table)
    if error["type"] == "extra_forbidden":
        known = _keys_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "the top level"
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"{source}: unknown key {loc[-1]!r} in {where}; {hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{'.'.join(loc) or '(root)'}: {message} ({source})"


def _source_of(loc: tuple[str, ...], config_file: Path | None, table: Mapping[str, Any]) -> str:
    """Where the bad value came from: the variable, else the file and line."""
    environ = {name.upper() for name in os.environ}
    for size in range(len(loc), 0, -1):
        name = "MARKETPIPE_" + "__".join(loc[:size]).upper()
        if name in environ:
            return name
        unprefixed = next((env for env, path in _UNPREFIXED_ENV.items() if path == loc[:size]), None)
        if unprefixed and os.environ.get(unprefixed):
            return unprefixed
    if config_file is not None:
        for size in range(len(loc), 0, -1):
            if _in_table(table, loc[:size]):
                line = _toml_line(config_file, loc[:size])
                return f"{config_file}:{line}" if line else str(config_file)
    env = "MARKETPIPE_" + "__".join(loc).upper()
    return f"set it in marketpipe.toml or {env}"


def _keys_at(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)

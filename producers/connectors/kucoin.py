"""KuCoin classic spot: a token handshake per connection, JSON pings at the server's
pingInterval, level2 + match + ticker + snapshot topics and one 1min candles topic per symbol,
REST level2_100 snapshots for book sync."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson

from marketpipe.exchanges import kucoin as wire
from producers.base import Connection, RestError, RestSnapshotConnector

_TOKEN = re.compile(r"(?<=[?&]token=)[^&]*")


class KucoinConnector(RestSnapshotConnector):
    exchange = "kucoin"
    default_ws_base = wire.WS_BASE
    default_rest_base = wire.REST_BASE
    book_topic = wire.BOOK_TOPIC
    trade_topic = wire.TRADE_TOPIC
    ticker_topics = wire.TICKER_TOPICS
    candle_topic = wire.CANDLE_TOPIC
    candle_type = "1min"
    symbols_per_topic = 100
    max_symbols_per_connection = 100 // 5  # 100 topics per connection; each symbol of a topic counts
    send_interval_s = 0.1  # 100 client messages per 10 s per connection, pings included
    connect_interval_s = 2.0  # token requests and connections are rate-limited per IP
    rest_min_interval_s = 0.1
    ping_interval_s = 18.0  # replaced by the handshake's pingInterval unless configured
    silence_timeout_s = 30.0  # every ping is answered, so pingInterval + pingTimeout of silence is dead

    _ids = itertools.count(1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[str, asyncio.Event] = {}  # subscribe id -> acked
        self._book_subscribes: dict[tuple[str, ...], list[str]] = {}  # a connection's symbols -> ids

    def ws_url(self) -> str:
        return f"{self.ws_base}/"

    async def connect_url(self, conn: Connection) -> str:
        """POST bullet-public: a token and an endpoint for this connection, and its ping interval."""
        url = f"{self.rest_base}{wire.TOKEN_PATH}"
        body = await self.rest.post(url)
        try:
            reply = orjson.loads(body)
            data = reply["data"]
            server = data["instanceServers"][0]
            endpoint, token = server["endpoint"], data["token"]
            ping_ms = server.get("pingInterval")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise RestError(f"POST {url}: unexpected token response {body[:200]!r} ({exc!r})") from None
        if reply.get("code") != wire.OK:
            raise RestError(f"POST {url}: error {reply.get('code')}: {reply.get('msg')!r}")
        if not self.settings.ping_interval_s and ping_ms:
            conn.ping_s = float(ping_ms) / 1000
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode({'token': token, 'connectId': conn.id})}"

    def recorded_url(self, url: str) -> str:
        return _TOKEN.sub("REDACTED", url)

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{wire.INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [f"{self.all_instruments_url()}/{symbol}" for symbol in exchange_symbols]

    def depth_url(self, exchange_symbol: str) -> str:
        return f"{self.rest_base}{wire.SNAPSHOT_PATH}?symbol={exchange_symbol}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        messages: list[str] = []
        book_ids: list[str] = []
        for topic in (self.book_topic, self.trade_topic, *self.ticker_topics):
            for start in range(0, len(symbols), self.symbols_per_topic):
                request_id = str(next(self._ids))
                names = ",".join(symbols[start : start + self.symbols_per_topic])
                messages.append(self._request("subscribe", f"{topic}:{names}", request_id))
                if topic == self.book_topic:
                    book_ids.append(request_id)
        for symbol in symbols:  # candle topics are one symbol each
            topic = f"{self.candle_topic}:{symbol}_{self.candle_type}"
            messages.append(self._request("subscribe", topic, str(next(self._ids))))
        for stale in self._book_subscribes.pop(tuple(symbols), ()):
            self._acks.pop(stale, None)
        self._book_subscribes[tuple(symbols)] = book_ids
        self._acks.update((request_id, asyncio.Event()) for request_id in book_ids)
        return messages

    @staticmethod
    def _request(kind: str, topic: str, request_id: str) -> str:
        message = {"id": request_id, "type": kind, "topic": topic, "privateChannel": False, "response": True}
        return orjson.dumps(message).decode()

    def ping_message(self) -> str:
        return orjson.dumps({"id": str(next(self._ids)), "type": "ping"}).decode()

    def answer_frame(self, data: bytes) -> str | None:
        # Nothing to answer; this per-frame hook notes the level2 subscribe acks, after which
        # a REST snapshot is guaranteed to be no older than the first update it must bridge.
        if len(data) < 96 and b'"ack"' in data:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                event = self._acks.get(str(orjson.loads(data).get("id")))
                if event is not None:
                    event.set()
        return None

    async def updates_flowing(self, conn: Connection) -> None:
        # welcome arrives before any subscription takes effect: wait for the level2 acks instead
        for request_id in self._book_subscribes.pop(tuple(conn.symbols), []):
            event = self._acks.get(request_id)
            if event is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.snapshot_wait_s):
                        await event.wait()
                self._acks.pop(request_id, None)

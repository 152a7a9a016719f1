"""The exchange registry (``marketpipe/exchanges/__init__.py``) is the only list of exchanges, and
a new exchange is one registry row plus its own four modules.

The scan reads every Python module of the source tree and reports each literal (tuple, list,
set, dict keys, call arguments, a comma-separated string) naming three or more registered
exchanges. Allowed: in tests and benchmarks, tables of per-exchange facts (a dict keyed by
exchange: a new exchange brings its own facts) and a few exchanges a test works on
(``subset(...)``, or test data inside a function) while they are less than half of the registry.
docker-compose.yml and deploy/prometheus, one entry per exchange on purpose, are checked against
the registry by tests/test_compose.py.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from producers_support import capture_from_simulator

import marketpipe.exchanges
import producers.connectors
import simulator
import streams.parsers
from marketpipe import exchanges as registry
from marketpipe.config import ConnectorSettings, ProducerSettings, producer_settings_model
from marketpipe.exchanges import REGISTRY, Exchange
from marketpipe.raw import read_capture
from producers.connectors import connector_class
from simulator.server import Simulator
from streams.feed import FeedOutput
from streams.parsers import processor_for

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("marketpipe", "producers", "streams", "sinks", "simulator")
ELSEWHERE = ("tests", "bench", "deploy")
THE_REGISTRY = ROOT / "marketpipe" / "exchanges" / "__init__.py"
_COMMA_LIST = re.compile(r"[a-z0-9_-]+(\s*,\s*[a-z0-9_-]+)+")


class _ListFinder(ast.NodeVisitor):
    """Literals naming three or more registered exchanges that are not allowed where they are."""

    def __init__(self, names: frozenset[str], product: bool) -> None:
        self.names = names
        self.product = product
        self.half = len(REGISTRY) / 2
        self.depth = 0  # function nesting: literals inside a test function are its data
        self.found: list[tuple[int, list[str]]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Expr(self, node: ast.Expr) -> None:
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)  # a docstring is prose

    def visit_Tuple(self, node: ast.Tuple | ast.List | ast.Set) -> None:
        self._check(node, self._named(node.elts))
        self.generic_visit(node)

    visit_List = visit_Set = visit_Tuple

    def visit_Dict(self, node: ast.Dict) -> None:
        self._check(node, self._named([key for key in node.keys if key is not None]), table=True)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = (
            func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        )
        self._check(node, self._named(node.args), sample=called == "subset")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _COMMA_LIST.fullmatch(node.value):
            self._check(node, {part.strip() for part in node.value.split(",")} & self.names)

    def _named(self, nodes: list[ast.expr]) -> set[str]:
        return {n.value for n in nodes if isinstance(n, ast.Constant) and n.value in self.names}

    def _check(self, node: ast.AST, named: set[str], table: bool = False, sample: bool = False) -> None:
        if len(named) < 3:
            return
        few = len(named) < self.half
        allowed = not self.product and (table or (few and (sample or self.depth > 0)))
        if not allowed:
            self.found.append((getattr(node, "lineno", 0), sorted(named)))


def exchange_name_spellings() -> frozenset[str]:
    return frozenset({row.name for row in REGISTRY} | {row.module for row in REGISTRY})


def lists_in(source: str, product: bool) -> list[tuple[int, list[str]]]:
    finder = _ListFinder(exchange_name_spellings(), product)
    finder.visit(ast.parse(source))
    return finder.found


def source_files() -> Iterator[tuple[Path, bool]]:
    for top in (*PRODUCT, *ELSEWHERE):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != THE_REGISTRY:
                yield path, top in PRODUCT


def test_the_registry_is_the_only_list_of_exchanges() -> None:
    copies = [
        f"{path.relative_to(ROOT)}:{line}: {', '.join(names)}"
        for path, product in source_files()
        for line, names in lists_in(path.read_text(), product)
    ]
    assert copies == [], "derive these from marketpipe.exchanges.REGISTRY:\n" + "\n".join(copies)


def test_the_scan_finds_a_copied_list() -> None:
    copied = 'EXCHANGES = ("binance", "okx", "kraken")\n'
    assert lists_in(copied, product=True) == [(1, ["binance", "kraken", "okx"])]
    assert lists_in(copied, product=False) == [(1, ["binance", "kraken", "okx"])]
    assert lists_in('def f():\n    return {"coinbase": 1, "htx": 2, "mexc": 3}\n', product=True)
    assert lists_in('ENV = {"MARKETPIPE_EXCHANGES": "okx,bybit,deribit"}\n', product=False)
    everything = ", ".join(f'"{row.name}"' for row in REGISTRY)
    assert lists_in(f"def test():\n    assert names == [{everything}]\n", product=False)
    assert lists_in(f"ALL = subset({everything})\n", product=False)


def test_a_few_exchanges_a_test_works_on_are_allowed() -> None:
    assert lists_in('EXCHANGES = subset("binance", "coinbase", "okx")\n', product=False) == []
    assert lists_in('def test():\n    assert seen == {"binance", "okx", "bybit"}\n', product=False) == []
    assert lists_in('SYMBOL = {"binance": "BTCUSDT", "okx": "BTC-USDT", "htx": "btcusdt"}\n', False) == []


def test_every_part_of_the_product_derives_from_the_registry() -> None:
    from marketpipe.catalog_cli import CHANNELS
    from marketpipe.config import EXCHANGES as CONFIGURED
    from simulator.base import EXCHANGES as SIMULATED

    names = tuple(row.name for row in REGISTRY)
    assert CONFIGURED == SIMULATED == producers.connectors.EXCHANGES == streams.parsers.EXCHANGES == names
    assert tuple(CHANNELS) == names
    assert tuple(simulator.server.urls(1)) == names
    for row in REGISTRY:
        assert isinstance(ProducerSettings().for_exchange(row.name), ConnectorSettings)
        assert connector_class(row.name).exchange == row.name
        assert processor_for(row.name).exchange == row.name


# -- a new exchange: one row plus its own modules ---------------------------------------------

FAKE = Exchange(
    name="fake-venue",
    module="fake_venue",
    connector="TemplateConnector",
    processor="TemplateProcessor",
    channels=("", "trades", "", ""),
)
_PACKAGES: tuple[ModuleType, ...] = (marketpipe.exchanges, producers.connectors, streams.parsers, simulator)


@pytest.fixture
def fake_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Exchange]:
    """The ``_template`` modules copied as a new exchange's own four files into packages outside
    the source tree, and its row added to the registry: nothing else."""
    for package in _PACKAGES:
        folder = tmp_path / package.__name__.replace(".", "_")
        folder.mkdir()
        template = Path(package.__path__[0]) / "_template.py"
        text = template.read_text().replace("_template", FAKE.module).replace('"template"', f'"{FAKE.name}"')
        (folder / f"{FAKE.module}.py").write_text(text)
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(registry, "REGISTRY", (*REGISTRY, FAKE))
    try:
        yield FAKE
    finally:
        for package in _PACKAGES:
            sys.modules.pop(f"{package.__name__}.{FAKE.module}", None)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_new_exchange_gets_its_settings_table_from_its_row(fake_exchange: Exchange) -> None:
    model = producer_settings_model(registry.REGISTRY)
    settings = model.model_validate({fake_exchange.settings_key: {"ws_url": "ws://fake"}})
    assert settings.for_exchange(fake_exchange.name).ws_url == "ws://fake"
    assert settings.for_exchange("binance").ws_url is None


async def test_a_new_exchange_runs_from_one_row_and_its_modules(
    fake_exchange: Exchange, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Simulator, connector and parser of the new exchange found through its row: frames flow
    from the simulated exchange through the connector to trades out of the parser."""
    name = fake_exchange.name
    symbols = ["BTC-USDT", "ETH-USDT"]
    capture = tmp_path_factory.mktemp("fake") / "fake.jsonl"
    sim = await Simulator(exchanges=(name,), symbols=tuple(symbols), trade_rate=20.0, seed=3).start()
    await capture_from_simulator(sim, name, symbols, capture, 20)

    processor = processor_for(name)
    out = FeedOutput()
    for raw in read_capture(capture):
        processor.process(raw, out)
    assert out.errors == [], out.errors[:3]
    assert out.trades and {trade.symbol for trade in out.trades} <= set(symbols)
    assert all(trade.exchange == name for trade in out.trades)

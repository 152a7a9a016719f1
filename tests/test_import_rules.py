"""Which package may import which (docs/architecture.md, "Layers and import rules").

- marketpipe core (the shared modules below, ``marketpipe/exchanges/``): core and third-party only;
- producers, streams, sinks, simulator: core and their own package, never each other;
- application modules (``marketpipe/{cli,run_cli,...}.py``): the composition root, anything.

Every import counts: at the top, inside functions, under ``TYPE_CHECKING``, and the module names
written in ``importlib.import_module(...)`` arguments. bench/ and tests/ are not checked.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("producers", "streams", "sinks", "simulator")
CORE = frozenset(
    {
        *("marketpipe", "marketpipe.config", "marketpipe.records", "marketpipe.codec"),
        *("marketpipe.topics", "marketpipe.raw", "marketpipe.errors", "marketpipe.times"),
        *("marketpipe.metrics", "marketpipe.output", "marketpipe.kafka_logs", "marketpipe.kafka_security"),
        *("marketpipe.kafka_local", "marketpipe.instruments", "marketpipe.wire", "marketpipe.cli_support"),
        "marketpipe.logs",
    }
)
"""marketpipe core modules, besides the marketpipe.exchanges package"""
APPLICATION = frozenset(
    {
        *("marketpipe.cli", "marketpipe.run_cli", "marketpipe.catalog_cli", "marketpipe.status_cli"),
        *("marketpipe.kafka_cli", "marketpipe.view", "marketpipe.client", "marketpipe.supervisor"),
    }
)
"""the composition root: may import any layer"""

# (importing module, imported module) pairs allowed for now against the rules: an exception
# while a move is in progress, with the reason next to it. Empty: every layer keeps the rules.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """core, app, a layer's name, or None for a module outside the product (third-party)."""
    top = module.split(".")[0]
    if top in LAYERS:
        return top
    if top != "marketpipe":
        return None
    if module in CORE or module == "marketpipe.exchanges" or module.startswith("marketpipe.exchanges."):
        return "core"
    if module in APPLICATION:
        return "app"
    return "unclassified"


def allowed(source: str, target: str) -> bool:
    source_layer, target_layer = layer(source), layer(target)
    if target_layer is None or source_layer == "app":
        return True
    if source_layer == "core":
        return target_layer == "core"
    return target_layer in ("core", source_layer)


def _resolve(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*base, *([module] if module else [])])


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _dynamic_targets(call: ast.Call) -> Iterator[str]:
    """Our module names written in an ``importlib.import_module(...)`` argument (literal, f-string
    head, or the text of a ``.replace(..., "streams.parsers.")``)."""
    for node in ast.walk(call):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts = node.value.strip(".").split(".")
            if parts[0] in (*LAYERS, "marketpipe") and all(part.isidentifier() for part in parts):
                yield ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, wherever the import is."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(text: str, package: str) -> Iterator[str]:
    """Every module a module of ``package`` with source ``text`` imports."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(package, node.module, node.level)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if _is_module(submodule) else base
        elif isinstance(node, ast.Call) and _calls_import_module(node.func):
            yield from _dynamic_targets(node)


def _calls_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )


def product_modules() -> Iterator[Path]:
    for top in ("marketpipe", *LAYERS):
        yield from sorted((ROOT / top).rglob("*.py"))


def violations() -> set[tuple[str, str]]:
    return {
        (module_name(path), target)
        for path in product_modules()
        for target in imports_of(path)
        if not allowed(module_name(path), target)
    }


def test_every_marketpipe_module_is_core_or_application() -> None:
    unclassified = [module_name(p) for p in product_modules() if layer(module_name(p)) == "unclassified"]
    assert unclassified == [], "add them to CORE or APPLICATION in this test (and docs/architecture.md)"


def test_packages_import_only_what_the_rules_allow() -> None:
    found = violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert new == [], "imports against the layer rules:\n" + "\n".join(f"{a} -> {b}" for a, b in new)
    fixed = sorted(KNOWN_VIOLATIONS - found)
    if fixed:
        warnings.warn(f"no longer violations, drop them from KNOWN_VIOLATIONS: {fixed}", stacklevel=1)


def test_the_rules_catch_a_layer_reaching_into_another() -> None:
    assert not allowed("producers.connectors.okx", "streams.parsers.okx")
    assert not allowed("simulator.mexc", "streams.parsers.mexc_pb.PushDataV3ApiWrapper_pb2")
    assert not allowed("sinks.cli", "marketpipe.cli")
    assert not allowed("marketpipe.config", "producers.base")
    assert allowed("streams.parsers.okx", "marketpipe.exchanges.okx")
    assert allowed("marketpipe.run_cli", "sinks.worker")
    assert allowed("simulator.mexc", "marketpipe.exchanges.mexc_pb")


def test_imports_inside_functions_and_through_importlib_count() -> None:
    text = (
        "import importlib\n"
        "from . import base\n"
        "def f(name):\n"
        "    from streams.feed import FeedProcessor\n"
        "    importlib.import_module(f'streams.parsers.{name}')\n"
        "    return importlib.import_module(name.replace('marketpipe.exchanges.', 'sinks.worker.'))\n"
    )
    found = set(imports_in(text, "producers"))
    assert found == {
        *("importlib", "producers.base", "streams.feed", "streams.parsers"),
        *("sinks.worker", "marketpipe.exchanges"),
    }

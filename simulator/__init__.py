"""Local exchange simulator speaking the public websocket and REST protocols of binance,
coinbase, kraken (v2 and v1), bybit (spot, linear, inverse) and okx, with fault injection.

    sim = await start_simulator(port=0, seed=1)
    ws_base, rest_base = urls(sim.port)["binance"]
"""

from simulator.base import FAULTS, FaultError, SimConfig
from simulator.server import Simulator, start_simulator, urls

__all__ = ["FAULTS", "FaultError", "SimConfig", "Simulator", "start_simulator", "urls"]

"""Static int8 engines behind one ``engine`` setting, and the measured ``auto`` choice.

Example:
    >>> sorted(ENGINES)
    ['fx', 'onnxruntime', 'pt2e']
"""

from __future__ import annotations

from sconce_quant.engines.base import (
    Built,
    Engine,
    EngineError,
    PreparedModel,
    StaticSettings,
)
from sconce_quant.engines.fx import FxEngine
from sconce_quant.engines.ort import OrtEngine
from sconce_quant.engines.ortmodule import OrtModule
from sconce_quant.engines.pt2e import Pt2eEngine, Pt2eModule
from sconce_quant.engines.select import Candidate, choose_engine

ENGINES: dict[str, Engine] = {"onnxruntime": OrtEngine(), "pt2e": Pt2eEngine(),
                              "fx": FxEngine()}
"""Every static int8 engine, in the order ``auto`` tries them."""


def get_engine(name: str) -> Engine:
    """The engine called ``name``.

    Raises:
        EngineError: no such engine, or it cannot run here.

    Example:
        >>> get_engine("fx").name
        'fx'
    """
    if name not in ENGINES:
        raise EngineError(f"unknown int8 engine {name!r}; use one of "
                          f"{', '.join(['auto', *ENGINES])}")
    engine = ENGINES[name]
    reason = engine.unavailable()
    if reason:
        raise EngineError(f"int8 engine {name!r} is not available: {reason}")
    return engine


__all__ = ["ENGINES", "Built", "Candidate", "Engine", "EngineError", "FxEngine", "OrtEngine",
           "OrtModule", "PreparedModel", "Pt2eEngine", "Pt2eModule", "StaticSettings",
           "choose_engine", "get_engine"]

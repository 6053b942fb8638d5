"""An energy estimate from counted operations and published per-operation energies.

Per-operation energies (picojoules) are those of M. Horowitz, "Computing's energy problem
(and what we can do about it)", IEEE ISSCC 2014, pp. 10-14, for a 45 nm process at 0.9 V:

=====================  =======
operation              energy
=====================  =======
8-bit integer add      0.03 pJ
32-bit integer add     0.1 pJ
8-bit integer mult     0.2 pJ
32-bit integer mult    3.1 pJ
32-bit float add       0.9 pJ
32-bit float mult      3.7 pJ
=====================  =======

From them: a 32-bit float multiply-accumulate (MAC) costs 3.7 + 0.9 = 4.6 pJ and a spike-
driven accumulate (AC: the weight is added, no multiply) 0.9 pJ; with 8-bit integer weights
(32-bit accumulator) a MAC costs 0.2 + 0.1 = 0.3 pJ and an AC 0.1 pJ. A neuron update
(decay multiply + accumulate) counts as one MAC at its state precision. Memory accesses are
left out, as in most SNN energy comparisons: the estimate is of arithmetic only.

Example:
    >>> round(operation_energy_pj(synops=1e6, dense_macs=0, weight_bits=32), 1)  # 1 M ACs
    900000.0
"""

from __future__ import annotations

PJ_FLOAT32_ADD = 0.9
PJ_FLOAT32_MULT = 3.7
PJ_INT32_ADD = 0.1
PJ_INT8_MULT = 0.2

PJ_MAC = {32: PJ_FLOAT32_MULT + PJ_FLOAT32_ADD, 8: PJ_INT8_MULT + PJ_INT32_ADD}
"""Multiply-accumulate energy by operand bits (float32, int8)."""
PJ_AC = {32: PJ_FLOAT32_ADD, 8: PJ_INT32_ADD}
"""Accumulate energy by weight bits (float32, int8 into a 32-bit accumulator)."""


def _precision(bits: int) -> int:
    return 8 if bits <= 8 else 32


def operation_energy_pj(*, synops: float, dense_macs: float, weight_bits: int) -> float:
    """Picojoules of ``synops`` accumulates and ``dense_macs`` MACs at ``weight_bits``.

    Example:
        >>> operation_energy_pj(synops=10, dense_macs=1, weight_bits=8)
        1.3
    """
    precision = _precision(weight_bits)
    return round(synops * PJ_AC[precision] + dense_macs * PJ_MAC[precision], 12)


def neuron_energy_pj(updates: float, state_bits: int) -> float:
    """Picojoules of ``updates`` neuron updates (one MAC each) at ``state_bits``.

    Example:
        >>> neuron_energy_pj(10, 32)
        46.0
    """
    return round(updates * PJ_MAC[_precision(state_bits)], 12)

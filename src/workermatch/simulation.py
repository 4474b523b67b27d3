"""The fleet simulator, under its first name: :mod:`workermatch.lab` holds it now.

This module re-exports the lab's names, so ``from workermatch.simulation import ...`` and
``python -m workermatch.simulation`` keep working exactly as before.
"""

from __future__ import annotations

from .lab import (
    BRIDGE_STOP_MS,
    CANDIDATE_POLICIES,
    EPOCH,
    FINAL_UPDATE_GAP_MS,
    FINAL_UPDATES,
    HEARTBEAT_EVERY_MS,
    SCENARIOS,
    SHIPPED,
    FleetParams,
    Result,
    Scenario,
    Score,
    SimRecord,
    add_simulate_arguments,
    format_table,
    generate,
    main,
    resolve_policies,
    run_simulate,
    score,
    simulate,
    write_trace,
)

__all__ = [
    "BRIDGE_STOP_MS",
    "CANDIDATE_POLICIES",
    "EPOCH",
    "FINAL_UPDATES",
    "FINAL_UPDATE_GAP_MS",
    "HEARTBEAT_EVERY_MS",
    "SCENARIOS",
    "SHIPPED",
    "FleetParams",
    "Result",
    "Scenario",
    "Score",
    "SimRecord",
    "add_simulate_arguments",
    "format_table",
    "generate",
    "main",
    "resolve_policies",
    "run_simulate",
    "score",
    "simulate",
    "write_trace",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""The lab: a fleet simulator with ground truth; generate traces, replay them under policies,
score them.

The simulator is how the default policy was chosen (``docs/tuning.md``).  It has four parts:

* ``_client``: the one model of the real client's timing (``docs/tuning.md``):
  a claim without hostname; at GUI start two heartbeats at the same instant; a heartbeat every
  30 s, the only request with a hostname; progress updates without hostname; five 100 %
  updates 0.5 s apart, then ``finished``.  The real client sends many updates a second; the
  simulator samples one every 1 to 5 s (the matching rules see the same thing: a request
  without hostname, from the GUI's address).  The conformance kit's ``fleet_streams``,
  ``workermatch demo`` and the project's story and corpus use the same model.
* :func:`generate` turns :class:`FleetParams` into a trace: the requests a server would see from
  a fleet of machines running the real client, in arrival order, each carrying its ground truth
  (which machine and which session sent it) under ``truth``.
* :func:`score` replays a trace under one policy on a fresh in-memory store and measures what
  the ground truth says went wrong.
* :func:`simulate` does both for named :data:`SCENARIOS` and several policies, and
  :func:`format_table` prints the scores side by side.  ``workermatch simulate`` is the command.

Everything is deterministic for a seed: the same parameters and seed give the same bytes.
"""

from __future__ import annotations

from ._client import (
    BRIDGE_STOP_MS,
    FINAL_UPDATE_GAP_MS,
    FINAL_UPDATES,
    FINALE_MS,
    HEARTBEAT_EVERY_MS,
    Request,
    address_at,
    every,
    session_requests,
)
from ._fleet import EPOCH, FleetParams, SimRecord, generate, write_trace
from ._scenarios import CANDIDATE_POLICIES, SCENARIOS, SHIPPED, Scenario, resolve_policies
from ._score import (
    Result,
    Score,
    add_simulate_arguments,
    format_table,
    main,
    run_simulate,
    score,
    simulate,
)

__all__ = [
    "BRIDGE_STOP_MS",
    "CANDIDATE_POLICIES",
    "EPOCH",
    "FINALE_MS",
    "FINAL_UPDATES",
    "FINAL_UPDATE_GAP_MS",
    "HEARTBEAT_EVERY_MS",
    "SCENARIOS",
    "SHIPPED",
    "FleetParams",
    "Request",
    "Result",
    "Scenario",
    "Score",
    "SimRecord",
    "add_simulate_arguments",
    "address_at",
    "every",
    "format_table",
    "generate",
    "main",
    "resolve_policies",
    "run_simulate",
    "score",
    "session_requests",
    "simulate",
    "write_trace",
]

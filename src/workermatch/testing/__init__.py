"""The conformance kit: prove that your own repository decides exactly like the reference.

Install the ``testing`` extra (it needs pytest and Hypothesis): from a checkout,
``python -m pip install '.[testing]'``.  The package
root never imports this module.

* :class:`RepositoryContract` -- subclass it as ``TestMyRepository`` and supply
  ``make_repository`` and a back-door ``seed``; every protocol method is checked against the
  reference, and every decision over generated fleet streams must equal the reference's.
* :class:`ReferenceRepository` -- the reference: the protocol written out as plainly as
  possible, every query a scan of every row (no index), new worker ids ``w1``, ``w2``, ...
  The kit compares every repository with it, :class:`~workermatch.InMemoryWorkerRepository`
  included.
* :class:`RepositoryStateMachine` -- a Hypothesis state machine driving your repository and the
  reference side by side (``run_state_machine_as_test(lambda: RepositoryStateMachine(f))``).
* :class:`BlockingRepository` and :class:`LoopThread` -- check an asyncio repository
  (:class:`~workermatch.aio.AsyncWorkerRepository`) with the same kit: the facade runs each
  call on an event loop in a thread of its own.
* Strategies: :func:`ip_addresses`, :func:`hostnames`, :func:`identities`, :func:`workers`,
  :func:`assignments`, :func:`policies` and :func:`fleet_streams` (with ground truth); ids and
  hostnames include :func:`lookalikes` (differing only in case, accents, NFC/NFD or width).

``docs/stores.md`` is the guide.
"""

from __future__ import annotations

from ._blocking import BlockingRepository, LoopThread
from ._compare import apply_to_both, assert_same_state, sweep_both
from ._contract import RepositoryContract
from ._machine import RepositoryStateMachine
from ._reference import ReferenceRepository
from ._strategies import (
    EPOCH,
    FleetStream,
    SessionTruth,
    StreamEvent,
    Truth,
    assignments,
    fleet_streams,
    hostnames,
    identities,
    ip_addresses,
    lookalikes,
    policies,
    rule_tables,
    spell_hostname,
    spell_ip,
    workers,
)

__all__ = [
    "EPOCH",
    "BlockingRepository",
    "FleetStream",
    "LoopThread",
    "ReferenceRepository",
    "RepositoryContract",
    "RepositoryStateMachine",
    "SessionTruth",
    "StreamEvent",
    "Truth",
    "apply_to_both",
    "assert_same_state",
    "assignments",
    "fleet_streams",
    "hostnames",
    "identities",
    "ip_addresses",
    "lookalikes",
    "policies",
    "rule_tables",
    "spell_hostname",
    "spell_ip",
    "sweep_both",
    "workers",
]

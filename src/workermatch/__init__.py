"""workermatch: decide which worker record a compute worker's request belongs to.

Identity signals are weak (a public IP that VPNs and NAT change or share, a hostname that only
some requests carry, timing, which record holds a running assignment).  workermatch resolves
each request to one worker record, or decides that a new one must be made, and explains why.

The core is pure: :func:`match_worker` and :func:`plan` read through a
:class:`WorkerRepository` and write nothing; :func:`apply_event` decides and writes in one
atomic step.
"""

from __future__ import annotations

from ._decision import (
    DEFAULT_RULES,
    LEGACY_RULES,
    NOTE_RULES,
    Alert,
    Candidate,
    Decision,
    Effect,
    Guard,
    Outcome,
    Row,
    RuleReport,
    Rules,
    Verdict,
)
from ._engine import NEW_WORKER, apply_event, match_worker, plan, sweep
from ._errors import (
    AmbiguousMatch,
    ClaimRefused,
    InvalidInput,
    StorageError,
    TransientStorageError,
    WorkermatchError,
)
from ._memory import InMemoryWorkerRepository, sequential_ids
from ._model import (
    Assignment,
    AssignmentStatus,
    Event,
    EventKind,
    HeldEnd,
    Identity,
    Worker,
    WorkerStatus,
    normalize_hostname,
    normalize_ip,
    normalize_time,
)
from ._observe import add_outcome_hook, remove_outcome_hook
from ._policy import (
    DEFAULT_POLICY,
    LEGACY_POLICY,
    NOTE_POLICY,
    POLICIES,
    Criterion,
    OnAmbiguous,
    OrphanCondition,
    Policy,
    Rule,
    get_policy,
)
from ._protocol import (
    InsertAssignment,
    InsertWorker,
    UpdateAssignment,
    UpdateWorker,
    WorkerRepository,
    Write,
)
from ._token import WorkerTokens

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_RULES",
    "LEGACY_POLICY",
    "LEGACY_RULES",
    "NEW_WORKER",
    "NOTE_POLICY",
    "NOTE_RULES",
    "POLICIES",
    "Alert",
    "AmbiguousMatch",
    "Assignment",
    "AssignmentStatus",
    "Candidate",
    "ClaimRefused",
    "Criterion",
    "Decision",
    "Effect",
    "Event",
    "EventKind",
    "Guard",
    "HeldEnd",
    "Identity",
    "InMemoryWorkerRepository",
    "InsertAssignment",
    "InsertWorker",
    "InvalidInput",
    "OnAmbiguous",
    "OrphanCondition",
    "Outcome",
    "Policy",
    "Row",
    "Rule",
    "RuleReport",
    "Rules",
    "StorageError",
    "TransientStorageError",
    "UpdateAssignment",
    "UpdateWorker",
    "Verdict",
    "Worker",
    "WorkerRepository",
    "WorkerStatus",
    "WorkerTokens",
    "WorkermatchError",
    "Write",
    "__version__",
    "add_outcome_hook",
    "apply_event",
    "get_policy",
    "match_worker",
    "normalize_hostname",
    "normalize_ip",
    "normalize_time",
    "plan",
    "remove_outcome_hook",
    "sequential_ids",
    "sweep",
]

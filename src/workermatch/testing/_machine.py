"""A Hypothesis state machine that drives a repository and the reference side by side."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from .._model import Event
from .._policy import DEFAULT_POLICY, Policy
from .._protocol import WorkerRepository
from ._compare import apply_to_both, assert_same_state, new_reference, sweep_both
from ._strategies import EPOCH, policies, spell_hostname

__all__ = ["RepositoryStateMachine"]

_IPS = ("10.0.0.1", "10.0.0.2", "::ffff:10.0.0.3", "2001:DB8::1", "[2001:db8::2]")
# With lookalikes: hostnames that differ only in accents (composed or decomposed) or width,
# assignment ids that differ only in case or accents.
_HOSTS = ("alpha", "Beta", "GAMMA.", "\u00c1lpha", "a\u0301lpha", "\uff41lpha")
_ASSIGNMENTS = ("A1", "a1", "A2", "\u00c12", "A\u03012")
_STEPS = (0.0, 0.2, 3.0, 29.0, 31.0, 125.0, 301.0, 700.0)


class RepositoryStateMachine(RuleBasedStateMachine):
    """Claims, heartbeats, updates, finishes, registrations, time jumps and sweeps, applied to a
    repository under test and to the reference (:class:`ReferenceRepository`, which scans every
    row); after every step the decisions, the writes and the stored rows must be equal.

    ``make_repository`` returns a fresh, empty repository whose ``new_worker_id`` follows the
    reference's ``w1``, ``w2``, ... (build it with ``id_factory=sequential_ids()``)::

        run_state_machine_as_test(lambda: RepositoryStateMachine(my_factory))
    """

    def __init__(
        self,
        make_repository: Callable[[], WorkerRepository],
        close_repository: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__()
        self.repo = make_repository()
        self._close = close_repository
        self.reference = new_reference()
        self.now = EPOCH
        self.policy: Policy = DEFAULT_POLICY
        self.steps = 0

    def teardown(self) -> None:
        if self._close is not None:
            self._close(self.repo)

    def _apply(self, event: Event) -> None:
        self.steps += 1
        apply_to_both(
            self.repo, self.reference, event, self.now, self.policy, step=f"step {self.steps}: "
        )

    @initialize(policy=policies(shipped_only=True))
    def choose_policy(self, policy: Policy) -> None:
        self.policy = policy

    @rule(ip=st.sampled_from(_IPS), assignment=st.sampled_from(_ASSIGNMENTS))
    def claim(self, ip: str, assignment: str) -> None:
        self._apply(Event.claim(ip, assignment))

    @rule(
        ip=st.sampled_from(_IPS),
        hostname=st.sampled_from(_HOSTS),
        hint=st.none() | st.sampled_from(_ASSIGNMENTS),
        rnd=st.randoms(use_true_random=False),
    )
    def heartbeat(self, ip: str, hostname: str, hint: str | None, rnd: random.Random) -> None:
        host = spell_hostname(hostname.rstrip("."), rnd)
        self._apply(Event.heartbeat(ip, hostname=host, assignment_id=hint))

    @rule(
        ip=st.sampled_from(_IPS),
        message=st.sampled_from([None, "overall_progress", "finished", "fatal_error"]),
        hint=st.none() | st.sampled_from(_ASSIGNMENTS),
    )
    def update(self, ip: str, message: str | None, hint: str | None) -> None:
        self._apply(Event.gui_update(ip, message, assignment_id=hint))

    @rule(ip=st.sampled_from(_IPS), hostname=st.none() | st.sampled_from(_HOSTS))
    def register(self, ip: str, hostname: str | None) -> None:
        self._apply(Event.register(ip, hostname=hostname))

    @rule(seconds=st.sampled_from(_STEPS))
    def wait(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        self.steps += 1
        sweep_both(self.repo, self.reference, self.now, self.policy)

    @invariant()
    def same_rows(self) -> None:
        assert_same_state(self.repo, self.reference, step=f"after step {self.steps}: ")

"""The contract base class: subclass it to prove a repository decides like the reference.

The class is named so that pytest does not collect it where it is defined; a subclass whose
name starts with ``Test`` is collected and runs every check.  Test names are public API
(``docs/stores.md`` says how changes to them are announced).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from .._engine import apply_event
from .._errors import StorageError
from .._memory import sequential_ids
from .._model import Assignment, AssignmentStatus, Event, Worker, WorkerStatus
from .._policy import DEFAULT_POLICY, LEGACY_POLICY, NOTE_POLICY, Policy
from .._protocol import (
    InsertAssignment,
    InsertWorker,
    UpdateAssignment,
    UpdateWorker,
    WorkerRepository,
    Write,
)
from ._compare import (
    apply_to_both,
    assert_same_rows,
    assert_same_state,
    new_reference,
    sweep_both,
)
from ._machine import RepositoryStateMachine
from ._strategies import EPOCH, fleet_streams

__all__ = ["RepositoryContract"]

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R", bound=WorkerRepository)

_IPS = ("10.0.0.1", "10.0.0.2", "2001:db8::1")
# Ids and hostnames that differ only in case, accents (composed and decomposed), width or
# "\u00df": a store must keep them apart exactly as Python's ``==`` does.
_HOSTS = ("alpha", "\u00e1lpha", "a\u0301lpha", "\uff41lpha", "beta")
_WORKER_IDS = ("w1", "W1", "w\u00e9", "we\u0301", "w2", "\uff572", "ws", "w\u00df")
_ASSIGNMENT_IDS = ("A1", "a1", "A2", "\u00c12", "A\u03012", "\uff212")


def _times() -> st.SearchStrategy[datetime]:
    return st.integers(0, 30 * 60 * 1000).map(lambda ms: EPOCH + timedelta(milliseconds=ms))


_END = EPOCH + timedelta(hours=1)


def _assignment_statuses() -> st.SearchStrategy[AssignmentStatus]:
    """Every status, RUNNING (what the engine reads) most often."""
    return st.sampled_from([AssignmentStatus.RUNNING, *AssignmentStatus])


def _cutoffs(first: datetime) -> st.SearchStrategy[list[datetime]]:
    """Cut-off times for a query: ``first`` (every row qualifies), then a few drawn ones."""
    return st.lists(_times(), max_size=3).map(lambda ts: [first, *ts])


@st.composite
def _rows(draw: st.DrawFn) -> tuple[list[Worker], list[Assignment]]:
    """A consistent set of rows: unique ids, merge pointers and holders name seeded workers."""
    count = draw(st.sampled_from(range(len(_WORKER_IDS) + 1)))
    ids = list(draw(st.permutations(_WORKER_IDS))[:count])
    workers = []
    for wid in ids:
        created = draw(_times())
        seen = created + timedelta(milliseconds=draw(st.integers(0, 10 * 60 * 1000)))
        workers.append(
            Worker(
                id=wid,
                ip=draw(st.sampled_from(_IPS)),
                hostname=draw(st.sampled_from((None, *_HOSTS))),
                created_at=created,
                last_seen=seen,
                status=draw(st.sampled_from(list(WorkerStatus))),
                stale=draw(st.sampled_from([False, False, True])),
                assignment_id=draw(st.sampled_from((None, *_ASSIGNMENT_IDS))),
                ended_at=draw(st.none() | st.just(seen)),
                merged_into=draw(st.sampled_from([None, None, None, *ids])),
            )
        )
    aids = list(
        draw(st.permutations(_ASSIGNMENT_IDS))[: draw(st.integers(0, len(_ASSIGNMENT_IDS)))]
    )
    assignments = [
        Assignment(
            id=aid,
            status=draw(_assignment_statuses()),
            worker_id=draw(st.sampled_from((None, *ids))),
            started_at=draw(st.none() | _times()),
            ended_at=draw(st.none() | _times()),
        )
        for aid in aids
    ]
    return workers, assignments


def _replacement(draw: st.DrawFn, w: Worker, ids: Sequence[str]) -> Worker:
    seen = w.last_seen + timedelta(milliseconds=draw(st.integers(0, 600_000)))
    return Worker(
        id=w.id,
        ip=draw(st.sampled_from(_IPS)),
        hostname=draw(st.sampled_from((None, *_HOSTS))),
        created_at=w.created_at,
        last_seen=seen,
        status=draw(st.sampled_from(list(WorkerStatus))),
        stale=draw(st.booleans()),
        assignment_id=draw(st.sampled_from((None, *_ASSIGNMENT_IDS))),
        ended_at=draw(st.none() | st.just(seen)),
        merged_into=draw(st.none() | st.sampled_from(list(ids))),
    )


@st.composite
def _write_batches(draw: st.DrawFn) -> tuple[list[Worker], list[Assignment], list[Write]]:
    """Seeded rows and one valid batch of writes on them (inserts and replacements)."""
    workers, assignments = draw(_rows())
    ids = [w.id for w in workers]
    writes: list[Write] = []
    for w in workers:
        if draw(st.booleans()):
            writes.append(UpdateWorker(worker=_replacement(draw, w, ids)))
    fresh = [i for i in _WORKER_IDS if i not in ids][: draw(st.integers(0, 2))]
    for wid in fresh:
        t = draw(_times())
        writes.append(
            InsertWorker(
                worker=Worker(id=wid, ip=draw(st.sampled_from(_IPS)), created_at=t, last_seen=t)
            )
        )
        ids.append(wid)
    for a in assignments:
        if draw(st.booleans()):
            writes.append(
                UpdateAssignment(
                    assignment=Assignment(
                        id=a.id,
                        status=draw(st.just(a.status) | _assignment_statuses()),
                        worker_id=draw(st.sampled_from((None, *ids))),
                        started_at=a.started_at,
                        ended_at=draw(st.none() | _times()),
                    )
                )
            )
    aids = [a.id for a in assignments]
    for aid in [i for i in _ASSIGNMENT_IDS if i not in aids][: draw(st.integers(0, 2))]:
        writes.append(
            InsertAssignment(
                assignment=Assignment(
                    id=aid,
                    status=AssignmentStatus.RUNNING,
                    worker_id=draw(st.sampled_from((None, *ids))),
                )
            )
        )
    return workers, assignments, writes


def _product(xs: Sequence[T], ys: Sequence[U]) -> list[tuple[T, U]]:
    return [(x, y) for x in xs for y in ys]


class RepositoryContract(Generic[R]):
    """The conformance kit.  Subclass it as ``TestMyRepository`` and supply two methods.

    Every check compares the repository with the reference, :class:`ReferenceRepository` (every
    query a scan of every row), given the same rows or the same requests.

    ``make_repository(id_factory=...)`` returns a fresh, empty, isolated repository.  When
    ``id_factory`` is given, the repository's ``new_worker_id`` must return its values (the kit
    passes ``w1``, ``w2``, ... so that ids, and ties broken by id, match the reference's).

    ``seed(repository, workers, assignments)`` is the back door: it stores the given rows
    *without* the protocol's methods (plain SQL, your ORM, your client), so that the protocol's
    own methods are what is tested.  Rows are given in an order that respects references
    (``merged_into`` and assignment holders name workers of the same call).

    Optional: ``close_repository`` to release a repository, ``end_thread`` to release what a
    thread the kit started holds (its connection), ``policies`` to choose the policies
    the event streams run under, ``max_examples`` to cap Hypothesis examples for a slow store
    (``None``: the active Hypothesis profile decides), ``state_machine_settings``.
    """

    policies: ClassVar[tuple[Policy, ...]] = (DEFAULT_POLICY, NOTE_POLICY, LEGACY_POLICY)
    max_examples: int | None = None
    state_machine_settings: ClassVar[settings] = settings(
        max_examples=25,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )

    # -- what a subclass supplies ------------------------------------------------------------

    def make_repository(self, *, id_factory: Callable[[], str] | None) -> R:
        """A fresh, empty repository, isolated from every other one the kit made."""
        raise NotImplementedError("subclass RepositoryContract and define make_repository()")

    def seed(
        self,
        repository: R,
        workers: Sequence[Worker],
        assignments: Sequence[Assignment],
    ) -> None:
        """Store these rows through a back door, not through the protocol's methods."""
        raise NotImplementedError("subclass RepositoryContract and define seed()")

    def close_repository(self, repository: R) -> None:
        """Release a repository the kit made (default: nothing to do)."""

    def end_thread(self, repository: R) -> None:
        """Called in each thread the kit starts, when that thread is done with ``repository``
        (default: nothing to do): release what the thread holds, such as a per-thread
        connection (Django's connections are per thread)."""

    # -- helpers -----------------------------------------------------------------------------

    def _settings(self, **extra: Any) -> settings:
        kwargs: dict[str, Any] = {
            "deadline": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
            **extra,
        }
        if self.max_examples is not None:
            kwargs["max_examples"] = self.max_examples
        return settings(settings.default, **kwargs)

    def _seeded(
        self, workers: Sequence[Worker], assignments: Sequence[Assignment]
    ) -> tuple[R, WorkerRepository]:
        reference = new_reference()
        reference.write(
            [InsertWorker(worker=w) for w in workers]
            + [InsertAssignment(assignment=a) for a in assignments]
        )
        repo = self.make_repository(id_factory=sequential_ids())
        self.seed(repo, list(workers), list(assignments))
        return repo, reference

    def _with_rows(self, check: Callable[[R, WorkerRepository, st.DataObject], None]) -> None:
        @self._settings()
        @given(rows=_rows(), data=st.data())
        def run(rows: tuple[list[Worker], list[Assignment]], data: st.DataObject) -> None:
            repo, reference = self._seeded(*rows)
            try:
                check(repo, reference, data)
            finally:
                self.close_repository(repo)

        run()

    # -- the protocol's reads ----------------------------------------------------------------

    def test_get_worker_returns_the_seeded_row(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, _: st.DataObject) -> None:
            for wid in (*_WORKER_IDS, "nobody"):
                got, expected = repo.get_worker(wid), ref.get_worker(wid)
                assert got == expected, f"get_worker({wid!r}): expected {expected!r}, got {got!r}"

        self._with_rows(check)

    def test_get_assignment_returns_the_seeded_row(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, _: st.DataObject) -> None:
            for aid in (*_ASSIGNMENT_IDS, "nothing"):
                got, expected = repo.get_assignment(aid), ref.get_assignment(aid)
                assert got == expected, (
                    f"get_assignment({aid!r}): expected {expected!r}, got {got!r}"
                )

        self._with_rows(check)

    def test_live_workers_by_ip_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            for since, ip in _product(data.draw(_cutoffs(EPOCH), label="seen_since"), _IPS):
                assert_same_rows(
                    f"live_workers_by_ip({ip!r}, seen_since={since.isoformat()}) (live: stale "
                    "flag unset, not merged, last_seen >= seen_since)",
                    repo.live_workers_by_ip(ip, since),
                    ref.live_workers_by_ip(ip, since),
                    key=lambda w: w.id,
                )

        self._with_rows(check)

    def test_live_workers_by_hostname_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            for since, host in _product(data.draw(_cutoffs(EPOCH), label="seen_since"), _HOSTS):
                assert_same_rows(
                    f"live_workers_by_hostname({host!r}, seen_since={since.isoformat()}) (live: "
                    "stale flag unset, not merged, last_seen >= seen_since)",
                    repo.live_workers_by_hostname(host, since),
                    ref.live_workers_by_hostname(host, since),
                    key=lambda w: w.id,
                )

        self._with_rows(check)

    def test_recent_running_workers_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            created_list = data.draw(_cutoffs(EPOCH), label="created_since")
            seen_list = data.draw(_cutoffs(EPOCH), label="seen_since")
            for created, seen in _product(created_list, seen_list):
                assert_same_rows(
                    f"recent_running_workers(created_since={created.isoformat()}, "
                    f"seen_since={seen.isoformat()}) (live RUNNING workers)",
                    repo.recent_running_workers(created, seen),
                    ref.recent_running_workers(created, seen),
                    key=lambda w: w.id,
                )

        self._with_rows(check)

    def test_stale_running_workers_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            for before in data.draw(_cutoffs(_END), label="seen_before"):
                for ip, host in _product(_IPS, (None, *_HOSTS)):
                    assert_same_rows(
                        f"stale_running_workers({ip!r}, {host!r}, seen_before="
                        f"{before.isoformat()}) (the workers whose RUNNING assignments a new "
                        "worker takes over)",
                        repo.stale_running_workers(ip, host, before),
                        ref.stale_running_workers(ip, host, before),
                        key=lambda w: w.id,
                    )

        self._with_rows(check)

    def test_running_assignments_of_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            drawn = data.draw(st.lists(st.sampled_from(_WORKER_IDS), unique=True), label="ids")
            for ids in (list(_WORKER_IDS), drawn):
                assert_same_rows(
                    f"running_assignments_of({ids!r})",
                    repo.running_assignments_of(ids),
                    ref.running_assignments_of(ids),
                    key=lambda a: a.id,
                )

        self._with_rows(check)

    def test_unflagged_workers_seen_before_agrees_with_reference(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, data: st.DataObject) -> None:
            for before in data.draw(_cutoffs(_END), label="seen_before"):
                assert_same_rows(
                    f"unflagged_workers_seen_before({before.isoformat()}) (what a sweep flags)",
                    repo.unflagged_workers_seen_before(before),
                    ref.unflagged_workers_seen_before(before),
                    key=lambda w: w.id,
                )

        self._with_rows(check)

    def test_all_workers_and_assignments_return_every_row(self) -> None:
        def check(repo: WorkerRepository, ref: WorkerRepository, _: st.DataObject) -> None:
            assert_same_state(repo, ref)

        self._with_rows(check)

    # -- the protocol's writes ---------------------------------------------------------------

    def test_new_worker_id_is_fresh(self) -> None:
        repo = self.make_repository(id_factory=None)
        try:
            ids = [repo.new_worker_id() for _ in range(50)]
            assert all(isinstance(i, str) and i for i in ids), f"new_worker_id gave {ids!r}"
            assert len(set(ids)) == len(ids), f"new_worker_id repeated an id: {ids!r}"
        finally:
            self.close_repository(repo)
        factory = sequential_ids("kit")
        repo = self.make_repository(id_factory=factory)
        try:
            got = [repo.new_worker_id() for _ in range(3)]
            assert got == ["kit1", "kit2", "kit3"], (
                f"make_repository(id_factory=...) must make new_worker_id return the factory's "
                f"ids; got {got!r}"
            )
        finally:
            self.close_repository(repo)

    def test_write_applies_every_operation(self) -> None:
        @self._settings()
        @given(batch=_write_batches())
        def run(batch: tuple[list[Worker], list[Assignment], list[Write]]) -> None:
            workers, assignments, writes = batch
            repo, reference = self._seeded(workers, assignments)
            try:
                reference.write(writes)
                repo.write(writes)
                assert_same_state(
                    repo, reference, step="write() of a batch of inserts and updates: "
                )
            finally:
                self.close_repository(repo)

        run()

    def test_write_is_all_or_nothing(self) -> None:
        @self._settings()
        @given(batch=_write_batches())
        def run(batch: tuple[list[Worker], list[Assignment], list[Write]]) -> None:
            workers, assignments, writes = batch
            repo, reference = self._seeded(workers, assignments)
            try:
                bad = InsertWorker(
                    worker=Worker(id="w-dup", ip="10.0.0.9", created_at=EPOCH, last_seen=EPOCH)
                )
                try:
                    repo.write([*writes, bad, bad])
                except StorageError:
                    pass
                except Exception as exc:
                    raise AssertionError(
                        "write() of a batch that inserts one worker id twice must raise "
                        f"StorageError, not {exc!r}"
                    ) from exc
                else:
                    raise AssertionError(
                        "write() of a batch that inserts one worker id twice did not fail"
                    )
                assert_same_state(repo, reference, step="after a write() that failed: ")
            finally:
                self.close_repository(repo)

        run()

    def test_atomically_returns_the_result(self) -> None:
        repo = self.make_repository(id_factory=sequential_ids())
        try:
            assert repo.atomically(lambda: 42) == 42
        finally:
            self.close_repository(repo)

    def test_atomically_undoes_writes_when_the_unit_raises(self) -> None:
        repo = self.make_repository(id_factory=sequential_ids())
        try:
            kept = Worker(id="w1", ip="10.0.0.1", created_at=EPOCH, last_seen=EPOCH)
            self.seed(repo, [kept], [])

            class Boom(Exception):
                pass

            def unit() -> None:
                repo.write(
                    [
                        UpdateWorker(
                            worker=Worker(id="w1", ip="10.0.0.2", created_at=EPOCH, last_seen=EPOCH)
                        ),
                        InsertWorker(
                            worker=Worker(id="w2", ip="10.0.0.3", created_at=EPOCH, last_seen=EPOCH)
                        ),
                    ]
                )
                raise Boom

            try:
                repo.atomically(unit)
            except Boom:
                pass
            except Exception as exc:
                raise AssertionError(
                    f"atomically() must let the unit's own exception through, not {exc!r}"
                ) from exc
            else:
                raise AssertionError("atomically() swallowed the exception of the unit")
            rows = sorted(repo.all_workers(), key=lambda w: w.id)
            assert rows == [kept], (
                "atomically() is not atomic: the writes of a unit that raised were kept "
                f"(expected only {kept!r}, found {rows!r})"
            )
        finally:
            self.close_repository(repo)

    def test_atomically_serialises_concurrent_units(self) -> None:
        """Two simultaneous first heartbeats from one machine make one worker (guarantee 7)."""
        repo = self.make_repository(id_factory=sequential_ids())
        try:
            slow = _SlowReads(repo)
            errors: list[BaseException] = []
            start = threading.Barrier(2)

            def send() -> None:
                try:
                    start.wait(timeout=10)
                    apply_event(
                        Event.heartbeat("10.0.0.1", hostname="alpha"),
                        EPOCH,
                        cast(WorkerRepository, slow),
                    )
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                finally:
                    self.end_thread(repo)

            threads = [threading.Thread(target=send) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors, f"a concurrent apply_event failed: {errors[0]!r}"
            rows = repo.all_workers()
            assert len(rows) == 1, (
                "atomically() does not serialise: two simultaneous first heartbeats from one "
                f"machine created {len(rows)} workers ({sorted(w.id for w in rows)})"
            )
        finally:
            self.close_repository(repo)

    # -- decisions -----------------------------------------------------------------------------

    def test_decisions_agree_with_reference_over_fleet_streams(self) -> None:
        @self._settings()
        @given(stream=fleet_streams(), policy=st.sampled_from(self.policies))
        def run(stream: Any, policy: Policy) -> None:
            reference = new_reference()
            repo = self.make_repository(id_factory=sequential_ids())
            try:
                for i, element in enumerate(stream.events, 1):
                    apply_to_both(
                        repo, reference, element.event, element.now, policy, step=f"request {i}: "
                    )
                end = (stream.events[-1].now if stream.events else EPOCH) + timedelta(minutes=10)
                assert_same_state(repo, reference, step="end of stream: ")
                sweep_both(repo, reference, end, policy)
                assert_same_state(repo, reference, step="after a sweep: ")
            finally:
                self.close_repository(repo)

        run()

    def test_state_machine_agrees_with_reference(self) -> None:
        factory: Any = lambda: RepositoryStateMachine(  # noqa: E731
            self._machine_repository, self.close_repository
        )
        run_state_machine_as_test(
            factory,
            settings=self.state_machine_settings,
        )

    def _machine_repository(self) -> R:
        return self.make_repository(id_factory=sequential_ids())


class _SlowReads:
    """Delegates to a repository, pausing before each write to widen any race: without a
    serialisable unit, the other thread's reads run while this one waits to write."""

    def __init__(self, inner: WorkerRepository) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, writes: Iterable[Write]) -> None:
        ops = list(writes)
        time.sleep(0.05)
        self._inner.write(ops)

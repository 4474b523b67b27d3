"""The kit's reference, :class:`workermatch.testing.ReferenceRepository`: a scan of every row.

It is the protocol written out plainly, so the kit can test the library's own indexed
:class:`~workermatch.InMemoryWorkerRepository` like any other store: a bug in the in-memory
store can no longer hide by being compared with itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import pytest

import workermatch as wm
from _stores import state as rows
from _times import T0
from workermatch.testing import ReferenceRepository, RepositoryContract


def a_worker(wid: str, ip: str = "10.0.0.1", **fields: object) -> wm.Worker:
    times: dict[str, object] = {"created_at": T0, "last_seen": T0}
    return wm.Worker(id=wid, ip=ip, **{**times, **fields})


def test_the_reference_satisfies_the_protocol_and_numbers_new_workers() -> None:
    repo = ReferenceRepository()
    assert isinstance(repo, wm.WorkerRepository)
    assert [repo.new_worker_id() for _ in range(3)] == ["w1", "w2", "w3"]
    other = ReferenceRepository(id_factory=wm.sequential_ids("kit"))
    assert other.new_worker_id() == "kit1"


def test_the_reference_answers_each_query_as_the_protocol_words_it() -> None:
    repo = ReferenceRepository()
    before, at = T0 - timedelta(seconds=1), T0
    repo.write(
        [
            wm.InsertWorker(worker=a_worker("live", status=wm.WorkerStatus.RUNNING)),
            wm.InsertWorker(worker=a_worker("flagged", stale=True)),
            wm.InsertWorker(worker=a_worker("merged", merged_into="live")),
            wm.InsertWorker(
                worker=a_worker(
                    "old", "10.0.0.2", hostname="box", created_at=before, last_seen=before
                )
            ),
            wm.InsertAssignment(
                assignment=wm.Assignment(
                    id="A1", status=wm.AssignmentStatus.RUNNING, worker_id="live"
                )
            ),
            wm.InsertAssignment(
                assignment=wm.Assignment(
                    id="A2", status=wm.AssignmentStatus.COMPLETED, worker_id="live"
                )
            ),
        ]
    )

    def ids(found: Sequence[wm.Worker]) -> list[str]:
        return sorted(w.id for w in found)

    assert ids(repo.live_workers_by_ip("10.0.0.1", at)) == ["live"]
    assert ids(repo.live_workers_by_hostname("box", before)) == ["old"]
    assert ids(repo.live_workers_by_hostname("box", at)) == []
    assert ids(repo.recent_running_workers(T0, T0)) == ["live"]
    assert ids(repo.stale_running_workers("10.0.0.1", None, T0 + timedelta(seconds=1))) == ["live"]
    assert [a.id for a in repo.running_assignments_of(["live", "old"])] == ["A1"]
    assert ids(repo.unflagged_workers_seen_before(at)) == ["old"]
    assert repo.get_worker("merged") == a_worker("merged", merged_into="live")
    assert repo.get_worker("nobody") is None
    with pytest.raises(wm.InvalidInput):
        repo.get_worker(" padded ")


@pytest.mark.parametrize(
    "bad",
    [
        wm.InsertWorker(worker=a_worker("w1")),
        wm.UpdateWorker(worker=a_worker("nobody")),
        wm.InsertAssignment(assignment=wm.Assignment(id="A1")),
        wm.UpdateAssignment(assignment=wm.Assignment(id="A9")),
        wm.InsertAssignment(assignment=wm.Assignment(id="A2", worker_id="nobody")),
    ],
    ids=["worker-twice", "update-missing-worker", "assignment-twice", "update-missing", "holder"],
)
def test_the_reference_writes_a_batch_all_or_nothing(bad: wm.Write) -> None:
    repo = ReferenceRepository()
    repo.write(
        [
            wm.InsertWorker(worker=a_worker("w1")),
            wm.InsertAssignment(assignment=wm.Assignment(id="A1", worker_id="w1")),
        ]
    )
    before = rows(repo)
    with pytest.raises(wm.StorageError):
        repo.write([wm.InsertWorker(worker=a_worker("w2")), bad])
    assert rows(repo) == before


def test_a_batch_may_refer_to_a_worker_it_inserts() -> None:
    repo = ReferenceRepository()
    repo.write(
        [
            wm.InsertWorker(worker=a_worker("w1")),
            wm.InsertAssignment(assignment=wm.Assignment(id="A1", worker_id="w1")),
        ]
    )
    assert rows(repo)[1] == [wm.Assignment(id="A1", worker_id="w1")]


def test_atomically_undoes_the_writes_of_a_failing_unit_nested_or_not() -> None:
    repo = ReferenceRepository()
    repo.write([wm.InsertWorker(worker=a_worker("w1"))])
    before = rows(repo)

    def fail_after(write: wm.Write) -> Callable[[], None]:
        def unit() -> None:
            repo.write([write])
            raise LookupError("the unit failed")

        return unit

    with pytest.raises(LookupError):
        repo.atomically(fail_after(wm.UpdateWorker(worker=a_worker("w1", "10.0.0.9"))))
    assert rows(repo) == before

    def outer() -> str:
        repo.write([wm.InsertWorker(worker=a_worker("w2"))])
        with pytest.raises(LookupError):
            repo.atomically(fail_after(wm.InsertWorker(worker=a_worker("w3"))))
        return "kept"

    assert repo.atomically(outer) == "kept"
    assert [w.id for w in rows(repo)[0]] == ["w1", "w2"]


class MemoryContract(RepositoryContract[wm.InMemoryWorkerRepository]):
    """The kit on the in-memory store; not collected (its name does not start with Test)."""

    max_examples = 100

    def make_repository(
        self, *, id_factory: Callable[[], str] | None
    ) -> wm.InMemoryWorkerRepository:
        return wm.InMemoryWorkerRepository(id_factory=id_factory)

    def seed(
        self,
        repository: wm.InMemoryWorkerRepository,
        workers: Sequence[wm.Worker],
        assignments: Sequence[wm.Assignment],
    ) -> None:
        repository.write(
            [wm.InsertWorker(worker=w) for w in workers]
            + [wm.InsertAssignment(assignment=a) for a in assignments]
        )


def test_the_kit_catches_a_bug_in_the_in_memory_store_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in InMemoryWorkerRepository (every instance of it) fails the kit: the reference is
    not an in-memory store, so the bug has no twin on the other side of the comparison."""

    def ignores_staleness(
        self: wm.InMemoryWorkerRepository, ip: str, seen_since: datetime
    ) -> list[wm.Worker]:
        return [w for w in self.all_workers() if w.ip == ip and w.last_seen >= seen_since]

    monkeypatch.setattr(wm.InMemoryWorkerRepository, "live_workers_by_ip", ignores_staleness)
    with pytest.raises(AssertionError, match="returned rows the reference does not"):
        MemoryContract().test_live_workers_by_ip_agrees_with_reference()

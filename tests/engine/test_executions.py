"""The execution limits: what one process counts, and what several count together.

The shared counts are tested across real processes (``python -c`` children attached to
the same file), driven in lock step: each command goes to every child at once and the
test reads every answer before the next, so the children hold what they started while
the test adds it up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.executions import ExecutionCounts, LocalExecutionCounts, SharedExecutionCounts

# A child: attaches as process ``index`` and obeys one command a line, answering each
# with one line.  The alarm turns a test that stops talking to it into its exit.
CHILD = """
import signal, sys
from engine.executions import SharedExecutionCounts

signal.alarm(120)
counts = SharedExecutionCounts.attach(sys.argv[1], int(sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    command, *numbers = line.split()
    if command == "start":
        customer, per_customer, per_server, attempts = map(int, numbers)
        got = 0
        for _ in range(attempts):
            got += counts.try_start(customer, per_customer, per_server) is None
        print(got, flush=True)
    elif command == "finish":
        customer, times = map(int, numbers)
        for _ in range(times):
            counts.finish(customer)
        print("done", flush=True)
counts.close()
"""


class Children:
    """Processes 1..n of a shared counts file, each a child running :data:`CHILD`."""

    def __init__(self, path: Path, n: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path), str(index)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            for index in range(1, n + 1)
        ]
        assert self.answers() == ["ready"] * n

    def answers(self, procs: list[subprocess.Popen[str]] | None = None) -> list[str]:
        lines = []
        for proc in procs or self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"child {proc.pid} ended (exit status {proc.poll()})"
            lines.append(line.strip())
        return lines

    def tell(self, line: str, *, only: int | None = None) -> list[str]:
        """Send ``line`` to every child (or to process ``only``) and return the answers,
        once every child has answered."""
        procs = self.procs if only is None else [self.procs[only - 1]]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        return self.answers(procs)

    def start(self, customer: int, per_customer: int, per_server: int, attempts: int) -> list[int]:
        """How many executions each child got of ``attempts`` tried at the same time."""
        return [int(a) for a in self.tell(f"start {customer} {per_customer} {per_server} {attempts}")]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def shared_path(tmp_path: Path) -> Iterator[Path]:
    path = SharedExecutionCounts.create(tmp_path, 5)
    yield path
    path.unlink()


@pytest.fixture
def primary(shared_path: Path) -> Iterator[SharedExecutionCounts]:
    with SharedExecutionCounts.attach(shared_path, 0) as counts:
        yield counts


@pytest.fixture
def children(shared_path: Path) -> Iterator[Children]:
    group = Children(shared_path, 4)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture(params=["local", "shared"])
def counts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExecutionCounts]:
    if request.param == "local":
        yield LocalExecutionCounts()
        return
    path = SharedExecutionCounts.create(tmp_path, 3)
    with SharedExecutionCounts.attach(path, 1) as shared:
        yield shared


# -- the semantics, in one process (both kinds) ----------------------------------------------
def test_a_customer_gets_its_limit_and_no_more(counts: ExecutionCounts) -> None:
    assert [counts.try_start(7, 5, 1000) for _ in range(6)] == [None] * 5 + ["customer"]
    assert counts.running_for(7) == 5 and counts.running() == 5
    counts.finish(7)
    assert counts.running_for(7) == 4 and counts.running() == 4
    assert counts.try_start(7, 5, 1000) is None
    assert counts.try_start(7, 5, 1000) == "customer"


def test_the_server_limit_is_checked_first_and_refusals_count_nothing(counts: ExecutionCounts) -> None:
    assert counts.try_start(1, 5, 3) is None
    assert counts.try_start(2, 5, 3) is None
    assert counts.try_start(2, 5, 3) is None
    # Customer 2 is at neither limit's edge, customer 1 at the server's: "server" wins.
    assert counts.try_start(1, 1, 3) == "server"
    assert counts.try_start(3, 5, 3) == "server"
    assert counts.running() == 3
    assert (counts.running_for(1), counts.running_for(2), counts.running_for(3)) == (1, 2, 0)
    counts.finish(2)
    assert counts.try_start(3, 5, 3) is None
    assert counts.running_for(3) == 1 and counts.running() == 3


def test_two_customers_do_not_share_a_limit(counts: ExecutionCounts) -> None:
    for _ in range(5):
        assert counts.try_start(11, 5, 1000) is None
    assert counts.try_start(11, 5, 1000) == "customer"
    assert [counts.try_start(12, 5, 1000) for _ in range(6)] == [None] * 5 + ["customer"]
    for _ in range(5):
        counts.finish(11)
    assert counts.running_for(11) == 0 and counts.running_for(12) == 5
    assert counts.try_start(12, 5, 1000) == "customer"


def test_a_customer_with_nothing_running_is_forgotten() -> None:
    # The local counts hold an entry only while a customer has executions, so a server
    # seeing a million customers over its life does not keep a million entries.
    counts = LocalExecutionCounts()
    for customer in range(1000):
        assert counts.try_start(customer, 5, 1000) is None
        counts.finish(customer)
    assert counts.running() == 0
    assert not counts._by_customer


# -- the shared file --------------------------------------------------------------------------
def test_customer_ids_past_the_table_share_a_slot_and_so_a_stricter_limit(tmp_path: Path) -> None:
    path = SharedExecutionCounts.create(tmp_path, 2, slots=8)
    with SharedExecutionCounts.attach(path, 0) as first, SharedExecutionCounts.attach(path, 1) as second:
        for _ in range(3):
            assert first.try_start(3, 5, 1000) is None
        assert second.try_start(11, 5, 1000) is None  # 11 % 8 == 3
        assert second.try_start(11, 5, 1000) is None
        assert first.try_start(3, 5, 1000) == "customer"
        assert first.running_for(11) == 5 and first.running_for(4) == 0
        second.clear_process(0)  # a row of part pages: written over with zeros
        assert second.running_for(3) == 2 and second.running() == 2


def test_attach_refuses_a_wrong_index_or_file(shared_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="index 5"):
        SharedExecutionCounts.attach(shared_path, 5)
    with pytest.raises(ValueError, match="index -1"):
        SharedExecutionCounts.attach(shared_path, -1)
    other = tmp_path / "other"
    other.write_bytes(bytes(8192))
    with pytest.raises(ValueError, match="not an execution counts file"):
        SharedExecutionCounts.attach(other, 0)
    with open(shared_path, "r+b") as handle:
        handle.truncate(os.path.getsize(shared_path) - 4096)
    with pytest.raises(ValueError, match="wrong size"):
        SharedExecutionCounts.attach(shared_path, 0)


def test_each_create_makes_a_new_sparse_file(tmp_path: Path) -> None:
    first = SharedExecutionCounts.create(tmp_path, 64)
    second = SharedExecutionCounts.create(tmp_path, 64)
    assert first != second
    # 64 rows of a million counters, of which only the header takes room on disk.
    assert first.stat().st_size > 256 * 2**20
    assert first.stat().st_blocks * 512 <= 64 * 1024


def test_close_unmaps_and_can_be_repeated(shared_path: Path) -> None:
    counts = SharedExecutionCounts.attach(shared_path, 2)
    assert counts.try_start(1, 5, 10) is None
    counts.close()
    counts.close()
    with SharedExecutionCounts.attach(shared_path, 0) as primary:
        assert primary.running_for(1) == 1  # what a closed process counted stays counted


# -- across processes -------------------------------------------------------------------------
def test_five_per_customer_across_four_processes(primary: SharedExecutionCounts, children: Children) -> None:
    # Four processes race for one customer's five places, again and again; each holds
    # what it got until every one has tried, and all together never hold more than five.
    for _ in range(100):
        got = children.start(42, 5, 1000, 3)
        assert sum(got) == 5, got
        assert primary.running_for(42) == 5 and primary.running() == 5
        assert primary.try_start(42, 5, 1000) == "customer"
        for index, held in enumerate(got, start=1):
            children.tell(f"finish 42 {held}", only=index)
        assert primary.running_for(42) == 0 and primary.running() == 0


def test_limits_are_exact_under_contention(primary: SharedExecutionCounts, children: Children) -> None:
    # Every process tries for every place at once: a check that is not one step with
    # the increment, or counts not seen by the others, give out more than there are.
    for _ in range(10):
        customer = children.start(42, 5000, 100_000, 5000)
        assert sum(customer) == 5000, customer
        assert primary.running_for(42) == 5000
        server = children.start(43, 100_000, 8000, 5000)
        assert sum(server) == 3000, server
        assert primary.running() == 8000
        for index in range(1, 5):
            children.tell(f"finish 42 {customer[index - 1]}", only=index)
            children.tell(f"finish 43 {server[index - 1]}", only=index)
        assert primary.running() == 0


def test_the_server_limit_counts_every_process(primary: SharedExecutionCounts, children: Children) -> None:
    # Each child starts executions for its own customer: 6 in all, however split.
    got = [int(a) for a in [children.tell(f"start {100 + i} 5 6 5", only=i)[0] for i in range(1, 5)]]
    assert got == [5, 1, 0, 0]
    assert primary.running() == 6
    assert primary.try_start(1, 5, 6) == "server"
    children.tell("finish 101 2", only=1)
    assert primary.try_start(1, 5, 6) is None
    assert primary.try_start(1, 5, 6) is None
    assert primary.try_start(1, 5, 6) == "server"
    assert primary.running() == 6 and primary.running_for(101) == 3


def test_finish_in_one_process_makes_room_in_another(primary: SharedExecutionCounts, children: Children) -> None:
    assert children.tell("start 42 5 1000 5", only=1) == ["5"]
    assert children.tell("start 42 5 1000 1", only=2) == ["0"]
    children.tell("finish 42 2", only=1)
    assert children.tell("start 42 5 1000 5", only=2) == ["2"]
    assert primary.running_for(42) == 5


def test_a_dead_process_executions_stop_counting_once_cleared(
    primary: SharedExecutionCounts, children: Children
) -> None:
    assert children.tell("start 42 5 1000 3", only=2) == ["3"]
    assert children.tell("start 42 5 1000 1", only=3) == ["1"]
    assert children.tell("start 7 5 1000 2", only=3) == ["2"]
    dead = children.procs[1]
    dead.send_signal(signal.SIGKILL)
    dead.wait(timeout=30)
    # Until the primary hears of it, what it held still counts.
    assert primary.running_for(42) == 4 and primary.running() == 6
    primary.clear_process(2)
    assert primary.running_for(42) == 1 and primary.running_for(7) == 2 and primary.running() == 3
    assert children.tell("start 42 5 1000 5", only=1) == ["4"]
    # The same index, started again, begins from nothing.
    with SharedExecutionCounts.attach(primary.path, 2) as again:
        assert again.try_start(42, 5, 1000) == "customer"
        assert again.try_start(8, 5, 1000) is None
        again.finish(8)
    assert primary.running() == 7


def test_finish_after_a_clear_makes_no_room(primary: SharedExecutionCounts, shared_path: Path) -> None:
    # A process taken for dead but still finishing must not push its row below zero,
    # which would let the others exceed the limit.
    with SharedExecutionCounts.attach(shared_path, 1) as late:
        assert late.try_start(42, 5, 10) is None
        primary.clear_process(1)
        late.finish(42)
    for _ in range(5):
        assert primary.try_start(42, 5, 10) is None
    assert primary.try_start(42, 5, 10) == "customer"
    assert primary.running() == 5

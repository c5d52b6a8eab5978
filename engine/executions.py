"""How many dialplan executions are running: per customer and in all, against the limits.

The runner asks :meth:`ExecutionCounts.try_start` before each execution and calls
:meth:`ExecutionCounts.finish` after it.  Checking and counting are one step, so two
calls racing for a customer's last place cannot both get it.

- :class:`LocalExecutionCounts` counts in this process's memory: the server with one SIP
  process uses it, and it costs what a dict update costs.
- :class:`SharedExecutionCounts` counts for several server processes together (the
  ``sip_processes`` mode): the API promises 5 concurrent executions per customer in all,
  not 5 per process.  The counters live in a file every process maps; the layout, the
  locking and what happens when a process dies are described on the class.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

#: Which limit refused an execution: ``"server"`` (every process's executions together)
#: or ``"customer"`` (that customer's).
Refusal = Literal["server", "customer"]


class ExecutionCounts(Protocol):
    """The running executions, and the one place that lets a new one start."""

    def try_start(self, customer_id: int, per_customer: int, per_server: int) -> Refusal | None:
        """Count a new execution of ``customer_id`` and return None if both limits allow
        it; otherwise count nothing and name the limit that refused it (the server's is
        checked first)."""
        ...

    def finish(self, customer_id: int) -> None:
        """Forget one execution of ``customer_id`` that :meth:`try_start` counted."""
        ...

    def running(self) -> int:
        """Executions running now, in all processes."""
        ...

    def running_for(self, customer_id: int) -> int:
        """Executions of ``customer_id`` running now, in all processes."""
        ...


class LocalExecutionCounts:
    """The counts of one process: an int and a dict of the customers with executions.

    On the path of every call, so it stays what the runner did inline: no lock (the trio
    thread is the only user) and no entry for a customer with nothing running."""

    __slots__ = ("_by_customer", "_total")

    def __init__(self) -> None:
        self._total = 0
        self._by_customer: dict[int, int] = {}

    def try_start(self, customer_id: int, per_customer: int, per_server: int) -> Refusal | None:
        if self._total >= per_server:
            return "server"
        running = self._by_customer.get(customer_id, 0)
        if running >= per_customer:
            return "customer"
        self._total += 1
        self._by_customer[customer_id] = running + 1
        return None

    def finish(self, customer_id: int) -> None:
        self._total -= 1
        left = self._by_customer.get(customer_id, 1) - 1
        if left:
            self._by_customer[customer_id] = left
        else:
            self._by_customer.pop(customer_id, None)

    def running(self) -> int:
        return self._total

    def running_for(self, customer_id: int) -> int:
        return self._by_customer.get(customer_id, 0)


_MAGIC = 0x44535843  # "DSXC"
_VERSION = 1
#: Header fields (int32 each): magic, version, processes, slots, where the rows begin.
_MAGIC_AT, _VERSION_AT, _PROCESSES_AT, _SLOTS_AT, _ROWS_AT = range(5)
#: The per-process totals follow the header fields, one int32 per process.
_TOTALS_AT = 16
_INT = 4
#: Customer slots in each process's row: 4 MiB of int32 per process, sparse on disk.
SLOTS = 1 << 20


class SharedExecutionCounts:
    """Execution counts shared by the server's processes through a memory-mapped file.

    The file holds a header, each process's total, and one row per process index with a
    counter per customer slot (int32, native byte order: the file never leaves the
    machine).  A process only ever writes its own row and total, so when it dies the
    primary zeroes them with :meth:`clear_process` and its executions stop counting;
    nothing else has to be repaired.

    A customer's slot is ``customer_id % slots`` (:data:`SLOTS` by default).  Below a
    million customer ids every customer has its own; past that two customers may share
    one and then share its limit too, which makes the limit stricter, never looser.

    :meth:`try_start` sums the customer's slot and the totals over every row and
    increments its own under ``flock`` on the file: each process opens the file itself,
    so the lock excludes the other processes, and the kernel drops it with a process that
    dies holding it (a lock word inside the mapping would stay taken).  The lock is held
    for a few microseconds, so the trio thread waits on it without yielding.  One
    instance serves one thread: ``flock`` does not exclude users of the same open file.

    :meth:`finish` takes no lock: it decrements a counter only this process writes, and
    a concurrent reader sees it before or after, never a count above the real one.
    """

    __slots__ = (
        "_counts", "_fd", "_map", "_own_row", "_own_total", "_processes", "_rows", "_slots", "path",
    )

    def __init__(self, path: Path, fd: int, index: int) -> None:
        """Use :meth:`attach`; this maps ``fd``, an open descriptor of the file, and
        closes it if the file is not one :meth:`create` made."""
        self.path = path
        self._fd = fd
        try:
            self._map = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        try:
            self._counts = memoryview(self._map).cast("i")
        except BaseException:
            self._map.close()
            os.close(fd)
            raise
        counts = self._counts
        problem = None
        if counts.itemsize != _INT:
            problem = "the counters need a 4-byte C int"
        elif len(counts) < _TOTALS_AT or counts[_MAGIC_AT] != _MAGIC or counts[_VERSION_AT] != _VERSION:
            problem = f"{path} is not an execution counts file"
        else:
            self._processes = counts[_PROCESSES_AT]
            self._slots = counts[_SLOTS_AT]
            self._rows = counts[_ROWS_AT]
            if len(counts) != self._rows + self._processes * self._slots:
                problem = f"{path} has the wrong size for its header"
            elif not 0 <= index < self._processes:
                problem = f"process index {index} is not below {self._processes}"
        if problem is not None:
            self.close()
            raise ValueError(problem)
        self._own_total = _TOTALS_AT + index
        self._own_row = self._rows + index * self._slots

    @classmethod
    def create(cls, directory: str | os.PathLike[str], processes: int, *, slots: int = SLOTS) -> Path:
        """Make a zeroed counts file for ``processes`` processes in ``directory`` (the data
        dir's ``run/``, or ``/dev/shm``) and return its path, for each process to
        :meth:`attach`.  The primary calls it before starting the others, and removes
        the file when the server stops.

        The name is new each time: processes of an earlier run still mapping an older
        file keep their own, and two servers sharing a directory never share counts."""
        if processes < 1 or slots < 1:
            raise ValueError("need at least one process and one slot")
        header = _TOTALS_AT + processes
        # Rows start on a page boundary so a dead process's row can be dropped from the
        # file whole (MADV_REMOVE) when it is also a whole number of pages.
        rows = -(-header * _INT // mmap.PAGESIZE) * mmap.PAGESIZE // _INT
        fd, name = tempfile.mkstemp(prefix="dialspell-executions-", dir=directory)
        try:
            # Sparse: the pages of customers that never ran anything are never allocated.
            os.ftruncate(fd, (rows + processes * slots) * _INT)
            fields = (_MAGIC, _VERSION, processes, slots, rows)
            os.pwrite(fd, b"".join(v.to_bytes(_INT, sys.byteorder) for v in fields), 0)
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        os.close(fd)
        return Path(name)

    @classmethod
    def attach(cls, path: str | os.PathLike[str], index: int) -> SharedExecutionCounts:
        """Map the file :meth:`create` made, as the process with ``index`` (0 is the
        primary): its executions are counted in row ``index``."""
        return cls(Path(path), os.open(path, os.O_RDWR | os.O_CLOEXEC), index)

    # -- the ExecutionCounts protocol -------------------------------------------------------
    def try_start(self, customer_id: int, per_customer: int, per_server: int) -> Refusal | None:
        counts = self._counts
        slot = customer_id % self._slots
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if sum(counts[_TOTALS_AT : _TOTALS_AT + self._processes]) >= per_server:
                return "server"
            # The slot in every row: rows are the end of the file, one stride apart.
            if sum(counts[self._rows + slot :: self._slots]) >= per_customer:
                return "customer"
            counts[self._own_total] += 1
            counts[self._own_row + slot] += 1
            return None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def finish(self, customer_id: int) -> None:
        counts = self._counts
        at = self._own_row + customer_id % self._slots
        # Never below zero: a row the primary cleared for a process it took for dead
        # must not make room that was never taken.
        if counts[at] > 0:
            counts[at] -= 1
        if counts[self._own_total] > 0:
            counts[self._own_total] -= 1

    def running(self) -> int:
        return sum(self._counts[_TOTALS_AT : _TOTALS_AT + self._processes])

    def running_for(self, customer_id: int) -> int:
        return sum(self._counts[self._rows + customer_id % self._slots :: self._slots])

    # -- the primary's duties ---------------------------------------------------------------
    def clear_process(self, index: int) -> None:
        """Zero the counts of process ``index``, which has died: the executions it was
        running are gone.  Call it before starting a process with that index again."""
        if not 0 <= index < self._processes:
            raise ValueError(f"process index {index} is not below {self._processes}")
        start = (self._rows + index * self._slots) * _INT
        length = self._slots * _INT
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._counts[_TOTALS_AT + index] = 0
            try:
                # Punch the row out of the file: it reads as zeros and is sparse again.
                if start % mmap.PAGESIZE or length % mmap.PAGESIZE:
                    raise OSError("not whole pages")
                self._map.madvise(mmap.MADV_REMOVE, start, length)
            except OSError:  # a file system without holes, or a row of part pages
                self._map[start : start + length] = bytes(length)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the file and close it (the counts of this process stay in it)."""
        if self._fd < 0:
            return
        self._counts.release()
        self._map.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> SharedExecutionCounts:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


"""CPU time and resident memory of a process, read from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # Fields after the command name, which may itself contain spaces and parentheses.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return utime / _TICKS, stime / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, in seconds."""
    user, system = cpu_times(pid)
    return user + system


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (e.g. nginx's workers, whose CPU is not their master's)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look at every process
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read()
            except OSError:  # gone meanwhile
                continue
            if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:  # field 4 of proc(5): ppid
                found.append(int(entry))
    return found


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True, slots=True)
class Sample:
    """CPU seconds (total and system) of each watched process at one monotonic instant."""

    cpu: dict[str, float]
    system: dict[str, float]
    wall: float

    @classmethod
    def take(cls, pids: dict[str, int], wall: float) -> Sample:
        times = {name: cpu_times(pid) for name, pid in pids.items()}
        return cls(
            {name: u + s for name, (u, s) in times.items()},
            {name: s for name, (_, s) in times.items()},
            wall,
        )

    def cpu_since(self, before: Sample) -> dict[str, float]:
        """CPU seconds used by each process between ``before`` and this sample."""
        return {name: self.cpu[name] - before.cpu.get(name, 0.0) for name in self.cpu}

    def system_since(self, before: Sample) -> dict[str, float]:
        """Kernel CPU seconds used by each process between ``before`` and this sample."""
        return {name: self.system[name] - before.system.get(name, 0.0) for name in self.system}

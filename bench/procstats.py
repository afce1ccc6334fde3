"""CPU seconds and peak memory per process group, sampled with psutil across a benchmark phase."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

#: Classifies a process (psutil.Process) into a group name, or None to inherit its parent's group.
Classifier = Callable[[psutil.Process], str | None]


@dataclass
class _Seen:
    group: str
    cpu0: float  # own user+system when first seen (0 for processes born during the phase)
    cpu: float = 0.0
    children: float = 0.0  # user+system of reaped children (rolls up when they exit)
    children0: float = 0.0
    parent: int | None = None
    gone: bool = False


def default_classifier(known: dict[int, str]) -> Classifier:
    """Groups by known pids first (Orthanc source/target), then by process name / command line."""

    def classify(proc: psutil.Process) -> str | None:
        if proc.pid in known:
            return known[proc.pid]
        try:
            name = proc.name()
            cmd = " ".join(proc.cmdline()[:4])
        except (psutil.Error, OSError):
            return None
        if name in ("storescu", "storescp"):
            return "dcmtk"
        if name == "Orthanc":
            return "orthanc_other"
        if "LocalExecutor" in cmd or "task supervisor" in cmd or "task runner" in cmd:
            return "airflow_task_workers"
        services = ("scheduler", "api-server", "dag-processor", "triggerer", "api_server", "dag_processor")
        if "airflow" in cmd and any(c in cmd for c in services):
            return "airflow_services"
        if "airflow" in cmd:
            return "airflow_cli"
        return None

    return classify


@dataclass
class ProcessSampler:
    """Samples this process and all descendants every ``interval`` s until :meth:`stop`.

    CPU per group = the growth of each process's own CPU time while it was watched, plus the CPU
    of children it reaped (so processes that lived shorter than one interval still count, under
    their parent's group). Peak RSS per group is the largest sum of RSS seen at one sample.
    """

    classify: Classifier
    interval: float = 0.2
    extra_pids: list[int] = field(default_factory=list)
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _peak: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _ru0: float = 0.0
    wall_s: float = 0.0
    rusage_cpu_s: float = 0.0

    def start(self) -> ProcessSampler:
        self._t0 = time.perf_counter()
        self._ru0 = _rusage_total()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, name="ProcessSampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _processes(self) -> list[psutil.Process]:
        me = psutil.Process(os.getpid())
        procs = [me]
        try:
            procs += me.children(recursive=True)
        except psutil.Error:
            pass
        for pid in self.extra_pids:
            try:
                extra = psutil.Process(pid)
                procs += [extra, *extra.children(recursive=True)]
            except psutil.Error:
                pass
        return procs

    def _sample(self, first: bool = False) -> None:
        rss: dict[str, int] = {}
        alive: set[int] = set()
        for proc in self._processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info().rss
                    ppid = proc.ppid()
            except (psutil.Error, OSError):
                continue
            own = times.user + times.system
            kids = times.children_user + times.children_system
            seen = self._seen.get(proc.pid)
            if seen is None:
                group = self.classify(proc) or (self._seen[ppid].group if ppid in self._seen else "engine")
                seen = self._seen[proc.pid] = _Seen(
                    group=group, cpu0=own if first else 0.0, children0=kids if first else 0.0, parent=ppid
                )
            seen.cpu, seen.children = own, kids
            alive.add(proc.pid)
            rss[seen.group] = rss.get(seen.group, 0) + mem
        for pid, seen in self._seen.items():
            if pid not in alive:
                seen.gone = True
        for group, total in rss.items():
            self._peak[group] = max(self._peak.get(group, 0), total)

    def stop(self) -> dict[str, Any]:
        """Stop sampling; returns ``{cpu_s: {group: s}, peak_rss_mb: {group: MB}, wall_s, rusage_cpu_s}``."""
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.wall_s = time.perf_counter() - self._t0
        self.rusage_cpu_s = _rusage_total() - self._ru0
        cpu: dict[str, float] = {}
        root = os.getpid()
        for pid, seen in self._seen.items():
            if pid == root:
                # Our direct children are all watched and grouped on their own (Orthanc, dcmtk, Airflow).
                value = seen.cpu - seen.cpu0
            elif seen.gone and seen.parent in self._seen and seen.parent != root:
                # Reaped by a watched parent: its whole CPU is in that parent's children time.
                value = 0.0
            else:
                value = seen.cpu - seen.cpu0 + seen.children - seen.children0
            cpu[seen.group] = cpu.get(seen.group, 0.0) + max(0.0, value)
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": {g: round(v, 3) for g, v in sorted(cpu.items())},
            "cpu_s_total": round(sum(cpu.values()), 3),
            "rusage_cpu_s": round(self.rusage_cpu_s, 3),
            "peak_rss_mb": {g: round(v / 2**20, 1) for g, v in sorted(self._peak.items())},
        }


def _rusage_total() -> float:
    """CPU of this process plus every child it reaped so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

"""Runs whose process died: noticed, marked failed, and their decode slots freed.

A run killed with ``kill -9`` (or whose machine restarted) never writes its end: it
stays STARTED and keeps its slot in the ``gpu`` pool, and every later decode waits for
that slot. Each run is tagged with the host and process id of the process that runs it
(``CatalogResource`` does it when the run starts); on that same host, a process id
that no longer exists means the run is dead.

- ``release_dead_runs`` marks such runs failed and frees their slots; the CLI calls it
  before it runs anything (it runs jobs in its own process, with no daemon about).
- ``DecodingRunLauncher`` (the run launcher of the instance ``decoding-assets``
  writes) answers Dagster's run monitoring with the same test, so under
  ``decoding-assets ui`` the daemon marks a killed run failed within its poll interval
  and frees its slots ``free_slots_after_run_end_seconds`` later.

A run on another host, or one with no process recorded, is never judged from here.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pkgutil
import socket
from pathlib import Path

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

RUN_PROCESS_TAG = "decoding-assets/run-process"
_IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

# One decode on the CPU keeps about 2 cores busy (XLA's threads) and peaks under 2 GiB
# (1.8 GiB for the benchmarks' 2-D open field at 2 cm bins; benchmarks/README.md); count
# 2 cores and 4 GiB each so that larger environments fit too.
_CORES_PER_CPU_DECODE = 2
_BYTES_PER_CPU_DECODE = 4 * 2**30


def record_run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Tag ``run`` with this host and the id of the process running it: the one that
    wrote its start (a step may run in a child process of it)."""
    if RUN_PROCESS_TAG in run.tags:
        return
    starts = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = starts[0].event_log_entry.dagster_event if starts else None
    pid = event.pid if event is not None and event.pid is not None else os.getpid()
    instance.add_run_tags(run.run_id, {RUN_PROCESS_TAG: json.dumps({"host": socket.gethostname(), "pid": pid})})


def why_dead(run: dg.DagsterRun) -> str | None:
    """Why ``run``'s process is known to be gone, or None: alive, on another host, or
    not recorded. A process id reused since reads as alive: a dead run may be missed,
    a live one is never called dead."""
    try:
        recorded = json.loads(run.tags[RUN_PROCESS_TAG])
        host, pid = str(recorded["host"]), int(recorded["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if host != socket.gethostname() or _process_exists(pid):
        return None
    return (
        f"The process running run {run.run_id} of {run.job_name} (pid {pid} on {host}) is gone: it was killed, or "
        "its machine restarted. The run is marked failed and its concurrency slots (the gpu pool's decode slot) "
        "released; materialize again to redo what it did not finish."
    )


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child that its parent has not reaped yet still has its pid, but will
    never run again (Linux; elsewhere it counts as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every STARTING or STARTED run whose process is gone (``why_dead``)
    and free the concurrency slots it holds. Returns their run ids."""
    released = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_IN_PROGRESS)):
        reason = why_dead(record.dagster_run)
        if reason is None:
            continue
        # read again: the process may have ended the run just before it exited
        run = instance.get_run_by_id(record.dagster_run.run_id)
        if run is None or run.status not in _IN_PROGRESS:
            continue
        instance.report_run_failed(run, reason)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


class DecodingRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, which also tells run monitoring when a run's process
    is gone (``why_dead``), so that the daemon marks it failed."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        reason = why_dead(run)
        if reason is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, reason)
        # monitoring fails a run on anything but RUNNING: what cannot be judged from here is left alone
        return CheckRunHealthResult(WorkerStatus.RUNNING, "alive, on another host, or no process recorded")


def default_decode_slots() -> int:
    """How many decodes may run at once here: one per GPU that JAX can use, else as
    many as the cores and memory hold (``DECODING_ASSETS_DEVICE=cpu``: the latter)."""
    if not os.environ.get("DECODING_ASSETS_DEVICE", "").startswith("cpu") and (gpus := _gpu_count()):
        return gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores // _CORES_PER_CPU_DECODE, memory // _BYTES_PER_CPU_DECODE))


def _gpu_count() -> int:
    """NVIDIA GPUs JAX would use, found without starting JAX (which would take GPU
    memory in this process): none without a JAX CUDA plugin; else those
    ``CUDA_VISIBLE_DEVICES`` names (up to the first invalid one, as CUDA reads it), or
    every ``/dev/nvidiaN``."""
    plugins = importlib.util.find_spec("jax_plugins")
    locations = plugins.submodule_search_locations if plugins is not None else None
    if not locations or not any(m.name.startswith("xla_cuda") for m in pkgutil.iter_modules(locations)):
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = (name.strip() for name in visible.split(","))
        return sum(1 for _ in itertools.takewhile(lambda name: name and not name.startswith("-"), names))
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def set_decode_slots(instance: dg.DagsterInstance, slots: int | None) -> int:
    """Set the ``gpu`` pool's limit through the instance (changing the pools'
    ``default_limit`` in dagster.yaml once the pool exists makes its runs fail).
    ``slots`` given: that limit. None: ``default_decode_slots()``, unless the pool has a
    limit set already (by an earlier ``slots``, or ``dagster instance concurrency
    set``). Writes only a change; returns the limit in force."""
    from .decoding import GPU_POOL  # imported here: this module is loaded with the instance, and that one with JAX

    storage = instance.event_log_storage
    current = next((p for p in storage.get_pool_limits() if p.name == GPU_POOL), None)
    if slots is None and current is not None and not current.from_default:
        return current.limit
    wanted = default_decode_slots() if slots is None else slots
    if current is None or current.from_default or current.limit != wanted:
        storage.set_concurrency_slots(GPU_POOL, wanted)
    return wanted

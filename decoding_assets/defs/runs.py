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

Decodes running at once on one machine each take a GPU of their own (``claim_gpu``): a
lock file per GPU under the home folder, held with ``flock`` for the step, which the
kernel releases when the holding process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import json
import os
import pkgutil
import socket
import time
from collections.abc import Iterator, Sequence
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
    if not os.environ.get("DECODING_ASSETS_DEVICE", "").startswith("cpu") and (gpus := len(gpu_names())):
        return gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores // _CORES_PER_CPU_DECODE, memory // _BYTES_PER_CPU_DECODE))


def gpu_names() -> list[str]:
    """The NVIDIA GPUs JAX would use, in JAX's order, found without starting JAX (which
    would take GPU memory in this process): none without a JAX CUDA plugin; else the
    ``CUDA_VISIBLE_DEVICES`` names (up to the first invalid one, as CUDA reads it), or
    one index per ``/dev/nvidiaN``."""
    plugins = importlib.util.find_spec("jax_plugins")
    locations = plugins.submodule_search_locations if plugins is not None else None
    if not locations or not any(m.name.startswith("xla_cuda") for m in pkgutil.iter_modules(locations)):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = (name.strip() for name in visible.split(","))
        return list(itertools.takewhile(lambda name: name and not name.startswith("-"), names))
    return [str(i) for i in range(len(list(Path("/dev").glob("nvidia[0-9]*"))))]


def try_claim_device(folder: Path, devices: Sequence[str]) -> tuple[str, int] | None:
    """The first of ``devices`` no other open lock holds, with the open, locked file
    descriptor that holds it (close it to release); None when every one is held.

    Lock files are ``<host>-<device>.lock`` in ``folder``: a home shared by several
    machines keeps each machine's GPUs apart. Each holds the holder's pid, for messages."""
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for device in devices:
        fd = os.open(folder / f"{host}-{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return device, fd
    return None


def device_holders(folder: Path, devices: Sequence[str]) -> dict[str, str]:
    """Who last held each device's lock (its pid, as written), for messages."""
    host = socket.gethostname()
    held = {}
    for device in devices:
        with contextlib.suppress(OSError):
            held[device] = (folder / f"{host}-{device}.lock").read_text() or "?"
    return held


@contextlib.contextmanager
def claim_device(folder: Path, devices: Sequence[str], on_wait=None, poll_s: float = 1.0) -> Iterator[str]:
    """Hold one of ``devices`` while the block runs, waiting while every one is held
    (``on_wait(message)`` is told once). The lock goes with the process: a decode killed
    with SIGKILL never keeps its device."""
    told = False
    while (claimed := try_claim_device(folder, devices)) is None:
        if on_wait is not None and not told:
            holders = ", ".join(f"{d} (pid {pid})" for d, pid in device_holders(folder, devices).items())
            on_wait(f"Every device is held by another decode: {holders}; waiting for one to be free.")
            told = True
        time.sleep(poll_s)
    device, fd = claimed
    try:
        yield device
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim_gpu(folder: Path, on_wait=None) -> Iterator[str | None]:
    """A GPU of this machine for one decode step, as JAX names it (``gpu:N``), or None
    where JAX has no GPU (the CPU decodes, as many at once as the ``gpu`` pool allows).

    In a process whose JAX has not started yet, only the claimed GPU is made visible
    (``CUDA_VISIBLE_DEVICES``): JAX would otherwise reserve memory on every GPU it sees,
    those other decodes use included."""
    from jax._src import xla_bridge  # no public way to ask whether JAX's backends have started

    names = gpu_names()
    if not names:
        yield None
        return
    with claim_device(folder, names, on_wait) as name:
        if xla_bridge.backends_are_initialized():
            yield f"gpu:{names.index(name)}"
            return
        os.environ["CUDA_VISIBLE_DEVICES"] = name
        yield "gpu:0"


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

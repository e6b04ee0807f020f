"""Where a run's steps execute, chosen by ``DECODING_ASSETS_EXECUTOR`` when the definitions load.

- ``multiprocess`` (default): each step in a process on the machine running the run.
- ``celery``: each step is a Celery task (dagster-celery) taken by a worker listening on the
  step's queue: decodes go to ``gpu`` (their op tag ``dagster-celery/queue``), the rest to
  ``dagster``. The broker is ``DECODING_ASSETS_CELERY_BROKER`` (default
  ``redis://127.0.0.1:6379/0``), the results backend ``DECODING_ASSETS_CELERY_BACKEND``
  (default: the broker). Workers (on SLURM nodes, lab servers) run this module's app::

      celery --app decoding_assets.defs.executors:worker_app worker --queues dagster,gpu --concurrency 1

  A step whose worker is lost (killed, out of memory, its node gone) is not waited for:
  the run marks it failed, naming the step and the worker, and retries it on any worker of
  its queue (``LOST_WORKER_RETRIES``). A worker counts as lost when its pool process dies,
  or when it has not answered a ping for ``DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S``
  seconds (default 60) while it holds the step.
- ``k8s``: each step is a Kubernetes Job (dagster-k8s ``k8s_job_executor``); the decode's op
  tags ask for a GPU, and the run launcher's settings (namespace, secrets, volumes) apply.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

EXECUTOR_VARIABLE = "DECODING_ASSETS_EXECUTOR"
EXECUTORS = ("multiprocess", "celery", "k8s")
BROKER_VARIABLE = "DECODING_ASSETS_CELERY_BROKER"
BACKEND_VARIABLE = "DECODING_ASSETS_CELERY_BACKEND"
WORKER_TIMEOUT_VARIABLE = "DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_WORKER_TIMEOUT_S = 60.0
# retries of a step after its worker was lost (each retry of the step counts, whatever its cause)
LOST_WORKER_RETRIES = 2
_PING_EVERY_S = 5.0
# step pods get these from the run pod when set there; the catalog URL (which may hold a
# password) and credentials come from the run launcher's secrets instead
_PASSED_TO_STEP_PODS = (
    "DECODING_ASSETS_OUTPUTS", "DECODING_ASSETS_CONFIG", "DECODING_ASSETS_DEVICE", "DECODING_ASSETS_HOME",
    "DECODING_ASSETS_EXECUTOR", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
)  # fmt: skip
_CLUSTER_EXTRA = "pip install 'decoding-assets[cluster]'"


def executor_choice() -> str:
    """``DECODING_ASSETS_EXECUTOR``, checked: one of ``EXECUTORS``."""
    value = os.environ.get(EXECUTOR_VARIABLE, "").strip() or "multiprocess"
    if value not in EXECUTORS:
        raise ValueError(
            f"{EXECUTOR_VARIABLE} is {value!r}: it must be one of {', '.join(EXECUTORS)} (multiprocess: steps run "
            "on this machine; celery: on Celery workers, e.g. SLURM jobs; k8s: in Kubernetes pods). Unset it for "
            "multiprocess."
        )
    return value


def worker_timeout_s() -> float:
    """``DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S``: how long a worker holding a step may
    leave pings unanswered before the step is retried elsewhere."""
    value = os.environ.get(WORKER_TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_WORKER_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(
            f"{WORKER_TIMEOUT_VARIABLE} is {value!r}: it must be a number of seconds above 0 (a busy worker "
            f"answers within a second or two); unset it for {DEFAULT_WORKER_TIMEOUT_S:.0f}."
        )
    return seconds


def celery_settings() -> dict[str, Any]:
    """The Celery executor's configuration, which the workers' app shares: the broker and
    backend from the environment, and settings that keep a lost worker's step from
    hanging the run."""
    broker = os.environ.get(BROKER_VARIABLE, "").strip() or DEFAULT_BROKER
    return {
        "broker": broker,
        "backend": os.environ.get(BACKEND_VARIABLE, "").strip() or broker,
        "config_source": {
            # the run reads which worker (and process) holds each step from its STARTED state
            "task_track_started": True,
            # and, should the step's process die before the run saw it start, the worker
            # from its result (which then names the worker that stored it)
            "result_extended": True,
            # a worker takes a step only when a process of its is free, so no step waits
            # behind a long decode while another worker idles (nor is lost with it)
            "worker_disable_prefetch": True,
            # acknowledged when it starts: a lost worker's step is retried by the run, never
            # redelivered by the broker to run a second time (late acks would, an hour later)
            "task_acks_late": False,
            "broker_connection_retry_on_startup": True,
        },
    }


def celery_app() -> Celery:
    """The Celery app of the workers: dagster-celery's step task, configured as the
    executor is (same broker, backend and settings)."""
    try:
        from dagster_celery.executor import CeleryExecutor
        from dagster_celery.make_app import make_app
        from dagster_celery.tasks import create_task
    except ImportError as error:
        raise ImportError(f"Celery workers need dagster-celery: {_CLUSTER_EXTRA} ({error})") from error
    from dagster._core.execution.retries import RetryMode

    app = make_app(CeleryExecutor(retries=RetryMode.ENABLED, **celery_settings()).app_args())
    create_task(app)
    return app


def __getattr__(name: str) -> Any:
    # ``celery --app decoding_assets.defs.executors:worker_app``: the app is made only for a
    # worker, so loading the definitions never needs Celery
    if name == "worker_app":
        return celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_executor() -> dg.ExecutorDefinition | None:
    """The executor ``DECODING_ASSETS_EXECUTOR`` names; None for Dagster's default
    (multiprocess, or in-process for ``execute_in_process``)."""
    choice = executor_choice()
    if choice == "celery":
        return _celery_executor()
    if choice == "k8s":
        return _k8s_executor()
    return None


def _k8s_executor() -> dg.ExecutorDefinition:
    """Each step in its own Kubernetes Job, in the run's image (the chart's
    ``DAGSTER_CURRENT_IMAGE``) with the run pod's settings."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ImportError(f"{EXECUTOR_VARIABLE}=k8s needs dagster-k8s: {_CLUSTER_EXTRA} ({error})") from error
    config: dict[str, Any] = {"env_vars": [name for name in _PASSED_TO_STEP_PODS if os.environ.get(name)]}
    if image := os.environ.get("DAGSTER_CURRENT_IMAGE"):
        config["job_image"] = image
    return k8s_job_executor.configured(config, name="k8s")


def _celery_executor() -> dg.ExecutorDefinition:
    try:
        from dagster_celery.executor import CELERY_CONFIG
    except ImportError as error:
        raise ImportError(f"{EXECUTOR_VARIABLE}=celery needs dagster-celery: {_CLUSTER_EXTRA} ({error})") from error
    timeout_s = worker_timeout_s()

    @dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=dg.multiple_process_executor_requirements())
    def watched_celery(init_context: dg.InitExecutorContext) -> dg.Executor:
        from dagster._core.execution.retries import RetryMode

        config = dict(init_context.executor_config)
        return WatchedCeleryExecutor(RetryMode.from_config(config.pop("retries")), config, timeout_s)

    return watched_celery.configured(celery_settings(), name="celery")


class WatchedCeleryExecutor(dg.Executor):
    """dagster-celery's execution loop, whose steps are watched for lost workers
    (``_WatchedTask``). The loop reads ``retries`` and ``app_args()`` of its executor."""

    def __init__(self, retries, settings: dict[str, Any], timeout_s: float) -> None:
        self._retries, self._settings, self.timeout_s = retries, settings, timeout_s

    @property
    def retries(self):
        return self._retries

    def app_args(self) -> dict[str, Any]:
        from dagster_celery.executor import CeleryExecutor

        return CeleryExecutor(retries=self._retries, **self._settings).app_args()

    def execute(self, plan_context, execution_plan):
        from dagster_celery.core_execution_loop import core_celery_execution_loop

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=self._submit)

    def _submit(self, app, plan_context, step, queue, priority, known_state) -> "_WatchedTask":
        from dagster_celery.executor import _submit_task

        result = _submit_task(app, plan_context, step, queue, priority, known_state)
        attempt = known_state.get_retry_state().get_attempt_count(step.key) if known_state else 0
        return _WatchedTask(result, app, plan_context.for_step(step), queue, attempt, self.timeout_s)


class _WatchedTask:
    """A step's Celery task, as dagster-celery's execution loop polls it (``ready``, ``get``,
    ``revoke``), that also ends when the worker holding it is lost: a worker whose process
    running the step died (Celery's ``WorkerLostError``), or that stops answering pings (the
    whole worker killed, its node gone: the task, acknowledged, would never finish). The step
    then fails in the run's event log, naming the worker, and is retried (an up-for-retry
    event: the loop submits it again) while ``LOST_WORKER_RETRIES`` allows."""

    def __init__(self, result: AsyncResult, app: Celery, step_context, queue: str, attempt: int, timeout_s: float):
        self._result, self._app, self._step_context = result, app, step_context
        self._queue, self._attempt, self._timeout_s = queue, attempt, timeout_s
        self._worker: str | None = None
        self._pid: int | None = None
        self._next_ping = 0.0
        self._silent_since: float | None = None
        self._lost: str | None = None

    def ready(self) -> bool:
        if self._lost is not None or self._result.ready():
            return True
        self._lost = self._silence()
        if self._lost is not None:
            self._result.revoke(terminate=True)  # should the worker come back, it stops the step
        return self._lost is not None

    def get(self) -> list[str]:
        if self._lost is None:
            from celery.exceptions import WorkerLostError

            try:
                return self._result.get()
            except WorkerLostError as error:
                self._worker = self._worker or self._result.worker
                self._lost = f"its process{self._pid_text()} died: {str(error).rstrip('.')}"
        return [dg.serialize_value(self._lost_event())]

    def revoke(self) -> None:
        self._result.revoke()

    def _pid_text(self) -> str:
        return f" (pid {self._pid})" if self._pid is not None else ""

    def _silence(self) -> str | None:
        """Why the worker holding the step is taken for lost, or None. A step still queued
        (no worker holds it) is never lost: it waits for a worker of its queue."""
        if self._result.state == "STARTED" and isinstance(self._result.info, dict):
            self._worker, self._pid = self._result.info.get("hostname"), self._result.info.get("pid")
        now = time.monotonic()
        if self._worker is None or now < self._next_ping:
            return None
        self._next_ping = now + _PING_EVERY_S
        if self._app.control.ping(destination=[self._worker], timeout=1.0):
            self._silent_since = None
            return None
        self._silent_since = self._silent_since or now
        if now - self._silent_since < self._timeout_s:
            return None
        return f"it has not answered for {now - self._silent_since:.0f} s (killed, or its node lost)"

    def _lost_event(self) -> dg.DagsterEvent:
        from dagster._core.execution.plan.objects import StepFailureData, StepRetryData
        from dagster._utils.error import SerializableErrorInfo

        step_key = self._step_context.step.key
        retry = self._attempt < LOST_WORKER_RETRIES
        queue = f"a worker of queue {self._queue!r}"
        then = (
            f"retrying it (attempt {self._attempt + 2} of {LOST_WORKER_RETRIES + 1}) on {queue}"
            if retry
            else f"no retries left ({LOST_WORKER_RETRIES}): materialize again once {queue} runs"
        )
        message = f"Step {step_key!r} was lost with Celery worker {self._worker or '(unknown)'}: {self._lost}; {then}."
        error = SerializableErrorInfo(message=message, stack=[], cls_name="LostCeleryWorker")
        if retry:
            return dg.DagsterEvent.step_retry_event(self._step_context, StepRetryData(error=error))
        return dg.DagsterEvent.step_failure_event(
            self._step_context, StepFailureData(error=error, user_failure_data=None), message=message
        )

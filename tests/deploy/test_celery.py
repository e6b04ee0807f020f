"""Steps on Celery workers, as on a SLURM cluster: a real Redis, two real workers (one on
the ``dagster`` queue only, one on ``dagster,gpu`` like a GPU node's), runs launched as
``dagster job execute`` processes. Steps land on their queue's workers, decodes are
registered, and a worker SIGKILLed mid-step is named in the run and its step retried to
success on the other worker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml

from catalog import Catalog
from decoding_assets.defs.automation import plan_sync
from decoding_assets.pipeline import DEFAULT_CONFIG, load_config

from ..redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("celery")]

BIN = Path(sys.executable).parent
SESSION = "tiny.nwb"
# one interval each: three decode runs, each one step on the gpu queue
DECODES = {
    "trial_1": ("all_tetrodes", "epoch0_block1_trial1"),
    "trial_2": ("all_tetrodes", "epoch0_block1_trial2"),
    "raw_trial_1": ("raw_tetrodes", "epoch2_block1_trial1"),
}
HOST = socket.gethostname()
CPU_WORKER, GPU_WORKER = f"cpu@{HOST}", f"gpu@{HOST}"
QUEUES = {CPU_WORKER: "dagster", GPU_WORKER: "dagster,gpu"}
# a wait that is never reached when things work: it only keeps a broken run from hanging the suite
RUN_LIMIT_S = 600


@dataclass
class Cluster:
    """Redis, the workers (name -> process, each in its own process group), and the
    environment every process of the cluster shares."""

    env: dict[str, str]
    folder: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, name: str, queues: str) -> None:
        log = open(self.folder / f"{name.partition('@')[0]}.log", "ab")
        command = [str(BIN / "celery"), "--app", "decoding_assets.defs.executors:worker_app", "worker",
                   "--queues", queues, "--concurrency", "1", "--hostname", name, "--loglevel", "INFO"]  # fmt: skip
        self.workers[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_for_worker(name)

    def _wait_for_worker(self, name: str) -> None:
        from decoding_assets.defs.executors import celery_app

        app = celery_app()
        deadline = time.monotonic() + RUN_LIMIT_S
        while not app.control.ping(destination=[name], timeout=1.0):
            assert self.workers[name].poll() is None, f"worker {name} exited: {self.log(name)}"
            assert time.monotonic() < deadline, f"worker {name} never answered: {self.log(name)}"

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and its pool processes at once, as when its node is lost."""
        process = self.workers.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def kill_pool_process(self, name: str) -> None:
        """SIGKILL the process running the worker's step, as the OOM killer does; the
        worker itself lives on and starts a new one."""
        import psutil

        (child,) = psutil.Process(self.workers[name].pid).children()
        child.kill()

    def stop(self) -> None:
        for name in list(self.workers):
            process = self.workers.pop(name)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, name: str) -> str:
        path = self.folder / f"{name.partition('@')[0]}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=RUN_LIMIT_S)

    def launch(self, job: str, *options: str) -> subprocess.Popen:
        tags = json.dumps({"dagster/partition": SESSION}) if job != "store_parameter_sets" else "{}"
        command = [str(BIN / "dagster"), "job", "execute", "-m", "decoding_assets.definitions", "-j", job,
                   "--tags", tags, *options]  # fmt: skip
        return subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, job: str) -> dg.DagsterRun:
        process = self.launch(job)
        output, _ = process.communicate(timeout=RUN_LIMIT_S)
        return self.finished_run(job, output)

    def finished_run(self, job: str, output: str) -> dg.DagsterRun:
        with self.instance() as instance:
            run = instance.get_runs(dg.RunsFilter(job_name=job), limit=1)[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS, (
            f"run of {job}: {run.status}\n{output[-4000:]}\n" + "\n".join(self.log(n) for n in self.workers)
        )
        return run

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])


def _write_config(path: Path) -> Path:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["decoding_params"] = {name: {"place_bin_size": 6.0} for name in config["decoding_params"]}  # quick decodes
    template = next(iter(config["decodings"].values()))
    config["decodings"] = {
        name: {**template, "waveform_features_group_name": group, "decoding_intervals": interval}
        for name, (group, interval) in DECODES.items()
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_nwb(tmp_path_factory) -> Path:
    """The demo session, short: run epochs of 30 and 20 s with 10 s trials, 4 tetrodes recorded raw."""
    from decoding_assets.nwb import write_demo_session

    path = tmp_path_factory.mktemp("nwb") / SESSION
    return write_demo_session(path, n_tetrodes=4, epoch_durations=(30.0, 5.0, 20.0), trial_duration=10.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, new_catalog, tiny_nwb):
    if find_redis_server() is None:
        pytest.skip("redis-server not found: install the redis-server package (.ci/run does)")
    folder = tmp_path_factory.mktemp("cluster")
    place = new_catalog()
    with RedisServer(folder) as redis:
        env = {
            **os.environ, **place.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DECODING_ASSETS_HOME": str(folder / "home"), "DAGSTER_HOME": str(folder / "home" / "dagster"),
            "DECODING_ASSETS_CONFIG": str(_write_config(folder / "decoding_configs.yaml")),
            "DECODING_ASSETS_EXECUTOR": "celery", "DECODING_ASSETS_CELERY_BROKER": redis.url,
            "DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S": "10", "JAX_PLATFORMS": "cpu",
        }  # fmt: skip
        env.pop("DECODING_ASSETS_CELERY_BACKEND", None)
        cluster = Cluster(env, folder)
        saved = {k: os.environ.get(k) for k in ("DECODING_ASSETS_CELERY_BROKER", "DECODING_ASSETS_CELERY_BACKEND")}
        os.environ["DECODING_ASSETS_CELERY_BROKER"] = redis.url  # this process pings the workers
        os.environ.pop("DECODING_ASSETS_CELERY_BACKEND", None)
        try:
            registered = cluster.command(str(BIN / "decoding-assets"), "register", str(tiny_nwb))
            assert registered.returncode == 0, registered.stderr
            for name, queues in QUEUES.items():
                cluster.start_worker(name, queues)
            yield cluster
        finally:
            cluster.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _step_events(instance: dg.DagsterInstance, run_id: str, step_key: str) -> list[dg.EventLogEntry]:
    return [e for e in instance.all_logs(run_id) if e.step_key == step_key]


def _workers_of(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[str]]:
    """Which Celery worker took each step (each attempt), from dagster-celery's engine
    event "Executing steps ... in celery worker"."""
    taken: dict[str, list[str]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        metadata = entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            taken.setdefault(entry.step_key, []).append(metadata["Celery worker"].value)
    return taken


def _queues_of(instance: dg.DagsterInstance, run_id: str) -> dict[str, set[str]]:
    queues: dict[str, set[str]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        message = entry.dagster_event.message or ""
        if message.startswith("Submitting celery task for step"):
            queues.setdefault(entry.step_key, set()).add(message.rsplit('"', 2)[-2])
    return queues


def _wait_for_step_start(
    cluster: Cluster, job: str, step_key: str, process: subprocess.Popen, earlier: frozenset[str] = frozenset()
) -> str:
    """The worker running ``step_key``, once it has started, in a run of ``job`` that is
    not one of the ``earlier`` ones."""
    deadline = time.monotonic() + RUN_LIMIT_S
    with cluster.instance() as instance:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the run of {job} ended before {step_key} started: {process.stdout.read()}"
            runs = instance.get_runs(dg.RunsFilter(job_name=job), limit=1)
            if runs and runs[0].run_id not in earlier:
                events = _step_events(instance, runs[0].run_id, step_key)
                started = any(e.dagster_event.event_type == dg.DagsterEventType.STEP_START for e in events)
                workers = _workers_of(instance, runs[0].run_id).get(step_key)
                if started and workers:
                    return workers[0]
            time.sleep(0.2)
    raise AssertionError(f"{step_key} of {job} never started")


def test_steps_land_on_their_queues_and_a_killed_worker_is_retried(cluster):
    cluster.run("store_parameter_sets")
    # the session job; its longest step (waveform features from the raw recording) loses its worker mid-step
    process = cluster.launch("process_sessions")
    doomed = _wait_for_step_start(cluster, "process_sessions", "waveform_features", process)
    cluster.kill_worker(doomed)
    survivor = next(name for name in QUEUES if name != doomed)
    output, _ = process.communicate(timeout=RUN_LIMIT_S)
    run = cluster.finished_run("process_sessions", output)
    with cluster.instance() as instance:
        events = _step_events(instance, run.run_id, "waveform_features")
        lifecycle = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_UP_FOR_RETRY,
                     dg.DagsterEventType.STEP_RESTARTED, dg.DagsterEventType.STEP_SUCCESS)  # fmt: skip
        # started on the doomed worker, failed naming it, retried, and succeeded on the survivor
        happened = [e.dagster_event.event_type for e in events if e.dagster_event.event_type in lifecycle]
        assert happened == list(lifecycle)
        retry = next(e for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)
        said = retry.dagster_event.step_retry_data.error.message
        assert f"'waveform_features' was lost with Celery worker {doomed}" in said
        assert "attempt 2 of 3" in said and "queue 'dagster'" in said
        assert _workers_of(instance, run.run_id)["waveform_features"] == [doomed, survivor]
        assert set(_workers_of(instance, run.run_id)) == {
            "nwb_sessions", "interval_lists", "waveform_features", "position", "waveform_features_groups",
            "position_groups",
        }  # fmt: skip
        assert set().union(*_queues_of(instance, run.run_id).values()) == {"dagster"}
    catalog = Catalog(cluster.env["DECODING_ASSETS_CATALOG"], cluster.env["DECODING_ASSETS_OUTPUTS"])
    assert len(catalog.extracted_features(SESSION)) == 4  # the raw tetrodes, extracted by the retry

    # the killed worker comes back (as SLURM would start its job again), and the decodings get their partitions
    cluster.start_worker(doomed, QUEUES[doomed])
    with cluster.instance() as instance:
        config = load_config(cluster.env["DECODING_ASSETS_CONFIG"])
        plan_sync(instance, catalog, config, sessions=[SESSION]).apply(instance)
    # launched together: the decodes queue for the one GPU worker
    launched = {name: cluster.launch(f"decode_{name}") for name in DECODES}
    for name, process in launched.items():
        output, _ = process.communicate(timeout=RUN_LIMIT_S)
        run = cluster.finished_run(f"decode_{name}", output)
        with cluster.instance() as instance:
            step = f"decoding__{name}"
            assert _queues_of(instance, run.run_id) == {step: {"gpu"}}
            assert _workers_of(instance, run.run_id) == {step: [GPU_WORKER]}
    outputs = catalog.outputs(SESSION)
    assert sorted(outputs["decoding_interval"]) == sorted(interval for _, interval in DECODES.values())
    assert all(Path(p).is_file() for p in outputs["path"])

    # the process running a decode dies (the OOM killer), its worker lives on: the step is retried on it
    with cluster.instance() as instance:
        earlier = frozenset(r.run_id for r in instance.get_runs(dg.RunsFilter(job_name="decode_trial_1")))
    redecode = cluster.folder / "redecode.yaml"
    redecode.write_text(yaml.safe_dump({"ops": {"decoding__trial_1": {"config": {"redecode": True}}}}))
    process = cluster.launch("decode_trial_1", "-c", str(redecode))
    worker = _wait_for_step_start(cluster, "decode_trial_1", "decoding__trial_1", process, earlier)
    cluster.kill_pool_process(worker)
    output, _ = process.communicate(timeout=RUN_LIMIT_S)
    run = cluster.finished_run("decode_trial_1", output)
    with cluster.instance() as instance:
        events = _step_events(instance, run.run_id, "decoding__trial_1")
        retry = next(e for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY)
        said = retry.dagster_event.step_retry_data.error.message
        # the worker is named even when its process died before the run saw the step start
        # (then from the step's result); the pid only when the run saw it start
        assert f"lost with Celery worker {GPU_WORKER}: its process" in said and "signal 9 (SIGKILL)" in said
        assert "queue 'gpu'" in said
        assert _workers_of(instance, run.run_id) == {"decoding__trial_1": [GPU_WORKER, GPU_WORKER]}


@pytest.mark.parametrize("choice, name", [
    ("", "multi_or_in_process_executor"), ("multiprocess", "multi_or_in_process_executor"), ("celery", "celery"),
    ("k8s", "k8s"),
])  # fmt: skip
def test_the_executor_is_chosen_by_the_environment(monkeypatch, choice, name):
    from decoding_assets.definitions import build_definitions

    monkeypatch.setenv("DECODING_ASSETS_EXECUTOR", choice)
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    jobs = ("process_sessions", "decode_contfrag_run")
    assert {defs.resolve_job_def(job).executor_def.name for job in jobs} == {name}


@pytest.mark.parametrize("variable, value, said", [
    ("DECODING_ASSETS_EXECUTOR", "slurm", "is 'slurm': it must be one of multiprocess, celery, k8s"),
    ("DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S", "soon", "is 'soon': it must be a number of seconds above 0"),
    ("DECODING_ASSETS_CELERY_WORKER_TIMEOUT_S", "-5", "is '-5': it must be a number of seconds above 0"),
])  # fmt: skip
def test_a_bad_executor_setting_is_named(monkeypatch, variable, value, said):
    from decoding_assets.definitions import build_definitions

    monkeypatch.setenv("DECODING_ASSETS_EXECUTOR", "celery")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=re.escape(f"{variable} {said}")):
        build_definitions()


def test_workers_share_the_executors_broker_and_settings(monkeypatch):
    from decoding_assets.defs import executors

    monkeypatch.setenv("DECODING_ASSETS_CELERY_BROKER", "redis://broker.lab:6379/3")
    monkeypatch.delenv("DECODING_ASSETS_CELERY_BACKEND", raising=False)
    app = executors.worker_app  # what `celery --app decoding_assets.defs.executors:worker_app` loads
    assert app.conf.broker_url == app.conf.result_backend == "redis://broker.lab:6379/3"
    assert app.conf.task_track_started and app.conf.worker_disable_prefetch and not app.conf.task_acks_late
    assert app.conf.result_extended
    assert "execute_plan" in app.tasks

"""The Kubernetes deployment, checked without a cluster: the run pod and the step pods are built with dagster-k8s's
own code from deploy/helm/values.yaml (as the dagster/dagster chart hands it to the run launcher and to the runs it
launches) and our real Definitions, and we look where Kubernetes reads the GPU request, the image, the volume and the
environment. The Dockerfile is checked against the repository and pyproject.toml."""

import json
import re
import shlex
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs, ExecuteStepArgs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_k8s_job_name, get_user_defined_k8s_config

ROOT = Path(__file__).resolve().parents[2]
VALUES_FILE = ROOT / "deploy" / "helm" / "values.yaml"
RELEASE = "decoding"  # `helm install decoding dagster/dagster --namespace decoding` (docs/kubernetes.md)
NAMESPACE = "decoding"
FULLNAME = "decoding-dagster"  # the chart's fullname: release name, then the chart's name
GPU = "nvidia.com/gpu"

# Keys the dagster/dagster chart declares for the parts of its values we set: its values.schema.json
# (helm/dagster/values.schema.json in dagster-io/dagster) and its `concurrency` model
# (helm/dagster/schema/schema/charts/dagster/subschema/concurrency.py). A key it does not declare is ignored by the
# chart without a word: a typo here would silently drop a setting.
CHART_KEYS = {
    "": {
        "global", "dagster-user-deployments", "dagsterWebserver", "postgresql", "generatePostgresqlPasswordSecret",
        "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
        "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
        "telemetry", "serviceAccount", "retention", "concurrency", "additionalInstanceConfig",
    },
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "dagster-user-deployments.deployments[]": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "deploymentNamespace",
        "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
        "labels", "volumeMounts", "volumes", "schedulerName", "initContainers", "sidecarContainers",
    },
    "dagster-user-deployments.deployments[].image": {"repository", "tag", "pullPolicy"},
    "runLauncher": {"type", "config"},
    "runLauncher.config": {"celeryK8sRunLauncher", "k8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig",
    },
    "runLauncher.config.k8sRunLauncher.runK8sConfig": {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata",
    },
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "concurrency.runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "concurrency.runs.tagConcurrencyLimits[]": {"key", "value", "limit"},
    "dagsterDaemon": {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
        "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
        "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "annotations",
        "runMonitoring", "runRetries", "sensors", "schedules", "schedulerName", "volumeMounts", "volumes",
        "initContainerResources",
    },
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    # free-form in the schema: these are the names the chart's dagster.yaml template reads
    "dagsterDaemon.runMonitoring": {
        "enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts", "pollIntervalSeconds",
        "freeSlotsAfterRunEndSeconds",
    },
    "dagsterDaemon.sensors": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "dagsterDaemon.schedules": {"useThreads", "numWorkers", "numSubmitWorkers"},
    "postgresql": {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword", "postgresqlDatabase",
        "postgresqlParams", "postgresqlScheme", "service",
    },
    "telemetry": {"enabled"},
}


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


@pytest.fixture(scope="module")
def deployment(values) -> dict:
    (only,) = values["dagster-user-deployments"]["deployments"]
    return only


@pytest.fixture(scope="module")
def definitions(deployment, tmp_path_factory) -> dg.Definitions:
    """Our real Definitions, loaded as the code server loads them in the cluster (DECODING_ASSETS_EXECUTOR=k8s)."""
    from decoding_assets.definitions import build_definitions

    with pytest.MonkeyPatch.context() as env:
        for name, value in pod_environment(deployment).items():
            env.setenv(name, value)
        env.setenv("DECODING_ASSETS_HOME", str(tmp_path_factory.mktemp("home")))  # the volume is not here
        return build_definitions()


def pod_environment(deployment: dict) -> dict:
    """The plain environment the chart gives the code server and the run pods (the Secret's value is not here)."""
    return {e["name"]: e["value"] for e in deployment["env"] if "value" in e} | {
        "DAGSTER_CURRENT_IMAGE": image_of(deployment)
    }


@pytest.fixture(scope="module")
def launcher(values, tmp_path_factory) -> K8sRunLauncher:
    """The run launcher of the instance the chart writes, from runLauncher.config.k8sRunLauncher. In the cluster it
    reads the pod's service account; here a kubeconfig naming a server nobody calls."""
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "users": [{"name": "lab", "user": {"token": "unused"}}],
    }))  # fmt: skip
    config = chart_run_launcher_config(values) | {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    checked = process_config(K8sRunLauncher.config_type(), config)
    assert checked.success, checked.errors
    return K8sRunLauncher(**checked.value)


def chart_run_launcher_config(values: dict) -> dict:
    """The run_launcher config in the chart's dagster.yaml: its k8sRunLauncher values in snake case, with what the
    chart adds (its service account, instance ConfigMap, PostgreSQL password Secret and pipeline-env ConfigMap)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s_config = {re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), k): v for k, v in k8s["runK8sConfig"].items()}
    return {
        "dagster_home": values["global"]["dagsterHome"],
        "service_account_name": FULLNAME,
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": f"{FULLNAME}-postgresql-secret",
        "job_namespace": k8s["jobNamespace"] or NAMESPACE,
        "load_incluster_config": k8s["loadInclusterConfig"],
        "image_pull_policy": k8s["imagePullPolicy"],
        "env_config_maps": [f"{FULLNAME}-pipeline-env", *(c["name"] for c in k8s["envConfigMaps"])],
        "env_secrets": [s["name"] for s in k8s["envSecrets"]],
        "env_vars": k8s["envVars"],
        "volume_mounts": k8s["volumeMounts"],
        "volumes": k8s["volumes"],
        "fail_pod_on_run_failure": k8s["failPodOnRunFailure"],
        "run_k8s_config": run_k8s_config,
    }


def chart_container_context(deployment: dict) -> dict:
    """What the chart's user deployment hands to the runs it launches (DAGSTER_CONTAINER_CONTEXT on the code server,
    with includeConfigInLaunchedRuns): its env list, secrets, volumes and mounts, namespace and service account."""
    assert deployment["includeConfigInLaunchedRuns"]["enabled"]
    return {"k8s": {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{FULLNAME}-{deployment['name']}-user-env"],
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "volume_mounts": deployment["volumeMounts"],
        "volumes": deployment["volumes"],
        "resources": deployment["resources"],
        "namespace": NAMESPACE,
        "service_account_name": f"{FULLNAME}-user-deployments",
        "env": deployment["env"],
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }}  # fmt: skip


def image_of(deployment: dict) -> str:
    """DAGSTER_CURRENT_IMAGE on the code server: the image runs and steps are launched with."""
    return f"{deployment['image']['repository']}:{deployment['image']['tag']}"


def run_of(deployment: dict, job_name: str) -> dg.DagsterRun:
    origin = JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(
            executable_path="/opt/venv/bin/python",
            code_pointer=ModuleCodePointer("decoding_assets.definitions", "defs", working_directory=None),
            container_image=image_of(deployment),
            entry_point=["dagster"],
            container_context=json.loads(json.dumps(chart_container_context(deployment))),
        ),
    )
    return dg.DagsterRun(job_name=job_name, run_id="0d1e2c3b-4a59-6877-8695-a4b3c2d1e0f9", job_code_origin=origin)


def run_pod(launcher: K8sRunLauncher, run: dg.DagsterRun) -> dict:
    """The run worker's Job as K8sRunLauncher.launch_run builds it."""
    context = launcher.get_container_context_for_run(run)
    origin = run.job_code_origin
    job_config = context.get_k8s_job_config(job_image=origin.repository_origin.container_image, run_launcher=launcher)
    args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=None).get_command_args()
    name = f"dagster-run-{run.run_id}"
    job = construct_dagster_k8s_job(
        job_config=job_config, args=args, job_name=name, pod_name=name, component="run_worker",
        user_defined_k8s_config=context.run_k8s_config, labels={"dagster/job": run.job_name},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}],
    )  # fmt: skip
    return job.to_dict()


def executor_container_context(executor_config: dict) -> K8sContainerContext:
    """What k8s_job_executor takes from its own configuration (ours: decoding_assets/defs/executors.py)."""
    return K8sContainerContext(
        image_pull_policy=executor_config.get("image_pull_policy"),
        env_config_maps=executor_config.get("env_config_maps"),
        env_secrets=executor_config.get("env_secrets"),
        env_vars=executor_config.get("env_vars"),
        volume_mounts=executor_config.get("volume_mounts"),
        volumes=executor_config.get("volumes"),
        namespace=executor_config.get("job_namespace"),
        resources=executor_config.get("resources"),
    )


def step_pod(
    launcher: K8sRunLauncher, run: dg.DagsterRun, step_key: str, step_tags: dict, job: dg.JobDefinition, deployment
) -> dict:
    """A step's Job as dagster-k8s's k8s_job_executor builds it in the run pod: the run launcher's and the code
    location's configuration (never the run's tags), the executor's own, then the step's `dagster-k8s/config` tag."""
    resolved = job.executor_def.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    executor_config = resolved.value["config"]
    with pytest.MonkeyPatch.context() as env:  # the executor reads env_vars' values from the run pod's environment
        for name, value in pod_environment(deployment).items():
            env.setenv(name, value)
        context = (
            K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
            .merge(executor_container_context(executor_config))
            .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
        )
        run_k8s_config = context.run_k8s_config
    origin = run.job_code_origin
    job_config = context.get_k8s_job_config(executor_config.get("job_image"), launcher)
    if not job_config.job_image:
        job_config = job_config.with_image(origin.repository_origin.container_image)
    args = ExecuteStepArgs(job_origin=origin, run_id=run.run_id, step_keys_to_execute=[step_key]).get_command_args(
        skip_serialized_namedtuple=True
    )
    name = f"dagster-step-{get_k8s_job_name(run.run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=job_config, args=args, job_name=name, pod_name=name, component="step_worker",
        user_defined_k8s_config=run_k8s_config, labels={"dagster/op": step_key},
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
    )  # fmt: skip
    return job.to_dict()


def decode_asset(definitions: dg.Definitions) -> dg.AssetsDefinition:
    decodes = [a for a in definitions.resolve_asset_graph().assets_defs if a.key.path[0] == "decoding"]
    assert decodes, "no decoding asset in the definitions"
    return decodes[0]


def container(job: dict) -> dict:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def env_of(job: dict) -> dict:
    """The container's environment by name; a name given twice must have one value (Kubernetes keeps the last)."""
    env = {}
    for variable in container(job)["env"]:
        assert env.get(variable["name"], variable) == variable, f"{variable['name']} set twice, differently"
        env[variable["name"]] = variable
    return env


def check_common(job: dict, deployment: dict, values: dict) -> None:
    """What every pod of a run needs: our image, the shared volume at the same path, our environment (the catalog
    from its Secret), the instance's DAGSTER_HOME, and the uid/gid the image runs as on the volume."""
    spec = job["spec"]["template"]["spec"]
    assert container(job)["image"] == image_of(deployment)
    (claim,) = [v for v in spec["volumes"] if v.get("persistent_volume_claim")]
    assert claim["persistent_volume_claim"]["claim_name"] == "decoding-assets-data"
    (mount,) = [m for m in container(job)["volume_mounts"] if m["name"] == claim["name"]]
    assert mount["mount_path"] == "/data/decoding-assets"
    env = env_of(job)
    assert env["DECODING_ASSETS_EXECUTOR"]["value"] == "k8s"
    assert env["DECODING_ASSETS_OUTPUTS"]["value"] == "/data/decoding-assets/outputs"
    assert env["DECODING_ASSETS_OUTPUTS"]["value"].startswith(mount["mount_path"] + "/")
    secret = env["DECODING_ASSETS_CATALOG"]["value_from"]["secret_key_ref"]
    assert (secret["name"], secret["key"]) == ("decoding-assets-catalog", "url")
    assert env["DAGSTER_HOME"]["value"] == values["global"]["dagsterHome"]
    assert spec["security_context"]["fs_group"] == 10001


def test_run_pod_has_everything_but_a_gpu(launcher, values, deployment, definitions):
    job_name = next(j.name for j in definitions.resolve_all_job_defs() if j.name.startswith("decode_"))
    job = run_pod(launcher, run_of(deployment, job_name))
    check_common(job, deployment, values)
    assert container(job)["args"][:3] == ["dagster", "api", "execute_run"]
    resources = container(job).get("resources") or {}
    assert GPU not in (resources.get("limits") or {}) and GPU not in (resources.get("requests") or {})


def test_decode_step_pod_asks_for_one_gpu(launcher, values, deployment, definitions):
    asset = decode_asset(definitions)
    step_key = asset.op.name
    decode_job = next(j for j in definitions.resolve_all_job_defs() if j.name.startswith("decode_"))
    job = step_pod(launcher, run_of(deployment, decode_job.name), step_key, dict(asset.op.tags), decode_job, deployment)
    check_common(job, deployment, values)
    assert container(job)["args"][:3] == ["dagster", "api", "execute_step"]
    resources = container(job)["resources"]
    assert resources["limits"][GPU] == "1"  # where the device plugin reads it: a pod without the limit gets no GPU
    assert resources["requests"][GPU] == "1"
    assert env_of(job)["DAGSTER_RUN_STEP_KEY"]["value"] == step_key


def test_other_step_pods_ask_for_no_gpu(launcher, values, deployment, definitions):
    others = [a for a in definitions.resolve_asset_graph().assets_defs if a.key.path[0] != "decoding"]
    assert others
    sessions_job = definitions.resolve_job_def("process_sessions")
    for asset in others:
        run = run_of(deployment, sessions_job.name)
        job = step_pod(launcher, run, asset.op.name, dict(asset.op.tags), sessions_job, deployment)
        check_common(job, deployment, values)
        assert GPU not in ((container(job).get("resources") or {}).get("limits") or {}), asset.key


def test_decodes_are_in_the_gpu_pool_the_values_limit(values, definitions):
    """The pool the values limit is the one every decode step is in, with op granularity (a run waits for a slot
    before it launches its decode step's pod)."""
    assert decode_asset(definitions).op.pool == "gpu"
    concurrency = values["concurrency"]
    assert concurrency["enabled"] and concurrency["pools"]["granularity"] == "op"
    assert concurrency["pools"]["defaultLimit"] >= 1
    # the chart refuses run limits both here and on the run coordinator
    assert "config" not in values["dagsterDaemon"]["runCoordinator"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


def test_definitions_choose_the_k8s_job_executor(definitions):
    """DECODING_ASSETS_EXECUTOR=k8s: every job launches each step as a pod (dagster-k8s's executor is named k8s)."""
    jobs = [j for j in definitions.resolve_all_job_defs() if not j.name.startswith("__")]
    assert jobs
    assert {j.name: j.executor_def.name for j in jobs} == {j.name: "k8s" for j in jobs}


def test_values_use_only_keys_the_chart_declares(values):
    def walk(node, path: str) -> None:
        if path in CHART_KEYS:
            assert set(node) <= CHART_KEYS[path], f"{path or 'top level'}: {set(node) - CHART_KEYS[path]}"
        for key, value in node.items():
            child = f"{path}.{key}" if path else key
            if isinstance(value, dict):
                walk(value, child)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        walk(item, child + "[]")

    walk(values, "")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def test_user_deployment_serves_our_definitions_on_the_charts_port(deployment):
    args = deployment["codeServerArgs"]
    assert args[args.index("-m") + 1] == "decoding_assets.definitions"
    assert deployment["port"] == 3030
    assert all("value" in e or "valueFrom" in e for e in deployment["env"])


# The Dockerfile (no docker daemon here: parsed, and checked against the repository)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_variants_install_extras_that_exist():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11 (so does the image)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    variants = dict(re.findall(r"(\w+)\) echo ([\w,]+) > /tmp/extras", run))
    assert variants == {"cpu": "cluster", "cuda": "gpu,cluster"}
    for extras in variants.values():
        assert set(extras.split(",")) <= set(project["optional-dependencies"])
    assert any(r.startswith("jax[cuda12]") for r in project["optional-dependencies"]["gpu"])
    assert any(r.startswith("dagster-k8s") for r in project["optional-dependencies"]["cluster"])
    assert ("ARG", "VARIANT=cpu") in dockerfile_instructions()


def test_dockerfile_copies_what_exists_and_dockerignore_keeps():
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    copies = [args.split() for op, args in dockerfile_instructions() if op == "COPY" and "--from" not in args]
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    assert {"pyproject.toml", "README.md", "catalog", "decoding_assets"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source not in ignored, f".dockerignore drops {source}, which the Dockerfile copies"
    assert {".venv", ".git", "tests"} <= set(ignored)


def test_dockerfile_runs_the_code_server_as_a_user(values, deployment):
    instructions = dockerfile_instructions()
    (user,) = [args for op, args in instructions if op == "USER"]
    assert not user.startswith(("0", "root"))
    assert int(user.split(":")[0]) == values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"][
        "podSpecConfig"]["securityContext"]["fsGroup"]  # fmt: skip
    assert not [args for op, args in instructions if op == "ENTRYPOINT"], "the chart's args would be appended to it"
    (cmd,) = [json.loads(args) for op, args in instructions if op == "CMD"]
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"])
    assert cmd[cmd.index("-m") + 1] == "decoding_assets.definitions"
    env = " ".join(args for op, args in instructions if op == "ENV")
    assert f"DAGSTER_HOME={values['global']['dagsterHome']}" in shlex.split(env)

# syntax=docker/dockerfile:1
# The image the dagster/dagster Helm chart runs our code in: the user-code gRPC server, every run pod and every
# step pod (deploy/helm/values.yaml, docs/kubernetes.md).
#
#   docker build -t REGISTRY/decoding-assets:0.1.0-cpu .                             # CPU: .[cluster]
#   docker build --build-arg VARIANT=cuda -t REGISTRY/decoding-assets:0.1.0-cuda .   # GPU: .[gpu,cluster]
#
# Both variants start from the same slim Python: jax[cuda12] brings CUDA 12 and cuDNN as wheels, and the node's
# driver comes in through the NVIDIA device plugin, so no CUDA base image is needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Dependencies only, from pyproject.toml alone: this layer is rebuilt when the dependencies change, not when the code
# does.
FROM ${PYTHON_IMAGE} AS dependencies
ARG VARIANT=cpu
RUN case "$VARIANT" in \
      cpu) echo cluster > /tmp/extras ;; \
      cuda) echo gpu,cluster > /tmp/extras ;; \
      *) echo "VARIANT is '$VARIANT': it must be cpu or cuda (--build-arg VARIANT=cuda for JAX with CUDA 12)" >&2; \
         exit 1 ;; \
    esac
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import sys, tomllib; project = tomllib.load(open(sys.argv[1], 'rb'))['project']; \
extras = open(sys.argv[2]).read().strip().split(','); \
print('\n'.join(project['dependencies'] + [r for e in extras for r in project['optional-dependencies'][e]]))" \
      /tmp/pyproject.toml /tmp/extras > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip pip install -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
# DAGSTER_HOME is where the chart mounts the instance's dagster.yaml (its global.dagsterHome); DECODING_ASSETS_HOME
# is overridden by the Helm values to a folder on the shared volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DECODING_ASSETS_HOME=/var/lib/decoding-assets
RUN groupadd --gid 10001 decoding \
    && useradd --uid 10001 --gid decoding --create-home --shell /usr/sbin/nologin decoding \
    && mkdir -p "$DAGSTER_HOME" "$DECODING_ASSETS_HOME" \
    && chown decoding:decoding "$DAGSTER_HOME" "$DECODING_ASSETS_HOME"
COPY --from=dependencies /opt/venv /opt/venv
WORKDIR /opt/decoding-assets
COPY pyproject.toml README.md ./
COPY catalog ./catalog
COPY decoding_assets ./decoding_assets
# editable: decoding_assets/decoding_configs.yaml is read from beside the code, and is not package data
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps -e . \
    && python -c "import decoding_assets.pipeline as p; assert p.DEFAULT_CONFIG.is_file(), p.DEFAULT_CONFIG"
USER 10001:10001
EXPOSE 3030
# No ENTRYPOINT: the chart replaces this command with its own `dagster code-server start ...` (codeServerArgs), and run
# and step pods with `dagster api execute_run` / `execute_step`.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "3030", "-m", "decoding_assets.definitions"]

# syntax=docker/dockerfile:1
# The ETF rotation code location: a Dagster gRPC server (default CMD: orchestration/code_server.py,
# Dagster's own server whose run workers fork from a preloaded process). deploy/compose.yaml runs
# the same image as the webserver, the daemon and the metrics exporter, so every process has
# the same dagster / dagster-postgres versions.
#
#   docker build -t etf-rotation:dev .
#   docker build --build-arg EXTRAS=k8s -t etf-rotation:k8s .   # for the Helm chart
FROM python:3.11-slim

# Optional extras of pyproject.toml, comma-separated: k8s (dagster-k8s, for
# ETF_WALK_FORWARD__EXECUTOR=k8s), akshare.
ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dagster/app

# The uv that uv.lock pins (the Makefile's UV_VERSION; tests/test_lock.py keeps them equal).
ARG UV_VERSION=0.13.9

# Dependencies first, in their own layer: they change with pyproject.toml and uv.lock, not with
# the code. uv exports [project].dependencies plus the extras asked for from uv.lock, as exact
# versions with their hashes (--locked: the build stops when pyproject.toml has moved away from
# the lock); pip installs exactly those, hash-checked, and resolves nothing itself.
COPY pyproject.toml uv.lock deploy/requirements.py ./
RUN python -m venv /tmp/uv && /tmp/uv/bin/pip install --quiet "uv==${UV_VERSION}" \
    && /tmp/uv/bin/uv export --locked --no-emit-project --format requirements.txt \
       $(echo "${EXTRAS}" | tr ',' '\n' | sed '/^ *$/d; s/^ */--extra /') \
       --output-file /tmp/locked.txt \
    && pip install --require-hashes --no-deps -r /tmp/locked.txt \
    && rm -rf /tmp/uv /tmp/locked.txt
# pyproject.toml's own ranges for the same extras, as pip reads them: the locked set already
# meets every one, so this installs nothing (it is pip's cross-check of the lock).
RUN python requirements.py "${EXTRAS}" pyproject.toml > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt requirements.py

# The package itself. Editable on purpose: rotation/config_paths.py finds config/ (datasets,
# strategies) beside the source tree, which a site-packages copy would not have.
# PYTHONPATH also covers top-level packages not listed in [tool.setuptools.packages.find]
# (e.g. `python -m observability.exporter`). The source is compiled here (pip compiled the
# dependencies): PYTHONDONTWRITEBYTECODE and a read-only tree would have every run worker
# compile the project's modules again. Likewise the code versions' syntax-tree digests
# (assets/code_version.py), which every process building the definitions would recompute.
COPY . .
RUN pip install --no-deps -e . \
    && python -m compileall -q -j 0 api assets jobs observability orchestration resources \
       rotation sensors trading \
    && python -m assets.code_version
ENV PYTHONPATH=/opt/dagster/app

# Instance configuration and writable state, owned by an unprivileged user.
ENV DAGSTER_HOME=/opt/dagster/home \
    ETF_HOME=/var/lib/etf \
    DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true \
    DAGSTER_EVENT_BATCH_SIZE=1000 \
    GX_ANALYTICS_ENABLED=false \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib
COPY deploy/dagster.prod.yaml ${DAGSTER_HOME}/dagster.yaml
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/dagster dagster \
    && mkdir -p "${DAGSTER_HOME}/compute_logs" "${DAGSTER_HOME}/storage" "${ETF_HOME}" \
    && chown -R dagster:dagster "${DAGSTER_HOME}" "${ETF_HOME}"

# The source revision MLflow runs are tagged with (git.commit, git.dirty): the image has no
# .git, so the build says it. Last, so a new commit rebuilds only this layer:
#   --build-arg GIT_COMMIT=$(git rev-parse HEAD) \
#   --build-arg GIT_DIRTY=$(test -z "$(git status --porcelain)" && echo false || echo true)
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=unknown
ENV GIT_COMMIT=${GIT_COMMIT} \
    GIT_DIRTY=${GIT_DIRTY}
USER dagster

EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
# `dagster api grpc` with the same arguments, except that each run's new process is forked from a
# forkserver that imported Dagster, pandas, numba, the code location and the factor kernels once
# at start, instead of spawned as a fresh interpreter that imports them again (README
# "Performance": seconds per run on the evening's path).
CMD ["python", "-m", "orchestration.code_server", "-h", "0.0.0.0", "-p", "4000", "-m", "orchestration.definitions", "-a", "defs"]

# syntax=docker/dockerfile:1
# The ETF rotation code location: a Dagster gRPC server (default CMD). deploy/compose.yaml runs
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

# Dependencies first, in their own layer: they change with pyproject.toml, not with the code.
# The list is [project].dependencies of pyproject.toml plus the extras asked for.
COPY pyproject.toml deploy/requirements.py ./
RUN python requirements.py "${EXTRAS}" pyproject.toml > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt requirements.py

# The package itself. Editable on purpose: rotation/config_paths.py finds config/ (datasets,
# strategies) beside the source tree, which a site-packages copy would not have.
# PYTHONPATH also covers top-level packages not listed in [tool.setuptools.packages.find]
# (e.g. `python -m observability.exporter`).
COPY . .
RUN pip install --no-deps -e .
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
USER dagster

EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "orchestration.definitions", "-a", "defs"]

# One image for the code location (gRPC server), the webserver, the daemon, run workers and the
# inference server; the command picks the role. Nothing secret is built in: connection settings
# and credentials arrive as environment variables (ECS injects them from Secrets Manager).
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.10-slim-bookworm AS build

# Exactly the versions in uv.lock (hashes checked); --locked fails the build if pyproject.toml
# and the lock disagree. A virtual environment that the runtime stage copies whole: no
# compilers, caches or uv ship. The project is installed editable from /opt/dagster/app, as
# Dagster projects are: definitions.py finds its defs/ folder through pyproject.toml's [tool.dg]
# section, so pyproject.toml ships too. (taxi_assets_tests/production/test_install_path.py runs
# these two commands as a non-root user and starts the servers from the result.)
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1
COPY --from=uv /uv /usr/local/bin/uv
WORKDIR /opt/dagster/app
COPY pyproject.toml uv.lock README.md ./
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
RUN uv sync --locked --no-install-project --extra deploy
COPY taxi_assets ./taxi_assets
RUN uv sync --locked --extra deploy

FROM python:3.11.10-slim-bookworm AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    TAXI_ENV=production
# libgomp: XGBoost's and scikit-learn's OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/home /opt/dagster/ecs-home /opt/dagster/app \
    && chown -R dagster:dagster /opt/dagster

COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=dagster:dagster /opt/dagster/app /opt/dagster/app
COPY --chown=dagster:dagster deploy/dagster.yaml /opt/dagster/home/dagster.yaml
# On ECS, DAGSTER_HOME=/opt/dagster/ecs-home: the same instance plus the EcsRunLauncher.
COPY --chown=dagster:dagster deploy/dagster-ecs.yaml /opt/dagster/ecs-home/dagster.yaml
COPY --chown=dagster:dagster deploy/workspace.yaml /opt/dagster/app/workspace.yaml

USER 10001:10001
WORKDIR /opt/dagster/app
EXPOSE 4000 3000 8080

# The default role is the code location; its health check asks the gRPC server itself. Other
# roles (webserver, daemon, inference) override the command and their own health check in
# docker-compose.yaml and the ECS task definitions.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]

# `dagster api grpc`, not `dagster code-server start`: the run launcher's worker health check
# (taxi_assets/lib/run_launcher.py) asks the server which runs it executes, and the proxy that
# `code-server start` runs does not answer that. New code arrives as a new image, not a reload.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "taxi_assets.definitions", "--location-name", "taxi_assets"]

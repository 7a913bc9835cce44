# syntax=docker/dockerfile:1
# The one image every component runs; the Helm chart picks the command per component:
#   watcher     python -m watcher
#   worker      python -m worker
#   beat        celery -A tasks beat
#   Flower      celery -A tasks flower
#   status      celery -A tasks warm-status
#
# Build it with scripts/build-image. BASE is any image with Python 3.11+ and `python`, `apt-get`,
# `groupadd`/`useradd` (scripts/build-base makes one from Debian packages where Docker Hub is
# out of reach); by default python:3.11-slim pinned by digest, so a rebuild gets the same bytes.
ARG BASE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- builder: install the project and its dependencies into a virtualenv ----
FROM ${BASE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only here, for a dependency without a wheel on the target platform; the final stage
# gets the virtualenv and nothing else from this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Every dependency, and setuptools to build the project, at the version and with the hashes of
# requirements.lock (pip-compile --generate-hashes): nothing unpinned or unverified gets in.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# .dockerignore lets in only the packaging files and the Python packages.
COPY . .
# A regular (not editable) install: the final stage needs /opt/venv only, not /src.
RUN pip install --no-deps --no-build-isolation . \
    && pip check

# ---- runtime: slim Python, the virtualenv, an unprivileged user ----
FROM ${BASE} AS runtime

# Where the image comes from: the build passes the commit (git rev-parse HEAD).
ARG SOURCE_URL=https://github.com/kubernetes-warm-images/warm-images
ARG REVISION=unknown
LABEL org.opencontainers.image.title="warm-images" \
      org.opencontainers.image.description="Keeps container images warm on Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid/gid so that Kubernetes can check runAsNonRoot (the chart uses 10001).
RUN groupadd --system --gid 10001 warm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin warm

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

# Prometheus metrics (watcher, worker), health (watcher, worker), Flower.
EXPOSE 9808 8080 5555

CMD ["python", "-m", "watcher"]

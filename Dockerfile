# syntax=docker/dockerfile:1
#
# The relay's image: `relay serve` on port 8080 as an unprivileged user.
#
#   docker build -t relay:dev .
#   docker run --rm -p 8080:8080 -e RELAY_REDIS_URL=redis://host.docker.internal:6379/0 relay:dev
#
# Two stages: `build` makes a virtualenv in /opt/relay with the runtime dependencies pinned by
# requirements.lock (wheels only: no compiler anywhere), then the relay itself; the final stage
# copies that virtualenv onto the same slim base and nothing else. Every `relay serve` knob is
# a RELAY_* environment variable (`docker run --rm relay:dev --help` lists them).
# Pin PYTHON_IMAGE by digest for releases (python:3.11-slim@sha256:...): both stages must use
# the same base, because the virtualenv links to its interpreter.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-euc"]

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ONLY_BINARY=:all: \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/relay

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or the lock
# changes. The runtime requirements come from pyproject.toml, their versions from the lock
# (which also pins the dev tools; those are not installed here).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime.txt \
    && /opt/relay/bin/pip install --constraint requirements.lock --requirement runtime.txt \
    && unpinned="$(/opt/relay/bin/pip freeze | grep -v -x -F -f requirements.lock || true)" \
    && if [ -n "$unpinned" ]; then echo "not pinned by requirements.lock: $unpinned" >&2; exit 1; fi

# Then the relay itself (pure Python; pip compiles its bytecode, so the read-only root
# filesystem never needs a __pycache__).
COPY README.md ./
COPY relay ./relay
RUN /opt/relay/bin/pip install --no-deps . \
    && /opt/relay/bin/relay --version \
    && /opt/relay/bin/pip check


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Market-data WebSocket fanout relay: Redis Streams in, sequenced WebSocket frames out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.documentation="docs/deploy.md"

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin relay

COPY --from=build /opt/relay /opt/relay

ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8080

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Liveness only (the event loop answers): readiness (/readyz) depends on Redis and is the
# load balancer's and Kubernetes' business. No curl in the slim base: Python does the GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8080'), timeout=2)"]

# The relay handles SIGTERM itself (PID 1 is fine: it installs its own handlers and starts
# no child processes): unready at once, 1001 to every client, done within
# RELAY_SHUTDOWN_TIMEOUT (20 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay", "serve"]

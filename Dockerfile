# fmnist-faust: one image for the Faust worker, the Pub/Sub bridge, the trainer and the
# producer (see docker-compose.yml and docs/docker.md). No secrets are baked in; Kafka
# credentials, if any, come from the environment at run time.
#
# BASE: any Debian bookworm with Python 3.11 and its venv module. The default is the official
# Python image; tools/container.sh builds a plain Debian one where registries are out of reach.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Fashion-MNIST comes from Debian's package (/usr/share/datasets/fashion-mnist), so
# nothing is downloaded at run time.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

# The app lives in a virtual environment, first on PATH: the same on the official image and
# on Debian's python3, whose own environment is externally managed (PEP 668).
RUN python3 -m venv /opt/venv

# The versions of requirements.lock, hashes checked (the build backend included), in a layer
# of their own that a change of the code does not rebuild.
WORKDIR /src
COPY requirements.lock /src/
RUN pip install --require-hashes -r requirements.lock
COPY . /src
RUN pip install --no-deps --no-build-isolation . && rm -rf /src/build

# Non-root user; the directories that named volumes are mounted on belong to it, so the
# volumes are created writable for it.
RUN groupadd --system --gid 10001 fmnist \
    && useradd --system --uid 10001 --gid fmnist --home-dir /home/fmnist --create-home fmnist \
    && mkdir -p /models /var/lib/fmnist/worker \
    && chown -R fmnist:fmnist /models /var/lib/fmnist

# Paths inside the container, on the volumes (the defaults are relative to the working
# directory). The web views bind every address: a published port (`docker run -p 6066:6066`)
# reaches them only so; the code's default stays 127.0.0.1 outside a container.
ENV FMNIST_MODEL_PATH=/models/fmnist-mlp.joblib \
    FMNIST_WORKER_DATADIR=/var/lib/fmnist/worker \
    BRIDGE_STATE_PATH=/var/lib/fmnist/bridge-state.sqlite3 \
    FMNIST_WEB_HOST=0.0.0.0

USER fmnist
WORKDIR /home/fmnist
EXPOSE 6066 6067
# The worker's /healthz and /readyz on FMNIST_WEB_PORT (the default command); a bridge
# container checks its own with `fmnist-health bridge --ready` (BRIDGE_WEB_PORT), as
# docker-compose.yml does.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=12 CMD ["fmnist-health", "--ready"]
CMD ["faust", "-A", "fmnist_faust", "worker", "-l", "info"]

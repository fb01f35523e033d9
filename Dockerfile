# fmnist-faust: one image for the Faust worker, the Pub/Sub bridge, the trainer and the
# producer (see docker-compose.yml and docs/docker.md). No secrets are baked in; Kafka
# credentials, if any, come from the environment at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fashion-MNIST comes from Debian's package (/usr/share/datasets/fashion-mnist), so
# nothing is downloaded at run time.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src
RUN pip install . && rm -rf /src/build

# Non-root user; the directories that named volumes are mounted on belong to it, so the
# volumes are created writable for it.
RUN groupadd --system --gid 10001 fmnist \
    && useradd --system --uid 10001 --gid fmnist --home-dir /home/fmnist --create-home fmnist \
    && mkdir -p /models /var/lib/fmnist/worker \
    && chown -R fmnist:fmnist /models /var/lib/fmnist

# Paths inside the container (the defaults point into the source tree, which is not
# writable here).
ENV FMNIST_MODEL_PATH=/models/fmnist-mlp.joblib \
    FMNIST_WORKER_DATADIR=/var/lib/fmnist/worker \
    BRIDGE_STATE_PATH=/var/lib/fmnist/bridge-state.sqlite3
# Listen on every interface of the container, so `docker run -p 6066:6066` reaches the views.
ENV FMNIST_WEB_HOST=0.0.0.0

USER fmnist
WORKDIR /home/fmnist
EXPOSE 6066 6067
# The worker's /healthz and /readyz on FMNIST_WEB_PORT (shell form: the probe reads the
# environment). Running the bridge from this image: --health-cmd
# "python -m fmnist_faust.healthcheck bridge --ready" (docker-compose.yml sets it).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -m fmnist_faust.healthcheck worker --ready
CMD ["faust", "-A", "fmnist_faust", "worker", "-l", "info"]

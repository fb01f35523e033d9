#!/usr/bin/env bash
# Install what fmnist-faust needs on a fresh Debian machine: apt packages (when missing),
# a venv in .venv with the versions of requirements-dev.lock (hashes checked) and the package
# in editable mode, and Kafka's jars (via Maven).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(dataset-fashion-mnist kcat docker-compose curl chromium chromium-driver postgresql ${FMNIST_EXTRA_APT:-})

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "install: please install these Debian packages as root: ${missing[*]}" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "install: apt-get install ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

LOCK=requirements-dev.lock
stamp=.venv/.installed-$(cat setup.cfg pyproject.toml "$LOCK" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  lock_python=$(sed -n '1s/.* for Python \([0-9.]*\) .*/\1/p' "$LOCK")
  venv_python=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$venv_python" != "$lock_python" ]; then
    echo "install: $LOCK is for Python $lock_python, .venv has $venv_python: remove .venv and run" \
      "PYTHON=python$lock_python make install (or regenerate the locks for $venv_python in tools/lock.sh)" >&2
    exit 1
  fi
  .venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
  # The build backend is in the lock: no isolated build environment fetching its own.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*; touch "$stamp"
fi
tools/services.sh fetch

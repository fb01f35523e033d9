#!/usr/bin/env bash
# Build and test the Docker image with podman, on a machine whose registries of base images
# are out of reach: the base is a Debian bookworm made here by debootstrap.
#   tools/container.sh install        # podman, runc and debootstrap from Debian (when missing)
#   tools/container.sh base           # build the base once (cached by content hash); prints its name
#   tools/container.sh build [TAG]    # the project's image on that base; prints its name
#   tools/container.sh podman ARGS    # podman with this project's containers.conf
#   tools/container.sh test [ARGS]    # tests/test_container.py against Kafka and the emulator
# The machine's CA bundle and pip configuration are mounted into the build, never copied
# into an image. With Docker and its registries, none of this is needed: `docker build .`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF="$ROOT/tools/container/containers.conf"
SUITE=bookworm
BASE_PACKAGES=python3.11,python3-venv,ca-certificates
PIP_CONFIG=${PIP_CONFIG_FILE:-/etc/pip.conf}

die() { echo "container: $*" >&2; exit 1; }
log() { echo "container: $*" >&2; }

install_engine() {
  local pkg missing=()
  for pkg in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "podman runs as root here; as root: apt-get install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

debian_mirror() {  # the first APT source serving $SUITE (one-line or deb822 format)
  local file sources=()
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] && sources+=("$file")
  done
  [ ${#sources[@]} -gt 0 ] || return 0
  awk -v suite="$SUITE" '
    function flush() { if (uri != "" && suites ~ ("(^| )" suite "( |$)")) { print uri; found = 1; exit } uri = suites = "" }
    FNR == 1 || /^[[:space:]]*$/ { flush() }
    /^deb / { sub(/\[[^]]*\] /, ""); if ($3 == suite) { print $2; found = 1; exit } }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { $1 = ""; suites = substr($0, 2) }
    END { if (!found) flush() }
  ' "${sources[@]}"
}

base_image() {
  local mirror name dir
  mirror=${FMNIST_DEBIAN_MIRROR:-$(debian_mirror)}
  [ -n "$mirror" ] || die "no APT source for $SUITE in /etc/apt: set FMNIST_DEBIAN_MIRROR"
  # The same inputs (this recipe included) give the same name: a base already built is reused.
  name="localhost/fmnist-base:$SUITE-$( (echo "$SUITE $BASE_PACKAGES $mirror"; declare -f base_image) | sha256sum | cut -c1-12)"
  if ! podman image exists "$name"; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fmnist-base.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" EXIT
    log "debootstrap $SUITE from $mirror into $dir ..."
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$dir" "$mirror" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; die "debootstrap failed (log: $dir.log)"; }
    rm -rf "$dir.log" "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | podman import --quiet - "$name" >/dev/null
  fi
  echo "$name"
}

build_image() {
  local tag=${1:-localhost/fmnist-faust:test} base previous mounts=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
  base=$(base_image)
  previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  [ -f "$PIP_CONFIG" ] && mounts+=(--volume "$PIP_CONFIG:/etc/pip.conf:ro")
  log "podman build $tag on $base ..."
  # --format docker keeps HEALTHCHECK (the OCI format has none); host network: the build's
  # apt and pip reach the registries the way the host does.
  podman build --quiet --format docker --network host --build-arg "BASE=$base" "${mounts[@]}" \
    --tag "$tag" . >/dev/null
  # The image this tag replaced, with its layers no other image uses (a container of it keeps it).
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "$tag"
}

case "${1:-}" in
  install) install_engine ;;
  base) base_image ;;
  build) shift; build_image "$@" ;;
  podman) shift; exec podman "$@" ;;
  test)
    shift
    install_engine
    # shellcheck source=tools/lib.sh
    source tools/lib.sh
    start_services kafka pubsub
    set +e
    .venv/bin/python -m pytest -m container tests/test_container.py "$@"
    status=$?
    set -e
    if [ "$status" = 5 ]; then log "pytest collected no tests: failing"; fi
    exit "$status"
    ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac

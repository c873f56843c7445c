#!/usr/bin/env bash
# Build the worker images deepfake-worker:cpu and deepfake-worker:cuda (from any directory).
#
#   bash docker/build.sh                  upstream base (python:3.11-slim-bookworm), usual indexes
#   bash docker/build.sh --local-base     no registry reachable: a Debian bookworm base made here
#                                         with debootstrap (needs root), torch from PyPI
#
# Options:
#   --only cpu|cuda      build one image
#   --name NAME          image name (default deepfake-worker): NAME:cpu and NAME:cuda
#   --pip-index URL      install Python packages from this index (a PyPI mirror) instead of PyPI
#   --trusted-host HOST  let pip use that index without TLS verification (only when asked)
#   --                   the rest goes to every `docker build`
#
# The two images share every layer up to their dependencies when built with the same arguments
# (with --local-base they are), so the second build takes seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
local_base=false
only=""
name=deepfake-worker
pip_index=""
trusted_host=""
extra=()
while (($#)); do
  case $1 in
    --local-base) local_base=true ;;
    --only) only=$2; shift ;;
    --name) name=$2; shift ;;
    --pip-index) pip_index=$2; shift ;;
    --trusted-host) trusted_host=$2; shift ;;
    --) shift; extra+=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

LOCAL_BASE=deepfake-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

make_local_base() {
  # A minimal Debian bookworm (its python3 is 3.11) with venv, imported as an image. pip inside
  # it trusts the same certificates as this machine (a machine whose egress re-signs TLS needs
  # that); that certificate bundle is part of this local base only, never of the project's images.
  if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    return
  fi
  command -v debootstrap >/dev/null || {
    echo "build.sh: --local-base needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
  local rootfs
  rootfs=$(mktemp -d /tmp/deepfake-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  echo "build.sh: making $LOCAL_BASE with debootstrap (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
}

args=()
if $local_base; then
  make_local_base
  # The CPU-only torch index is not reachable without the internet: both images take PyPI's
  # build (it runs on a CPU too), and so share their dependency layer.
  args+=(--build-arg "BASE_IMAGE=$LOCAL_BASE" --build-arg "TORCH_INDEX_URL=" --network host)
fi
if [[ -n $pip_index ]]; then
  # Build arguments stay in the image's history: an index URL with a password in it would too.
  if [[ $pip_index == *://*@* ]]; then
    echo "build.sh: --pip-index must not hold credentials (they would be in the image's history);" \
      "use pip's own configuration (a netrc or keyring) on the build machine" >&2
    exit 2
  fi
  args+=(--build-arg "PIP_INDEX_URL=$pip_index")
fi
if [[ -n $trusted_host ]]; then
  args+=(--build-arg "PIP_TRUSTED_HOST=$trusted_host")
fi
# Without the buildx plugin the Docker CLI uses its classic builder; say so once, quietly.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

for kind in cpu cuda; do
  [[ -z $only || $only == "$kind" ]] || continue
  start=$(date +%s)
  docker build "${args[@]}" "${extra[@]}" -f "$here/Dockerfile.$kind" -t "$name:$kind" "$root"
  echo "build.sh: $name:$kind built in $(( $(date +%s) - start )) s"
done

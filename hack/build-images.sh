#!/usr/bin/env bash
# Builds the runner and operator images with buildah, without pulling anything from an image
# registry: the base image is a Debian bookworm root file system (python3, python3-venv,
# ca-certificates) bootstrapped here with debootstrap from Debian's package archive, cached under
# $OPSCONDUCTOR_CACHE/images/. Python packages come from the package index, pinned by
# runner-image/requirements.lock.
#
# Usage: hack/build-images.sh            (prints the two image names, last lines)
# Needs root, buildah and debootstrap (hack/install-system-deps.sh installs them).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${OPSCONDUCTOR_CACHE:-$HOME/.cache/opsconductor}
VERSION=$(python3 -c 'import re,sys; print(re.search(r"^version = \"(.*)\"", open(sys.argv[1]).read(), re.M).group(1))' "$ROOT/pyproject.toml")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/opsconductor/base-python:bookworm
export STORAGE_DRIVER=vfs   # works without overlay support in the kernel or a fuse helper
BUILDAH=(buildah --storage-driver vfs)
log() { echo "[build-images] $(date +%T) $*" >&2; }

rootfs_tar="$CACHE/images/rootfs-bookworm-python.tar"
if [ ! -s "$rootfs_tar" ]; then
  log "bootstrapping a Debian bookworm root file system (python3, venv)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$MIRROR" >&2
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  mkdir -p "$(dirname "$rootfs_tar")"
  tar -C "$work/rootfs" -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
fi

if ! "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  log "importing the base image $BASE"
  ctx=$(mktemp -d)
  ln "$rootfs_tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$rootfs_tar" "$ctx/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/usr/bin/python3"]\n' > "$ctx/Containerfile"
  "${BUILDAH[@]}" bud --isolation chroot -q -f "$ctx/Containerfile" -t "$BASE" "$ctx" >&2
  rm -rf "$ctx"
fi

for image in runner operator; do
  file="$ROOT/runner-image/Dockerfile"
  [ "$image" = operator ] && file="$ROOT/operator/Dockerfile"
  log "building ghcr.io/opsconductor/$image:$VERSION"
  secret=()
  # Trust what this host trusts for the package download (a TLS-inspecting proxy's CA, say).
  ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  [ -s "$ca" ] && secret=(--secret "id=ca,src=$ca")
  "${BUILDAH[@]}" bud --isolation chroot --layers=false -q --pull-never \
    --build-arg "BASE_IMAGE=$BASE" --build-arg "RUNNER_IMAGE=ghcr.io/opsconductor/runner:$VERSION" "${secret[@]}" \
    -f "$file" -t "ghcr.io/opsconductor/$image:$VERSION" "$ROOT" >&2
done
echo "ghcr.io/opsconductor/runner:$VERSION"
echo "ghcr.io/opsconductor/operator:$VERSION"

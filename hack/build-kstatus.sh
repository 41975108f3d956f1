#!/usr/bin/env bash
# Builds hack/kstatus (kstatus-check: sigs.k8s.io/cli-utils/pkg/kstatus over JSON objects) from its
# pinned go.mod/go.sum, cached by the hash of those files. Prints the binary's path (last line).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/kstatus" && pwd)
CACHE=${OPSCONDUCTOR_CACHE:-$HOME/.cache/opsconductor}
KEY=$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" | sha256sum | cut -c1-12)
OUT="$CACHE/bin/kstatus-check-$KEY"
if [ ! -x "$OUT" ]; then
  command -v go >/dev/null || { echo "build-kstatus: Go is required (go 1.26+)" >&2; exit 1; }
  mkdir -p "$(dirname "$OUT")"
  echo "[build-kstatus] $(date +%T) building kstatus-check" >&2
  ( cd "$HERE" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath" go build -o "$OUT.tmp" . )
  mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"

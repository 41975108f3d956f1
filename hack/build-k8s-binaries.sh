#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules and caches them by version.
#
#   etcd                       go.etcd.io/etcd/server/v3            (small wrapper module)
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#                              k8s.io/kubernetes/cmd/...            (wrapper module whose replace
#                                                                    list is generated from the release's
#                                                                    own `=> ./staging/src/...` lines)
#   helm                       helm.sh/helm/v3/cmd/helm
#
# Output: $OPSCONDUCTOR_CACHE/bin/k8s-<version>/ (default ~/.cache/opsconductor). A second run with
# every binary present returns at once. Prints the directory on stdout (last line).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.8}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
CACHE=${OPSCONDUCTOR_CACHE:-$HOME/.cache/opsconductor}
OUT="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)

have_all() { for b in "${BINARIES[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { echo "build-k8s-binaries: Go is required (go 1.26+)" >&2; exit 1; }
mkdir -p "$OUT"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath" GOTOOLCHAIN=local
log() { echo "[build-k8s-binaries] $(date +%T) $*" >&2; }
work="$CACHE/build"
mkdir -p "$work"

# --- Kubernetes -------------------------------------------------------------------------------
build_kubernetes() {
  local dir="$work/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  ( cd "$dir"
    local upstream_mod
    upstream_mod=$(GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    local minor_patch=${K8S_VERSION#v1.}
    {
      echo "module opsconductor.local/k8s-binaries"
      echo
      grep -E '^go [0-9]' "$upstream_mod"
      grep -E '^godebug ' "$upstream_mod" || true
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      # Every staging module the release points at ./staging/src/k8s.io/<x> is published as
      # k8s.io/<x> v0.<minor>.<patch>.
      grep -E '=> \./staging/src/' "$upstream_mod" \
        | awk -v v="v0.$minor_patch" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    printf 'package k8sbinaries\n' > doc.go
    log "building kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
    local pkg=k8s.io/component-base/version
    local minor=${minor_patch%%.*}
    go build -o "$OUT/" \
      -ldflags "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl
  )
}

# --- etcd -------------------------------------------------------------------------------------
build_etcd() {
  local dir="$work/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  ( cd "$dir"
    printf 'module opsconductor.local/etcd-binary\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf 'package etcdbinary\n' > doc.go
    log "building etcd $ETCD_VERSION"
    go build -o "$OUT/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3
  )
}

# --- helm -------------------------------------------------------------------------------------
build_helm() {
  local dir="$work/helm-$HELM_VERSION"
  mkdir -p "$dir"
  ( cd "$dir"
    printf 'module opsconductor.local/helm-binary\n\ngo 1.24\n\nrequire helm.sh/helm/v3 %s\n' "$HELM_VERSION" > go.mod
    printf 'package helmbinary\n' > doc.go
    log "building helm $HELM_VERSION"
    go build -o "$OUT/helm" -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm
  )
}

start=$(date +%s)
[ -x "$OUT/etcd" ] || build_etcd
[ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kubectl" ] && [ -x "$OUT/kube-controller-manager" ] && [ -x "$OUT/kube-scheduler" ] || build_kubernetes
[ -x "$OUT/helm" ] || build_helm
have_all || { echo "build-k8s-binaries: some binaries are missing in $OUT" >&2; exit 1; }
log "done in $(( $(date +%s) - start ))s"
echo "$OUT"

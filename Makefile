# OpsConductor developer entry points. `make demo` and `make test` work on a fresh machine:
# they create the virtualenv, build the Kubernetes binaries from Go modules (cached under
# ~/.cache/opsconductor), and start a local control plane on loopback.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all venv binaries system-deps crds check-crds lint test demo cluster clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

## Debian packages the tests use (real sshd, ...); needs root.
system-deps:
	bash hack/install-system-deps.sh

## Build (or reuse) etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm,
## and kstatus-check (the kstatus library over JSON objects, for the GitOps health tests).
binaries:
	bash hack/build-k8s-binaries.sh >/dev/null
	bash hack/build-kstatus.sh >/dev/null

## Regenerate crds/ and charts/opsconductor/crds/ from the pydantic models.
crds: $(STAMP)
	$(PY) -m opsconductor.crdgen
	$(PY) -m opsconductor.chartgen
	$(PY) -m opsconductor.docgen

check-crds: $(STAMP)
	$(PY) -m opsconductor.crdgen --check
	$(PY) -m opsconductor.chartgen --check
	$(PY) -m opsconductor.docgen --check

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests bench hack
	$(VENV)/bin/ruff format --check operator tests bench hack
	$(VENV)/bin/mypy

## Everything the tests need, then all tests.
test: $(STAMP) system-deps binaries
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## A local control plane with the examples applied (later: a real OpsJob run).
demo: $(STAMP) system-deps binaries
	$(PY) hack/demo.py

## A local cluster in the foreground (Ctrl-C stops it); KUBECONFIG is printed.
cluster: $(STAMP) binaries
	$(PY) -m opsconductor.localcluster up --dir .local/cluster

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache

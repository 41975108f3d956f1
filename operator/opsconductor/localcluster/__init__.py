"""A real, local Kubernetes control plane for tests and the demo.

``controlplane`` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler (binaries
built from Go modules by ``hack/build-k8s-binaries.sh``) on loopback; ``kubelet`` is a process
kubelet that registers a Node and runs its pods as local processes. Nothing here is used by the
operator at run time.
"""

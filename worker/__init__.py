"""The node worker: pulls images into this node's container runtime, one queue per node.

``python -m worker`` starts it; see :mod:`worker.agent` for what it does, :mod:`worker.puller`
for how pulls are bounded and merged, :mod:`worker.credentials` for private registries and
:mod:`worker.runtime` for the runtime drivers (CRI over gRPC for containerd and CRI-O, the
Docker Engine API for Docker).
"""

"""The node worker: pulls images into this node's container runtime, one queue per node.

``python -m worker`` starts it; see :mod:`worker.agent` for what it does and
:mod:`worker.runtime` for the runtime drivers (CRI over gRPC for containerd and CRI-O).
"""

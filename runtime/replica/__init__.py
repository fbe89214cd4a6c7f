"""Replica stores: where replication keeps snapshots, segments and manifests.

One small interface (:class:`ReplicaStore`) and two implementations, a local directory and S3,
that pass one conformance suite (``tests/replica/test_replica_store.py``).
"""

from ..errors import PreconditionFailedError, ReplicaError, ReplicaUnavailableError
from .directory_store import DirectoryStore
from .s3_store import S3Store
from .store import ReplicaStatistics, ReplicaStore

__all__ = [
    "DirectoryStore",
    "PreconditionFailedError",
    "ReplicaError",
    "ReplicaStatistics",
    "ReplicaStore",
    "ReplicaUnavailableError",
    "S3Store",
]

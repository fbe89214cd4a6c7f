"""Replication: the per-file replicator, replica stores, restore, exactly-once restore, S3
faults, the fault proxy."""

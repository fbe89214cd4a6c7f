"""Shared test support: actor types, hypothesis strategies, replication helpers, the S3
server and its fixtures, the SIGKILL crash harness and its child side."""

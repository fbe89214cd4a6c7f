"""Offline operator logic on a closed runtime directory or a replica: inspect and sql (fork
and restore are still in cli.py)."""

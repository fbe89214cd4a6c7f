"""The tests' S3 server: SeaweedFS ``weed mini``, started by ``runtime/bench/s3server.py`` (which
``torpor bench replication`` uses too); ``tests/support/s3_fixtures.py`` wraps it in a fixture."""

from runtime.bench.s3server import S3Server, find_weed, missing_message, start, stop

__all__ = ["S3Server", "find_weed", "missing_message", "start", "stop"]

"""Fixtures for tests against a real S3 server (SeaweedFS, see ``tests/support/s3server.py``).

The server starts once per session, and only if a test asks for it. Without the ``weed``
binary these tests fail (never skip): the test extra installs it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import s3server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 with one bucket, stopped at the end of the session."""
    weed = s3server.find_weed()
    if weed is None:
        pytest.fail(s3server.missing_message(), pytrace=False)
    server = s3server.start(weed, tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        s3server.stop(server)


@pytest.fixture
def s3_credentials(
    s3_server: s3server.S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> s3server.S3Server:
    """The server's identity in the environment, where boto3's standard chain finds it.

    Shared config and credentials files are pointed at nothing, and the instance-metadata
    lookup is off, so a developer's own AWS setup neither interferes nor slows the tests.
    """
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server

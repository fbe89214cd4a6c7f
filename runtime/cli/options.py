"""Argument types of the ``torpor`` command line, and the options naming a replica store."""

from __future__ import annotations

import argparse
import datetime as _dt
import math
from pathlib import Path
from typing import Any

from ..replica import DirectoryStore, ReplicaStore, S3Store


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text})")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {value})")
    return value


AT_HELP = (
    "the point in time: ISO-8601 with a zone (2026-11-25T10:00:00Z) or epoch seconds "
    "(default: the latest state)"
)


def point_in_time(text: str) -> float:
    """``--at``: epoch seconds, or an ISO-8601 date and time with its zone."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO-8601 time (2026-11-25T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add Z for UTC (2026-11-25T10:00:00Z) or an offset"
        )
    return when.timestamp()


def add_replica_options(sub: Any) -> None:
    """The options naming a replica store, shared by the commands that read one."""
    group = sub.add_argument_group(
        "replica", "where the replica is: --replica DIR, or --s3-bucket with its options"
    )
    group.add_argument("--replica", type=Path, metavar="DIR", help="a DirectoryStore's folder")
    group.add_argument("--s3-bucket", metavar="BUCKET", help="an S3Store's bucket")
    group.add_argument("--s3-prefix", metavar="PREFIX", default="", help="key prefix in it")
    group.add_argument(
        "--s3-endpoint-url", metavar="URL", help="an S3-compatible store (MinIO, R2, ...)"
    )
    group.add_argument("--s3-region", metavar="REGION", help="the bucket's region")
    group.add_argument(
        "--s3-path-style", action="store_true", help="address buckets as endpoint/bucket/key"
    )
    sub.set_defaults(replica_parser=sub)


def replica_store(args: argparse.Namespace) -> ReplicaStore:
    """The store named by the replica options (a usage error, exit status 2, if none or both).

    Credentials for S3 come from boto3's chain (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ...),
    never from the command line."""
    parser: argparse.ArgumentParser = args.replica_parser
    s3_only = [
        flag
        for flag, value in (
            ("--s3-prefix", args.s3_prefix),
            ("--s3-endpoint-url", args.s3_endpoint_url),
            ("--s3-region", args.s3_region),
            ("--s3-path-style", args.s3_path_style),
        )
        if value
    ]
    if args.replica is not None and args.s3_bucket is not None:
        parser.error("give either --replica DIR or --s3-bucket BUCKET, not both")
    if args.replica is not None:
        if s3_only:
            parser.error(f"{s3_only[0]} goes with --s3-bucket, not with --replica")
        if not args.replica.is_dir():
            raise FileNotFoundError(f"replica {args.replica} is not a directory")
        return DirectoryStore(args.replica)
    if args.s3_bucket is None:
        parser.error("say where the replica is: --replica DIR or --s3-bucket BUCKET")
    try:
        return S3Store(
            args.s3_bucket,
            prefix=args.s3_prefix,
            endpoint_url=args.s3_endpoint_url,
            region=args.s3_region,
            path_style=args.s3_path_style,
        )
    except ValueError as exc:
        parser.error(str(exc))


def reads_replica(args: argparse.Namespace) -> bool:
    """Whether ``inspect``/``sql`` read a replica (``--from-replica``); the replica options
    without it are a usage error rather than silently ignored."""
    if args.from_replica:
        return True
    given = [
        flag
        for flag, value in (
            ("--at", args.at),
            ("--replica", args.replica),
            ("--s3-bucket", args.s3_bucket),
            ("--s3-prefix", args.s3_prefix),
            ("--s3-endpoint-url", args.s3_endpoint_url),
            ("--s3-region", args.s3_region),
            ("--s3-path-style", args.s3_path_style),
        )
        if value
    ]
    if given:
        args.replica_parser.error(
            f"{given[0]} reads a replica: add --from-replica (and give no runtime DIR)"
        )
    return False


def replica_text(args: argparse.Namespace) -> str:
    if args.replica is not None:
        return f"the replica {args.replica}"
    return f"the replica s3://{args.s3_bucket}/{args.s3_prefix}"

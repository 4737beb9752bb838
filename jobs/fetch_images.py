"""Download the images a WikiWeb2M input names into an images directory for preprocessing.

Usage: python jobs/fetch_images.py --input TFRECORDS --output IMAGES_DIR [--concurrency N]
[--rate R] [--user-agent UA] [--splits train val test] [--limit N] [--num-cpus N]

Reads every section_image_url of the TFRecords, deduplicates them on Ray Data and downloads
them in parallel with retries and back-off (429 / 5xx / timeouts), a per-host rate over the
whole cluster, content-type, size and decode checks and atomic writes. Writes
IMAGES_DIR/manifest.csv (url,path), failures.csv and fetch_report.json; then
`python jobs/preprocess.py --dataset wikiweb2m --input TFRECORDS --images IMAGES_DIR`.
A rerun fetches only what is missing or failed. Joins RAY_ADDRESS / a running cluster.
Exit status: 0 when every URL is on disk, 3 when some failed (the report says why), 1 on bad
input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from g4mm.console import add_verbose_argument, apply_verbosity
from g4mm.pipeline.input_errors import INPUT_ERRORS, input_error_message

#: Default User-Agent: Wikimedia's policy asks bots to identify themselves with a contact.
DEFAULT_USER_AGENT = (
    "g4mm-fetch-images/0.1 (research dataset download; set --user-agent with your contact)"
)
_SPLITS = ("train", "val", "test")


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python jobs/fetch_images.py --input wikiweb2m/ --output images/ "
        "--user-agent 'my-lab-bot/1.0 (me@lab.org)'",
    )
    parser.add_argument("--input", required=True, help="WikiWeb2M TFRecord file or directory")
    parser.add_argument("--output", required=True, help="images directory (created)")
    parser.add_argument(
        "--concurrency",
        type=_positive(int),
        default=32,
        help="requests in flight over the whole cluster (default 32)",
    )
    parser.add_argument(
        "--threads-per-task",
        type=_positive(int),
        default=8,
        help="downloader threads per Ray task (default 8)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="requests/s per host over the whole cluster; 0: no limit (default 10)",
    )
    parser.add_argument(
        "--user-agent",
        default=DEFAULT_USER_AGENT,
        help="User-Agent header; put a contact in it (Wikimedia asks for one)",
    )
    parser.add_argument(
        "--splits", nargs="+", choices=_SPLITS, help="only pages of these splits (default: all)"
    )
    parser.add_argument(
        "--limit", type=_positive(int), help="at most N distinct URLs, the first in URL order"
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=30.0,
        help="seconds per connect / read and for a whole body (default 30)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries after the first attempt on 429/5xx/timeouts (default 3)",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="first back-off in s, doubling; Retry-After wins (default 1)",
    )
    parser.add_argument(
        "--max-mb",
        type=_positive(float),
        default=50.0,
        help="larger images fail as too_large (default 50)",
    )
    parser.add_argument("--num-cpus", type=_positive(int), help="CPUs of a locally started Ray")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_verbosity(args)
    if not Path(args.input).exists():
        parser.error(f"--input {args.input}: no such file or directory")
    if args.retries < 0 or args.backoff < 0 or args.rate < 0:
        parser.error("--retries, --backoff and --rate must be >= 0")
    if args.user_agent == DEFAULT_USER_AGENT:
        print(
            "note: the default User-Agent has no contact; Wikimedia asks for one "
            "(--user-agent 'name/version (you@example.org)')",
            file=sys.stderr,
        )

    from g4mm.fetch.download import FetchPolicy  # imports requests / PIL: after the checks
    from g4mm.fetch.run import FetchOptions, OutputBusyError, fetch_images

    policy = FetchPolicy(
        user_agent=args.user_agent,
        timeout_s=args.timeout,
        retries=args.retries,
        backoff_s=args.backoff,
        max_bytes=int(args.max_mb * 1024**2),
    )
    options = FetchOptions(
        concurrency=args.concurrency,
        threads_per_task=args.threads_per_task,
        rate_per_host=args.rate,
        splits=tuple(args.splits) if args.splits else None,
        limit=args.limit,
    )
    try:
        report = fetch_images(args.input, args.output, policy, options, num_cpus=args.num_cpus)
    except (*INPUT_ERRORS, OutputBusyError) as exc:
        print(f"error: {input_error_message(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 3 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

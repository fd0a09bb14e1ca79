"""`ddss submit NAME`: run jobs/NAME.py on a Ray cluster, then follow its logs."""
from __future__ import annotations

import sys

NAME = "submit"
HELP = ("Submit jobs/NAME.py with configs/NAME.yaml to a Ray cluster (like `ray job submit "
        "--working-dir .`), then follow its status and logs. Arguments after -- go to the job.")
EXAMPLE = "ddss submit evaluate --address http://127.0.0.1:8265 -- --set num_samples=2000"


def add_arguments(p):
    p.add_argument("name", help="the job: the NAME of a file jobs/NAME.py (a name, not a path)")
    p.set_defaults(extra=[])
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--config", help="config file relative to the project (default configs/NAME.yaml)")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return at once")
    p.usage = "ddss submit NAME [--address URL] [--config PATH] [--no-follow] [--allow-module PKG] [-- JOB ARGS ...]"
    # Python 3.11's argparse cannot take a '*' positional after options, so everything after
    # the first "--" is split off here and handed to the job untouched.
    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(args or [])
        extra = args[args.index("--") + 1:] if "--" in args else []
        ns, rest = parse_known(args[:len(args) - len(extra) - 1] if "--" in args else args, namespace)
        ns.extra = extra
        return ns, rest

    p.parse_known_args = parse_known_args


def run(args) -> int:
    from pipeline.distributed import jobs_client

    client, job_id = jobs_client.submit(args.name, args.address, args.extra, config_path=args.config)
    print(f"submitted {job_id}", file=sys.stderr)
    if args.no_follow:
        print(job_id)
        return 0
    try:
        status = jobs_client.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\njob {job_id} keeps running; stop it with: ddss jobs stop {job_id} --address ...", file=sys.stderr)
        raise
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1

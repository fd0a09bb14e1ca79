"""`ddss jobs status|logs|stop|list`: look after jobs submitted to a Ray cluster."""
from __future__ import annotations

import sys

NAME = "jobs"
HELP = "Status, logs or stop of a job on a Ray cluster (or list them)."
EXAMPLE = "ddss jobs logs ddss-evaluate-20261125-101500-1a2b3c4d --address http://127.0.0.1:8265"


def add_arguments(p):
    p.add_argument("action", choices=["status", "logs", "stop", "list"])
    p.add_argument("job_id", nargs="?", help="the job's submission id (not for list)")
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: keep streaming until the job ends")


def run(args) -> int:
    from pipeline.distributed import jobs_client
    from pipeline.errors import UserError

    if args.action != "list" and not args.job_id:
        raise UserError(f"`ddss jobs {args.action}` needs a JOB_ID")
    c = jobs_client.client(args.address)
    if args.action == "list":
        for job in sorted(c.list_jobs(), key=lambda j: j.start_time or 0):
            if job.submission_id:
                print(jobs_client.info_line(c, job.submission_id))
        return 0
    if args.action == "status":
        print(jobs_client.info_line(c, args.job_id))
        return 0
    if args.action == "logs":
        if args.follow:
            status = jobs_client.follow(c, args.job_id)
            print(f"job {args.job_id}: {status}", file=sys.stderr)
        else:
            jobs_client.status(c, args.job_id)  # one-line error for an unknown job
            sys.stdout.write(c.get_job_logs(args.job_id))
        return 0
    jobs_client.status(c, args.job_id)  # one-line error for an unknown job
    stopped = c.stop_job(args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'} "
          f"({jobs_client.status(c, args.job_id)})")
    return 0

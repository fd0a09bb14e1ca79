"""Submitting the files in jobs/ to a Ray cluster and following them (Ray's JobSubmissionClient).

`submit("evaluate", address)` does what
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/evaluate.yaml
does, with the large local folders left out of the upload (EXCLUDES), after checking the
config locally with the job's own loader (so a typo fails here, not on the cluster).
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import sys
from pathlib import Path

from pipeline.config import parse_sets
from pipeline.errors import UserError

# Never uploaded with the working directory: environments, run outputs, VCS data, caches.
EXCLUDES = [".venv", ".venv-tfgan", "runs", ".git", "bench/out", ".cache", "**/__pycache__", "*.egg-info",
            ".pytest_cache", "tests/data/kuberay"]  # the vendored CRDs (4 MB) are for tests only
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ALLOW_ENV = "DDSS_ALLOW_MODULES"  # pipeline.models.build.ALLOW_ENV (not imported here: no JAX on submit)


def _is_checkout(root: Path) -> bool:
    return (root / "jobs").is_dir() and (root / "pipeline").is_dir() and (root / "pyproject.toml").is_file()


def project_root() -> Path:
    """The checkout whose jobs/, configs/ and pipeline/ a job runs from (the working directory
    `ddss submit` uploads): the one this package is installed from (`pip install -e`), from any
    directory; else the current directory if it is a checkout. `pip install .` ships the default
    configs inside the package (pipeline/configs) but not jobs/: such an install submits from a
    checkout only."""
    installed = Path(__file__).resolve().parents[2]
    for root in (installed, Path.cwd()):
        if _is_checkout(root):
            return root
    raise UserError(f"no jobs/ here or beside the installed package ({installed / 'pipeline'}): jobs are submitted "
                    "from a checkout of ddss-pipeline; run this in one, or install it with pip install -e CHECKOUT")


def job_names(root: Path | None = None) -> list[str]:
    """Names of the jobs in root/jobs (jobs/NAME.py)."""
    root = root or project_root()
    return sorted(p.stem for p in (root / "jobs").glob("*.py") if not p.stem.startswith("_"))


def import_job(name: str, root: Path | None = None):
    """The module jobs/NAME.py (imported from its file: jobs/ is not a package). NAME must be
    one of job_names(root): a path (../x, /tmp/x) or a private jobs/_NAME.py is refused."""
    root = root or project_root()
    names = job_names(root)
    if name not in names:
        raise UserError(f"no job {name!r} in {root / 'jobs'}; jobs: {', '.join(names) or 'none'}")
    path = root / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ddss_job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def check_job_config(name: str, config_path: str, root: Path | None = None, extra_args=()):
    """Validate `config_path` (relative to root) and the --set overrides among extra_args with
    jobs/NAME.py's load_config, if it has one."""
    root = root or project_root()
    job = import_job(name, root)
    path = root / config_path
    if not path.is_file():
        raise UserError(f"config {config_path} not found under {root}")
    loader = getattr(job, "load_config", None)
    if loader is None:
        return None
    known, _ = _job_parser("", config_path).parse_known_args(list(extra_args))
    return loader(str(path), parse_sets(known.set))


def entrypoint(name: str, config_path: str | None = None, extra_args=()) -> str:
    """The job's command line, run in the uploaded working directory."""
    config_path = config_path or f"configs/{name}.yaml"
    return shlex.join(["python", f"jobs/{name}.py", "--config", config_path, *extra_args])


def resolve_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS; a bare host:port means its dashboard over http."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster given: pass --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    return address


def client(address: str | None):
    """A JobSubmissionClient for the cluster at `address` (UserError if it cannot be reached)."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot reach the Ray job server at {address}: {first}") from None


def submit(name: str, address: str | None, extra_args=(), config_path: str | None = None,
           submission_id: str | None = None, root: Path | None = None) -> tuple[object, str]:
    """Submit jobs/NAME.py; returns (client, job id)."""
    from pipeline.rundir import new_run_id

    root = root or project_root()
    config_path = config_path or f"configs/{name}.yaml"
    check_job_config(name, config_path, root, extra_args)
    c = client(address)
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES}
    allowed = os.environ.get(ALLOW_ENV)
    if allowed:  # the packages whose models the job may build (--allow-module), as here
        runtime_env["env_vars"] = {ALLOW_ENV: allowed}
    job_id = c.submit_job(
        entrypoint=entrypoint(name, config_path, extra_args),
        runtime_env=runtime_env,
        submission_id=submission_id or f"ddss-{name}-{new_run_id()}",
    )
    return c, job_id


def follow(c, job_id: str, out=None) -> str:
    """Stream the job's logs to `out` until it ends; returns its final status."""
    out = out or sys.stdout

    async def tail():
        async for lines in c.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return status(c, job_id)


def status(c, job_id: str) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    try:
        return str(c.get_job_status(job_id).value)
    except RuntimeError as e:
        raise UserError(f"job {job_id}: {str(e).strip().splitlines()[0]}") from None


def info_line(c, job_id: str) -> str:
    """One line: id, status, entrypoint and message."""
    try:
        info = c.get_job_info(job_id)
    except RuntimeError as e:
        raise UserError(f"job {job_id}: {str(e).strip().splitlines()[0]}") from None
    msg = f" ({info.message.strip().splitlines()[0]})" if info.message and info.message.strip() else ""
    return f"{job_id}  {info.status.value}  {info.entrypoint}{msg}"


def _job_parser(description: str, default_config: str):
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    return p


def parse_job_args(argv, description: str, default_config: str) -> tuple[str, dict]:
    """A job's command line: --config PATH and --set KEY=VALUE overrides (values read as YAML,
    dotted keys for nested sections). Returns (config path, overrides)."""
    args = _job_parser(description, default_config).parse_args(argv)
    return args.config, parse_sets(args.set)


def run_job(main, argv=None) -> int:
    """Run a job's main(argv): a UserError prints one line and exits 2, as the CLI does."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

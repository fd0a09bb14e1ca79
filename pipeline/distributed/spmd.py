"""The SPMD runner every training-like job uses (teacher training, DDSS search, distillation).

    result = run_spmd(loop_fn, loop_config, num_workers=2, run_dir=run_dir)

`loop_fn(ctx)` runs in every process with a `pipeline.distributed.context.SpmdContext`
(process index/count, the mesh over all devices, batch sharding, metrics, checkpoints) and
returns a JSON-able dict (or None) from process 0, which `run_spmd` returns.

num_workers >= 1 runs on Ray Train's JaxTrainer, one worker per host. On TPU/GPU Ray Train
initialises jax.distributed; on CPU this module does it (coordinator = rank 0's address,
gloo collectives). A dead worker makes Ray Train restart the whole group, up to
max_failures times; the loop must then resume from the run's latest checkpoint.
num_workers=0 runs `loop_fn` in this process, without Ray.

A UserError raised by `loop_fn` ends the run at once (no retries) and is re-raised here.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

from pipeline.errors import UserError


def run_spmd(
    loop_fn: Callable[[Any], dict | None],
    loop_config: dict,
    *,
    num_workers: int,
    run_dir,
    address: str | None = None,
    max_failures: int = 2,
    resources_per_worker: dict | None = None,
    worker_env: dict | None = None,
    pin_cores: bool = False,
    accelerator=None,
) -> dict | None:
    """Run `loop_fn(ctx)` SPMD over `num_workers` Ray Train workers (0: in this process).

    loop_config: plain data, available as ctx.config. run_dir: the run directory (made absolute;
    workers chdir elsewhere). address: a Ray cluster to join (default RAY_ADDRESS, else a local
    Ray on 127.0.0.1). resources_per_worker: e.g. {"CPU": 1} (default), {"GPU": 1} or {"TPU": 4};
    GPU/TPU resources select that platform. worker_env: extra environment variables for the
    workers. pin_cores: pin worker i to CPU core i (benchmarks holding a worker to one core).
    accelerator: a pipeline.accelerator.AcceleratorConfig (its resources unless
    resources_per_worker is given; its TPU topology and type go to Ray Train's ScalingConfig).
    A gpu/tpu worker whose JAX sees fewer such devices than it was given stops the job with a
    UserError naming its node; each worker's platform, local devices and node go into
    RUN_DIR/results.json["workers"].
    """
    from pipeline.accelerator import AcceleratorConfig

    accelerator = accelerator or AcceleratorConfig()
    if accelerator.accelerator == "tpu" and num_workers > 1 and not (accelerator.topology and accelerator.accelerator_type):
        raise UserError("a TPU job on several hosts needs --tpu-topology and --tpu-type (e.g. 2x2x2 and TPU-V4)")
    run_dir = os.path.abspath(os.fspath(run_dir))
    if num_workers < 0:
        raise UserError(f"--workers must be >= 0, got {num_workers}")
    os.makedirs(run_dir, exist_ok=True)
    if num_workers == 0:
        from pipeline.distributed.context import local_context

        ctx = local_context(run_dir, loop_config)
        try:
            return loop_fn(ctx)
        finally:
            ctx.close()  # the TensorBoard event files
    return _run_on_ray(
        loop_fn, loop_config, num_workers=num_workers, run_dir=run_dir, address=address,
        max_failures=max_failures, resources_per_worker=resources_per_worker or accelerator.resources(),
        worker_env=worker_env or {}, pin_cores=pin_cores, accelerator=accelerator,
    )


def _platform(resources: dict) -> str:
    if resources.get("TPU"):
        return "tpu"
    if resources.get("GPU"):
        return "gpu"
    return "cpu"


def _run_on_ray(loop_fn, loop_config, *, num_workers, run_dir, address, max_failures,
                resources_per_worker, worker_env, pin_cores, accelerator):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxConfig, JaxTrainer

    from pipeline.distributed.ray_init import ensure_ray

    ensure_ray(address)
    sink = _ResultSink()
    platform = _platform(resources_per_worker)
    # "cuda,cpu": a GPU worker without a GPU starts on the CPU, and _check_devices says so
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_PLATFORMS": "cuda,cpu"} if platform == "gpu" else {}
    tpu = dict(topology=accelerator.topology or None, accelerator_type=accelerator.accelerator_type or None)
    env.update({k: str(v) for k, v in worker_env.items()})
    trainer = JaxTrainer(
        _worker_main,
        train_loop_config={
            "loop_fn": loop_fn, "loop_config": loop_config, "run_dir": run_dir,
            "platform": platform, "pin_cores": pin_cores, "sink": sink,
            "devices": resources_per_worker.get(platform.upper(), 0),
        },
        jax_config=JaxConfig(use_tpu=platform == "tpu", use_gpu=platform == "gpu"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=platform == "gpu", use_tpu=platform == "tpu",
            resources_per_worker=resources_per_worker, **(tpu if platform == "tpu" else {}),
        ),
        run_config=RunConfig(
            name="ray_train",
            storage_path=run_dir,
            failure_config=FailureConfig(max_failures=max_failures),
            # no runtime_env unless needed: a worker with one cannot reuse a pooled process
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    trainer.fit()
    (kind, value), workers = sink.take()
    if workers:
        from pipeline import rundir

        rundir.update_results(run_dir, {"workers": sorted(workers, key=lambda w: w["rank"])})
    if kind == "user_error":
        raise UserError(value)
    return value


class _ResultSink:
    """A zero-CPU actor that receives process 0's return value (or UserError message)."""

    def __init__(self):
        import ray

        @ray.remote(num_cpus=0)
        class Sink:
            def __init__(self):
                self.item, self.workers = ("result", None), {}

            def put(self, kind, value):
                if self.item[0] != "user_error":  # the first error is the one reported
                    self.item = (kind, value)

            def worker(self, info):
                self.workers[info["rank"]] = info  # a restarted group's replaces the first's

            def get(self):
                return self.item, list(self.workers.values())

        self._actor = Sink.remote()

    def put(self, kind: str, value):
        import ray

        ray.get(self._actor.put.remote(kind, value))

    def worker(self, info: dict):
        import ray

        ray.get(self._actor.worker.remote(info))

    def take(self):
        import ray

        item = ray.get(self._actor.get.remote())
        ray.kill(self._actor)
        return item


def _free_address() -> str:
    import ray

    ip = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        port = s.getsockname()[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def pin_to_core(rank: int):
    """Restrict every thread of this process to one allowed core (chosen by rank)."""
    cores = sorted(os.sched_getaffinity(0))
    core = {cores[rank % len(cores)]}
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), core)
        except OSError:  # thread exited meanwhile
            pass


def _seen() -> dict:
    """What this process's JAX uses: platform, local device count, process index."""
    import jax

    try:
        return {"platform": jax.devices()[0].platform, "devices": jax.local_device_count(),
                "process": jax.process_index()}
    except RuntimeError:  # no backend starts (e.g. JAX_PLATFORMS=tpu without libtpu)
        return {"platform": "none", "devices": 0, "process": None}


def _check_devices(platform: str, wanted) -> str | None:
    """None if JAX sees this worker's `wanted` devices of `platform` (cpu: always), else the
    one line that stops the job: the node and what JAX sees."""
    if platform == "cpu":
        return None
    import jax
    import ray

    try:
        devices = jax.devices()
        ok = devices[0].platform == platform and jax.local_device_count() >= wanted
        seen = str(jax.local_devices())
    except RuntimeError as e:  # e.g. libtpu missing: the backend JAX_PLATFORMS names does not start
        ok, seen = False, f"no {platform} ({str(e).splitlines()[0]})"
    if ok:
        return None
    return (f"node {ray.util.get_node_ip_address()}: the worker was given {wanted:g} {platform.upper()} but JAX "
            f"sees {seen}; install JAX for {platform} there (e.g. jax[{'cuda12' if platform == 'gpu' else 'tpu'}]) "
            f"or run with --accelerator cpu")


def _worker_main(payload: dict):
    """One Ray Train worker: set up multi-process JAX, run the loop, report its result."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    if payload["pin_cores"]:
        pin_to_core(tctx.get_local_rank())

    import logging

    if payload["platform"] == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: no GPU/TPU probing
    import jax

    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    own_distributed = payload["platform"] == "cpu" and world > 1
    if own_distributed:
        coordinator = broadcast_from_rank_zero(_free_address() if rank == 0 else None)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator, num_processes=world, process_id=rank, coordinator_bind_address=coordinator,
        )

    # after jax.distributed (it must come before any backend use), before the loop
    problem = _check_devices(payload["platform"], payload["devices"])
    sink = payload["sink"]
    sink.worker({"rank": rank, "node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                 **_seen()})
    if problem:
        sink.put("user_error", problem)  # every worker stops here: no loop, no collectives
        return

    from ray.train.v2._internal.execution import context as train_context

    from pipeline.distributed.context import SpmdContext, make_mesh

    # Ray Train logs every report at INFO ("Reporting training result N: ...") to the job's output
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    ctx = SpmdContext(
        run_dir=payload["run_dir"], config=payload["loop_config"], mesh=make_mesh(),
        process_index=jax.process_index(), process_count=jax.process_count(),
        on_report=lambda metrics: ray.train.report(metrics),  # the dashboard's Train view
    )
    try:
        out = ("result", payload["loop_fn"](ctx))
        ctx.close()  # every process: the last metrics to Ray Train, the event files closed
    except UserError as e:
        out = ("user_error", str(e))
    finally:
        ctx.close(send=False)
    if rank == 0 or out[0] == "user_error":
        sink.put(*out)
    if own_distributed:
        jax.distributed.shutdown()

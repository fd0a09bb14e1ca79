"""Why two CPU processes train slower than one: the digits teacher's gradient step timed in two
local processes joined by jax.distributed (gloo), each pinned to its own core, without Ray.

    .venv/bin/python bench/spmd_cpu.py [--repeats 20]

Per process, batch 64 rows each (ms per call, median of --repeats after warm-up):
- local: value_and_grad jitted on the process's own device (not on the global mesh);
- global, no communication: the same function under shard_map on the 2-process mesh, each
  device's gradient returned sharded (no collective in the program);
- train step: pipeline.train's (the gradient on the process's own devices, then one global
  update program: the mean of the processes' raveled gradients, Adam, EMA);
- all-reduce: a pmean of one float32 vector of the model's parameter count.
And the 1-process train step at batch 64 for reference. Writes bench/out/spmd_cpu.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
PER_PROCESS = 64


def _timed(fn, args, repeats):
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def worker(rank: int, nproc: int, port: int, repeats: int) -> dict:
    """One process of the measurement (run as a subprocess)."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=rank)
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from pipeline import schedules
    from pipeline.data import loading
    from pipeline.models import build
    from pipeline.teacher import config as tconfig
    from pipeline.teacher import train
    from pipeline.distributed.context import make_mesh
    from pipeline.distributed.grads import example_keys

    cfg = tconfig.load_config(os.path.join(ROOT, "configs", "digits_teacher.yaml"))
    images, labels = loading.load_data(cfg.data, "train")
    model, opt, sched = build.build_model(cfg.model, 10), train.make_optimizer(cfg.train), schedules.get(cfg.schedule)
    mesh = make_mesh()
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    host = jax.device_get(train.init_state(model, opt, images.shape[1:], 0))
    rows = slice(rank * PER_PROCESS, (rank + 1) * PER_PROCESS)
    keys = np.asarray(jax.random.key_data(example_keys(jax.random.key(0), PER_PROCESS * nproc)))
    local_batch = (images[rows], labels[rows], keys[rows])

    def loss(p, b):
        x, y, k = b
        return train.diffusion_loss(p, model, sched, (x, y, jax.random.wrap_key_data(k)), 0.1, 10)

    out = {"rank": rank, "processes": nproc}
    dev = jax.local_devices()[0]
    out["local_grad_ms"] = _timed(jax.jit(jax.value_and_grad(loss)), jax.device_put((host["params"], local_batch), dev), repeats)
    glob = lambda tree, s: jax.tree.map(lambda a: jax.make_array_from_process_local_data(s, np.asarray(a)), tree)  # noqa: E731
    params, batch = glob(host["params"], rep), glob(local_batch, dat)
    if nproc > 1:
        def nocomm(p, b):
            v, g = jax.value_and_grad(loss)(p, b)
            return v[None], ravel_pytree(g)[0][None]

        f = jax.jit(jax.shard_map(nocomm, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P("data"))))
        out["global_grad_no_comm_ms"] = _timed(f, (params, batch), repeats)
        flat = glob(np.ones((1, ravel_pytree(host["params"])[0].size), np.float32), dat)
        out["all_reduce_ms"] = _timed(jax.jit(lambda a: jnp.mean(a, 0), out_shardings=rep), (flat,), repeats)
    step = train.make_train_step(model, sched, opt, dataclasses.replace(cfg.train, batch_size=PER_PROCESS * nproc), 10, mesh)
    state = glob(host, rep)

    def one_step(x, y):
        nonlocal state
        state, loss, _ = step(state, x, y, rows)
        return loss

    out["train_step_ms"] = _timed(one_step, local_batch[:2], repeats)
    return out


def run(nproc: int, repeats: int) -> list:
    port = 20000 + os.getpid() % 10000
    procs = [subprocess.Popen(["taskset", "-c", str(r), sys.executable, __file__, "--worker", str(r), str(nproc), str(port),
                               "--repeats", str(repeats)], stdout=subprocess.PIPE, text=True) for r in range(nproc)]
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"worker failed (exit {p.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--worker", nargs=3, type=int, metavar=("RANK", "NPROC", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)), flush=True)
        return 0
    load0 = os.getloadavg()[0]
    one, two = run(1, args.repeats)[0], run(2, args.repeats)
    result = {"bench": "spmd_cpu", "date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)),
              "load_average_start_end": [load0, os.getloadavg()[0]], "rows_per_process": PER_PROCESS,
              "command": "python bench/spmd_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "one_process": one, "two_processes": two}
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "spmd_cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    r0 = two[0]
    print(f"\ndigits teacher gradient step, {PER_PROCESS} rows per process, one core per process (ms, median)")
    print(f"{'':38} {'1 process':>10} {'2 processes':>12}")
    print(f"{'value_and_grad, jit on own device':38} {one['local_grad_ms']:>10.1f} {r0['local_grad_ms']:>12.1f}")
    print(f"{'value_and_grad, global mesh, no comm':38} {'-':>10} {r0['global_grad_no_comm_ms']:>12.1f}")
    print(f"{'all-reduce of the gradient vector':38} {'-':>10} {r0['all_reduce_ms']:>12.1f}")
    print(f"{'train step (pipeline.train)':38} {one['train_step_ms']:>10.1f} {r0['train_step_ms']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

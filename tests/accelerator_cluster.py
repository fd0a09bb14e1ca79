"""A multi-node ray.cluster_utils.Cluster (head: CPUs only; a node declaring a GPU; a node
declaring a TPU v4 host, {"TPU": 4} plus the slice-head resource) on which `ddss train-teacher
--accelerator gpu|tpu` runs: run as a script by tests/test_accelerator.py (its own Ray, apart
from the test session's). Prints one JSON line: per kind, the job's exit status, its stderr's
error lines and last line, its run's results.json["workers"] and the node ids of the GPU and TPU nodes."""
import json
import os
import subprocess
import sys

import ray
from ray.cluster_utils import Cluster

TINY = ["--set", "model.kwargs={ch: 8, ch_mult: [1], num_res_blocks: 1}", "--set", "train.steps=2",
        "--set", "train.batch_size=8", "--set", "sample.fd_samples=0", "--set", "sample.steps=4",
        "--set", "sample.per_class=1"]


def main(out_dir):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    gpu = cluster.add_node(num_cpus=1, num_gpus=1)
    tpu = cluster.add_node(num_cpus=1, resources={"TPU": 4, "TPU-v4-16-head": 1})
    cluster.wait_for_nodes()
    env = dict(os.environ, RAY_ADDRESS=cluster.address, JAX_PLATFORMS="")
    env.pop("XLA_FLAGS", None)
    out = {"gpu_node": gpu.node_id, "tpu_node": tpu.node_id}
    try:
        for kind, n in (("gpu", 1), ("tpu", 4)):
            run_dir = os.path.join(out_dir, kind)
            done = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "train-teacher", "--workers", "1",
                                   "--accelerator", kind, "--devices-per-worker", str(n), "--run-dir", run_dir, *TINY],
                                  env=env, capture_output=True, text=True, timeout=240)
            results = os.path.join(run_dir, "results.json")
            workers = json.load(open(results)).get("workers") if os.path.exists(results) else None
            lines = done.stderr.strip().splitlines()
            # the CLI's error line (Ray's own processes may log after it, e.g. about the test session's Ray)
            errors = [line for line in lines if line.startswith("ddss train-teacher: error:")]
            out[kind] = {"rc": done.returncode, "errors": errors, "last": lines[-1] if lines else "", "workers": workers}
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])

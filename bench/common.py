"""What the digits benchmarks share: the digits teacher (configs/digits_teacher.yaml trained for
TEACHER_STEPS steps instead of its 700, once, under bench/out/teacher) and one scored row (FD and KID in digit-classifier
features against the test split, generated in this process without Ray)."""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
TEACHER_DIR = os.path.join(OUT, "teacher")
CACHE_DIR = os.path.join(ROOT, ".cache")
TEACHER_STEPS = 1200


def default_teacher(run_dir: str = TEACHER_DIR) -> str:
    """The teacher of `ddss train-teacher` with the default digits config and TEACHER_STEPS steps,
    trained here the first time (an interrupted training is resumed); its results.json holds the
    training time and FD."""
    from pipeline.teacher import config as tconfig
    from pipeline.teacher.train import reuse_or_train

    def log(state, path):
        if state != "reuse":
            print(f"training the digits teacher ({TEACHER_STEPS} steps) in {path} ...", file=sys.stderr)

    cfg = tconfig.load_config(os.path.join(ROOT, "configs", "digits_teacher.yaml"),
                              {"sample.cache_dir": CACHE_DIR, "train.steps": TEACHER_STEPS, "train.checkpoint_every": 400})
    return reuse_or_train(cfg, run_dir, log=log)


def score(problem, sampler: str, K: int, stride: str, n: int, seed: int = 0) -> dict:
    """FD / KID of n samples of `sampler` at K steps (same seeds for every sampler), and the time."""
    from pipeline.app.artefacts import eval_spec
    from pipeline.evaluation import evaluate_local

    t = time.time()
    m = evaluate_local(eval_spec(problem, sampler, K, n, stride=stride, batch_size=500, seed=seed))
    print(f"  {sampler.split(':')[0]} ({stride}) K={K}: FD {m['fd']:.4g} KID {m['kid']:.4g} [{time.time() - t:.0f} s]",
          file=sys.stderr)
    return {"fd": m["fd"], "kid": m["kid"], "eval_s": time.time() - t}


def machine(load0: float) -> dict:
    import platform

    return {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "load_average_start_end": [load0, os.getloadavg()[0]]}

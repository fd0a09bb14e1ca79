"""The evaluation actor: what runs inside each Ray actor of an EvalPool (pipeline.distributed.
pool), and the Ray options it is started with. A plain class, usable without Ray."""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

KEEP_EVALUATORS = 4  # compiled evaluations an actor keeps (EvalPool.run_many interleaves specs)


class EvalActor:
    """One evaluation worker, kept across evaluations: `ready()` imports JAX and answers; every
    call names its evaluation (a number) and spec; the actor builds that spec's Evaluator on the
    first call (there, so that a bad input comes back as its own error) and keeps the model and
    feature function of each problem it has seen (by the problem's key) for later specs."""

    def __init__(self, pin_core: int | None = None):
        if pin_core is not None:
            from pipeline.distributed.spmd import pin_to_core

            pin_to_core(pin_core)
        self.evaluators = collections.OrderedDict()  # evaluation number -> Evaluator, the latest few
        self.problems: dict = {}  # problem key -> Problem whose factories return the built objects

    def ready(self, resources: dict | None = None) -> tuple[str, str]:
        """Import JAX (before any work) and check that it sees the GPUs or TPU chips among this
        actor's Ray `resources` (else a UserError: one line naming the node and what JAX sees);
        returns (node id, the platform JAX uses)."""
        import ray

        import jax

        from pipeline.accelerator import from_resources
        from pipeline.distributed.spmd import _check_devices
        from pipeline.errors import UserError

        wanted = from_resources(resources)
        problem = _check_devices(wanted.accelerator, wanted.devices_per_worker)
        if problem:
            raise UserError(problem)
        return ray.get_runtime_context().get_node_id(), jax.devices()[0].platform

    def _problem(self, key: str, problem):
        if key not in self.problems:
            model = problem.model()
            features = problem.features() if problem.features is not None else None
            self.problems[key] = dataclasses.replace(
                problem, model=lambda: model, features=None if features is None else (lambda: features))
        return self.problems[key]

    def _evaluator(self, number: int, key: str, spec):
        from pipeline.evaluation import Evaluator

        if number not in self.evaluators:
            self.evaluators[number] = Evaluator(dataclasses.replace(spec, problem=self._problem(key, spec.problem)))
            while len(self.evaluators) > KEEP_EVALUATORS:
                self.evaluators.popitem(last=False)
        return self.evaluators[number]

    def run(self, number: int, key: str, spec, block_start: int, block_stop: int, keep: int = 0):
        """(RangeResult of blocks [block_start, block_stop), the samples among the first `keep`
        indices that these blocks hold, or None)."""
        ev = self._evaluator(number, key, spec)
        result = ev.run(block_start, block_stop)
        first, _ = spec.block_range(block_start)
        if first >= keep:
            return result, None
        images = [ev.samples(b)[0] for b in range(block_start, block_stop) if spec.block_range(b)[0] < keep]
        return result, np.concatenate(images)[: keep - first]

    def reference(self, number: int, key: str, spec):
        return self._evaluator(number, key, spec).reference()

    def prepare(self, fn, *args) -> None:
        """fn(*args) for its side effect (e.g. train and cache a feature network)."""
        fn(*args)


def actor_options(resources: dict | None = None, env: dict | None = None) -> dict:
    """Ray options of one evaluation actor: resources ({"CPU": 1}, {"GPU": 0.5}, {"TPU": 4}, ...)
    and its environment (JAX on CPU unless it holds an accelerator; no GPU preallocation so
    several actors can share a GPU)."""
    resources = dict(resources or {"CPU": 1})
    env_vars = {}
    if resources.get("GPU"):
        env_vars["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    elif not resources.get("TPU"):
        env_vars["JAX_PLATFORMS"] = "cpu"
    env_vars.update({k: str(v) for k, v in (env or {}).items()})
    opts = {
        "num_cpus": resources.pop("CPU", 0),
        "num_gpus": resources.pop("GPU", 0),
        "max_restarts": 0,
        "runtime_env": {"env_vars": env_vars},
    }
    if resources:
        opts["resources"] = resources
    return opts

"""The evaluation actor's code (pipeline/distributed/eval_actor.py), run in this process: the
ranges and reference of an Evaluator, the kept samples, a problem's model built once per actor,
the latest few evaluators kept; and the Ray options of each kind of resource."""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline import evaluation as E
from pipeline.distributed.eval_actor import KEEP_EVALUATORS, EvalActor, actor_options

PROBLEM = E.analytic_problem([[-2.0, 0.0], [2.0, 1.0]], [0.5, 0.3], [0.4, 0.6], reference_samples=64)


def spec(problem=PROBLEM, n=70, batch=32):
    return E.EvalSpec(problem, "ddpm", steps=3, num_samples=n, batch_size=batch, seed=2)


def test_ranges_reference_and_kept_samples_are_the_evaluators():
    s, actor = spec(), EvalActor()
    ev = E.Evaluator(s)
    first = np.concatenate([ev.samples(b)[0] for b in (0, 1)])
    result, images = actor.run(1, "p", s, 0, 2, keep=40)
    assert (result.block_start, result.block_stop) == (0, 2)
    np.testing.assert_array_equal(result.features, ev.run(0, 2).features)
    np.testing.assert_array_equal(images, first[:40])
    _, images = actor.run(1, "p", s, 1, 3, keep=40)  # samples 32..69: 32..39 are kept
    np.testing.assert_array_equal(images, first[32:40])
    assert actor.run(1, "p", s, 2, 3, keep=40)[1] is None and actor.run(1, "p", s, 0, 1)[1] is None
    np.testing.assert_array_equal(actor.reference(1, "p", s), ev.reference())


def test_a_problem_is_built_once_and_the_latest_evaluators_are_kept():
    built = []

    def model():
        built.append(1)
        return PROBLEM.model()

    problem = dataclasses.replace(PROBLEM, model=model)
    actor = EvalActor()
    numbers = range(1, KEEP_EVALUATORS + 3)
    for number in numbers:
        actor.reference(number, "p", spec(problem))
    assert len(built) == 1 and list(actor.evaluators) == list(numbers)[-KEEP_EVALUATORS:]
    kept = actor.evaluators[numbers[-1]]
    actor.reference(numbers[-1], "p", spec(problem))
    actor.reference(1, "p", spec(problem))  # evicted: a new evaluator, the same model
    assert actor.evaluators[numbers[-1]] is kept and list(actor.evaluators)[-1] == 1 and len(built) == 1
    actor.reference(99, "q", spec(problem))  # another problem key: built again
    assert len(built) == 2 and len(actor.evaluators) == KEEP_EVALUATORS


def test_actor_options_by_resource():
    assert actor_options() == {"num_cpus": 1, "num_gpus": 0, "max_restarts": 0,
                               "runtime_env": {"env_vars": {"JAX_PLATFORMS": "cpu"}}}
    gpu = {"GPU": 0.5}
    assert actor_options(gpu, env={"A": 1}) == {
        "num_cpus": 0, "num_gpus": 0.5, "max_restarts": 0,
        "runtime_env": {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "A": "1"}}}
    assert gpu == {"GPU": 0.5}  # the caller's dict is left alone
    tpu = actor_options({"CPU": 2, "TPU": 4})
    assert tpu["resources"] == {"TPU": 4} and tpu["num_cpus"] == 2 and tpu["runtime_env"]["env_vars"] == {}
    assert actor_options(env={"JAX_PLATFORMS": "cuda"})["runtime_env"]["env_vars"] == {"JAX_PLATFORMS": "cuda"}

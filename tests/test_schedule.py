"""The scheduler of EvalPool.run_many (pipeline/distributed/schedule.py) without a cluster: the
pool's Ray calls are replaced by in-process fakes (ray.get runs the call then), its actors are
real EvalActors, so a lost actor, a spec's user error and the order of results are set up
exactly; plus a Job's bookkeeping and PoolStats' steady rate."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from pipeline import evaluation as E
from pipeline.distributed import schedule
from pipeline.distributed.eval_actor import EvalActor
from pipeline.distributed.pool import EvalPool
from pipeline.errors import UserError

PROBLEM = E.analytic_problem([[-2.0, 0.0], [2.0, 1.0]], [0.5, 0.3], [0.4, 0.6], reference_samples=64)


def spec(sampler="ddim", n=40, batch=8, **kw):
    return E.EvalSpec(PROBLEM, sampler, steps=3, num_samples=n, batch_size=batch, seed=5, **kw)


class FakeRef:
    """An object ref: the call runs when ray.get asks for it (raising as Ray would)."""

    made = 0  # refs made so far: ray.wait answers the oldest ref first

    def __init__(self, actor, name, args):
        self.actor, self.name, self.args = actor, name, args
        self.serial = FakeRef.made = FakeRef.made + 1

    def get(self):
        if self.actor.dead:
            raise ray.exceptions.ActorDiedError()
        if self.name == "ready":
            return f"node-{self.actor.index}", "cpu"  # (node id, platform)
        try:
            return getattr(self.actor.impl, self.name)(*self.args)
        except Exception as e:  # an error of the call's input: the actor lives on
            raise ray.exceptions.RayTaskError(self.name, "traceback", e) from None


class FakeActor:
    """An actor handle: `actor.run.remote(...)` etc. make FakeRefs; dies on its `die_at`-th range."""

    def __init__(self, index, pin_core, die_at):
        self.index, self.impl, self.dead, self.die_at, self.ranges = index, EvalActor(pin_core), False, die_at, 0

    def __getattr__(self, name):
        actor = self

        class Method:
            @staticmethod
            def remote(*args):
                if name == "run":
                    actor.ranges += 1
                    actor.dead = actor.dead or actor.ranges == actor.die_at
                return FakeRef(actor, name, args)

        return Method


class FakeRay:
    """The actors started so far, in order, and the range call on which each will die."""

    def __init__(self):
        self.actors, self.die_at = [], {}


@pytest.fixture
def fake(monkeypatch):
    """The pool's and the scheduler's Ray calls, in-process."""
    fake = FakeRay()

    class Remote:
        def __init__(self, cls):
            assert cls is EvalActor

        def options(self, **opts):
            return self

        def remote(self, pin_core):
            fake.actors.append(FakeActor(len(fake.actors), pin_core, fake.die_at.get(len(fake.actors))))
            return fake.actors[-1]

    monkeypatch.setattr(ray, "remote", Remote)
    monkeypatch.setattr(ray, "put", lambda x: x)
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns: ([min(refs, key=lambda r: r.serial)], None))
    monkeypatch.setattr(ray, "kill", lambda actor: setattr(actor, "dead", True))
    monkeypatch.setattr(ray, "get", lambda ref: [r.get() for r in ref] if isinstance(ref, list) else ref.get())
    return fake


def merged(spec_, run):
    results, reference, stats, samples = run
    return E.merge(spec_, results)[0], reference, stats, samples


@pytest.fixture(scope="module")
def local():
    """The features, reference and first 16 samples of spec(), computed in this process."""
    s = spec()
    ev = E.Evaluator(s)
    return E.merge(s, [ev.run(0, s.num_blocks)])[0], ev.reference(), np.concatenate([ev.samples(b)[0] for b in (0, 1)])


def test_two_actors_give_the_local_numbers_and_kept_samples(fake, local):
    pool = EvalPool(2)
    (run,) = pool.run_many([spec()], blocks_per_range=2, progress=False, keep_samples=11)
    features, reference, stats, samples = merged(spec(), run)
    np.testing.assert_array_equal(features, local[0])
    np.testing.assert_array_equal(reference, local[1])
    np.testing.assert_array_equal(samples, local[2][:11])
    assert (stats.actors_started, stats.retried, len(stats.done)) == (2, 0, 3)  # 5 blocks in ranges of 2
    assert sum(n for _, n, _ in stats.done) == 40 and {a for _, _, a in stats.done} == {0, 1}
    assert sorted(pool.node_of.values()) == ["node-0", "node-1"] and len(pool.idle) == 2


def test_a_lost_actor_s_range_is_retried_on_a_replacement(fake, local):
    fake.die_at[1] = 2  # actor 1 dies on its second range
    seen = []
    pool = EvalPool(2, max_failures=1)
    (run,) = pool.run_many([spec()], progress=False, on_range_done=lambda info: seen.append(info))
    features, _, stats, _ = merged(spec(), run)
    np.testing.assert_array_equal(features, local[0])
    assert (stats.actors_started, stats.retried, pool.actors_started) == (3, 1, 3)
    assert fake.actors[1].dead and fake.actors[2] in pool.idle and fake.actors[1] not in pool.idle
    assert [info["done"] for info in seen] == [8, 16, 24, 32, 40]
    assert all(node.startswith("node-") for info in seen for _, node in info["busy"])


def test_more_losses_than_max_failures_fail_and_busy_actors_are_replaced(fake):
    fake.die_at.update({0: 1, 1: 1})  # actors 0 and 1 die on their first range
    pool = EvalPool(3, max_failures=1)
    with pytest.raises(RuntimeError, match="lost 2 actors \\(max_failures=1\\); last: ActorDiedError"):
        pool.run_many([spec()], progress=False)
    assert fake.actors[2].dead and pool.actors_started == 5  # busy when it failed: killed, replaced
    assert [a.index for a in pool.starting.values()] == [3, 4] and not pool.idle


def test_a_spec_s_user_error_takes_its_place_or_ends_the_run(fake, local):
    bad = spec("ddim:x")
    pool = EvalPool(2)
    good, err, again = pool.run_many([spec(), bad, spec()], progress=False, return_errors=True)
    assert isinstance(err, UserError) and "takes no artefact" in str(err)
    np.testing.assert_array_equal(merged(spec(), good)[0], local[0])
    np.testing.assert_array_equal(merged(spec(), again)[0], local[0])
    assert len(pool.references) == 1 and pool.evaluations == 3
    with pytest.raises(UserError, match="takes no artefact"):
        pool.run_many([bad], progress=False)
    with pytest.raises(UserError, match="num-samples"):
        pool.run_many([spec(n=1)], progress=False)


def test_a_job_records_ranges_in_any_order():
    s = spec(n=20, batch=8)
    job = schedule.Job(1, "k", None, s, keep=10, stats=schedule.PoolStats())
    r = lambda b0, b1, cpu: E.RangeResult(b0, b1, np.zeros((0, 2)), [], cpu)  # noqa: E731
    assert job.add(r(2, 3, 0.5), None, actor_number=1) == 4
    assert job.add(r(0, 2, 1.0), np.arange(10.0), actor_number=0) == 16
    results, reference, stats, samples = job.outcome({"k": "ref"})
    assert [x.block_start for x in results] == [2, 0] and reference == "ref" and job.done == 20
    assert stats.cpu_s == 1.5 and [(n, a) for _, n, a in stats.done] == [(4, 1), (16, 0)]
    np.testing.assert_array_equal(samples, np.arange(10.0))
    job.error = UserError("bad")
    assert job.outcome({}) is job.error


def test_steady_rate_leaves_out_each_actor_s_first_range():
    stats = schedule.PoolStats(done=[(1.0, 8, 0), (2.0, 8, 1), (3.0, 8, 0), (4.0, 12, 1)])
    assert stats.steady_rate() == (8 + 12) / (4.0 - 2.0)
    assert schedule.PoolStats(done=[(1.0, 8, 0), (2.0, 8, 1)]).steady_rate() is None
    assert schedule.PoolStats().steady_rate() is None


def test_an_actor_s_user_error_is_raised_as_itself():
    with pytest.raises(UserError, match="^bad$"):
        schedule.raise_task_error(ray.exceptions.RayTaskError("f", "tb", UserError("bad")))
    other = ray.exceptions.RayTaskError("f", "tb", ValueError("x"))
    with pytest.raises(ray.exceptions.RayTaskError):
        schedule.raise_task_error(other)

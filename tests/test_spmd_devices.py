"""Issue 13, point 4: a teacher training step, a DDSS search step and a distillation step (stage 1
and round 1) on 2 processes x 4 forced CPU devices, through the real Ray Train path (run_spmd:
JaxTrainer, jax.distributed over gloo, one mesh of 8 devices, one row of each batch per device),
equal the same steps on 1 process x 1 device.

Each step runs the project's own step function (teacher/train.py's and distill/loop.py's
make_train_step, ddss/search.py's make_train_step and kid_loss) from the same host values.
The teacher and the distillation use SGD (lr 1) instead of Adam: Adam's first step is
lr * sign(g), which hides the gradient's size and flips on float noise in near-zero entries;
with SGD the parameters' change is the gradient itself. The tiny U-Net's zero-initialised
output layers are perturbed (PERTURB): at zero, eps_theta = 0 and the student's x-prediction is
the target's, so stage 1's loss and gradient are exactly 0 and round 1's are float rounding noise
(loss ~1e-11, gradient noise that SGD amplifies: the ~1e-3 round-1 differences between device
counts seen before), and the teacher's gradient reaches only the last layer.

Tolerances (float32), on the norm of the parameters' change; a split-dependent draw, row or
reduction would be off by O(1). Measured differences (2 x 4 against 1 x 1) in brackets:
- teacher: 2e-5 [2e-7]. An eps-prediction loss: only the mean over 8 rows and XLA:CPU's
  batch-1 against batch-8 programs round differently.
- stage 1: 5e-5 [5e-6]; round 1: 5e-4 [3e-5]. Rows near t_start (alpha = 0.018: logsnr -8)
  compare x-predictions (z - sigma eps) / alpha, which amplify eps's rounding by sigma / alpha
  ~ 55 before student and target cancel (round 1: |x_student - x_target| ~ 0.1). On one
  device, the same rows differentiated one at a time and averaged move the gradient by 4e-6
  (stage 1) and 2e-5 (round 1), and round 1's float32 gradient is itself 4e-5 from a float64
  computation of the same draws, its 4-device gradient no further.
- DDSS: the loss and the KID gradient 1e-5 [1e-7] (features all-gathered, the loss computed on
  the whole batch); after Adam's first step the parameters 1e-5 relative [2e-7].
"""
import sys

import numpy as np
import pytest
from forced_devices import call_with_devices, xla_flags

from pipeline import rundir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

B = 8  # rows of the teacher's and the distillation's global batch: one per device on 2 x 4
DDSS_BATCH = 32
LR = 1.0
PERTURB = 0.05  # added to every U-Net weight (times N(0, 1), a fixed seed): see the docstring
TINY = {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}


def _ravel(tree) -> list:
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(tree)[0], np.float32).tolist()


def _unet():
    """(teacher config, model, perturbed parameters as NumPy), the same in every process."""
    import jax
    import optax

    from pipeline.teacher import train
    from pipeline.teacher.config import load_config

    cfg = load_config(None, {"model.kwargs": TINY})
    model = train.build_model(cfg.model, 10)
    params = jax.device_get(train.init_state(model, optax.sgd(LR), (8, 8, 1), 0)["params"])
    rng = np.random.default_rng(5)
    leaves, tree = jax.tree.flatten(params)
    return cfg, model, jax.tree.unflatten(tree, [(a + PERTURB * rng.standard_normal(a.shape)).astype(np.float32)
                                                 for a in leaves])


def _batch(seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (B, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, B).astype(np.int32)


def _teacher_step(ctx, cfg, model, params):
    import jax
    import optax

    from pipeline import schedules
    from pipeline.teacher import train

    optimizer = optax.sgd(LR)
    state = ctx.replicate({"params": params, "ema": params, "opt": optimizer.init(params), "step": np.int32(0),
                           "key": jax.random.key_data(jax.random.key(1))})
    step = train.make_train_step(model, schedules.get(cfg.schedule), optimizer, cfg.train, 10, ctx.mesh)
    x0, y = _batch(1)
    rows = ctx.local_rows(B)
    state, loss, ok = step(state, x0[rows], y[rows], rows)
    return {"loss": float(loss), "ok": bool(ok), "params": _ravel(ctx.gather(state["params"]))}


def _distill_step(ctx, r, cfg, model, params):
    import jax
    import optax

    from pipeline import schedules
    from pipeline.distill import config as dconfig
    from pipeline.distill import loop
    from pipeline.teacher.model import Teacher

    teacher = Teacher(model, params, schedules.get(cfg.schedule), cfg, (8, 8, 1), 10, 0)
    dcfg = dconfig.load({"teacher": "t", "start_steps": 4, "stage1": {"batch": B}, "rounds": {"batch": B}})
    optimizer = optax.sgd(LR)
    state = ctx.replicate({"params": params, "opt": optimizer.init(params), "step": np.int32(0),
                           "key": jax.random.key_data(jax.random.fold_in(jax.random.key(3), r))})
    step = loop.make_train_step(loop.make_loss(dcfg, r, teacher), optimizer, ctx.mesh, B)
    x0, y = _batch(2 + r)
    rows = ctx.local_rows(B)
    state, loss, ok = step(state, ctx.replicate(params), x0[rows], y[rows], rows)
    return {"loss": float(loss), "ok": bool(ok), "params": _ravel(ctx.gather(state["params"]))}


def _ddss_step(ctx):
    """KID loss and gradient at DDIM's GGDM parameters (search step 1's point), then search step 1."""
    import jax
    import jax.numpy as jnp

    from pipeline import ddss
    from pipeline.ddss.chain import Chain, kid_loss
    from pipeline.ddss.problem import build_problem
    from pipeline.ddss.search import TRAIN, init_state, make_train_step

    # 256 reference samples: XLA constant-folds the loss's kernel of the captured reference (2000 x 2000: seconds)
    cfg = ddss.load_config(None, {"gmm": "ring2d", "steps": 4, "batch_size": DDSS_BATCH, "learning_rate": 0.01,
                                  "reference_samples": 256, "workers": 0})
    problem = build_problem(cfg)
    chain = Chain(problem.model, problem.feature_fn, cfg.guidance)
    state = ctx.replicate(jax.device_get(init_state(cfg, problem.model.schedule)))
    loss = kid_loss(chain, problem.reference, ctx.mesh, cfg.remat)

    def value_and_grad(s):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(s["key"]), TRAIN), s["step"])
        return jax.value_and_grad(loss)(s["params"], key, jnp.arange(cfg.batch_size))

    value, grads = jax.jit(value_and_grad, out_shardings=ctx.replicated)(state)
    step = jax.jit(make_train_step(chain, problem.reference, ctx.mesh, cfg), out_shardings=ctx.replicated)
    new, step_loss, norm, finite = step(state)
    return {"loss": float(value), "grad": _ravel(ctx.gather(grads)), "step_loss": float(step_loss),
            "grad_norm": float(norm), "ok": bool(finite), "before": _ravel(ctx.gather(state["params"])),
            "params": _ravel(ctx.gather(new["params"]))}


def steps_loop(ctx) -> dict:
    """The four steps on ctx's mesh (every process runs it; process 0's result comes back)."""
    cfg, model, params = _unet()
    return {
        "processes": ctx.process_count, "devices": ctx.num_devices, "before": _ravel(params),
        "teacher": _teacher_step(ctx, cfg, model, params),
        "stage1": _distill_step(ctx, 0, cfg, model, params),
        "round1": _distill_step(ctx, 1, cfg, model, params),
        "ddss": _ddss_step(ctx),
    }


def one_by_one(run_dir):
    """steps_loop in this process, no Ray (run by call_with_devices(1, ...): one device)."""
    from pipeline.distributed.spmd import run_spmd

    return run_spmd(steps_loop, {}, num_workers=0, run_dir=run_dir)


@pytest.fixture(scope="module")
def two_by_four(local_ray, tmp_path_factory):
    """steps_loop on 2 Ray Train workers, each with 4 forced CPU devices; (result, results.json workers)."""
    import ray.cloudpickle

    from pipeline.distributed.spmd import run_spmd

    run_dir = tmp_path_factory.mktemp("two-by-four")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        out = run_spmd(steps_loop, {}, num_workers=2, run_dir=run_dir, max_failures=0,
                       worker_env={"XLA_FLAGS": xla_flags(4)})
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return out, rundir.read_results(run_dir)["workers"]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """steps_loop on 1 process x 1 device (a fresh Python: this one may see other devices)."""
    return call_with_devices(1, "test_spmd_devices", "one_by_one", str(tmp_path_factory.mktemp("one-by-one")), timeout=1800)


def _same_change(got, want, before, rtol):
    """The parameters' change agrees to rtol of its norm (and is far above float32's rounding of them)."""
    before = np.asarray(before, np.float64)
    d_got, d_want = np.asarray(got, np.float64) - before, np.asarray(want, np.float64) - before
    assert np.linalg.norm(d_want) > 1e3 * np.finfo(np.float32).eps * np.linalg.norm(before)
    err = np.linalg.norm(d_got - d_want) / np.linalg.norm(d_want)
    assert err <= rtol, f"the parameters' change differs by {err:.2e} of its norm (tolerance {rtol:.0e})"


def test_two_processes_of_four_devices_make_one_mesh_of_eight(two_by_four, one):
    out, workers = two_by_four
    assert (out["processes"], out["devices"]) == (2, 8)
    assert [(w["rank"], w["process"], w["platform"], w["devices"]) for w in workers] == [(0, 0, "cpu", 4), (1, 1, "cpu", 4)]
    assert (one["processes"], one["devices"]) == (1, 1)
    assert out["before"] == one["before"]  # the same starting parameters in every process


def test_teacher_step_equals_one_device(two_by_four, one):
    got, want = two_by_four[0]["teacher"], one["teacher"]
    assert got["ok"] and want["ok"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    _same_change(got["params"], want["params"], one["before"], 2e-5)


@pytest.mark.parametrize("stage, rtol", [("stage1", 5e-5), ("round1", 5e-4)])
def test_distillation_step_equals_one_device(two_by_four, one, stage, rtol):
    got, want = two_by_four[0][stage], one[stage]
    assert got["ok"] and want["ok"] and want["loss"] > 1e-4  # a real loss, not student = target
    assert got["loss"] == pytest.approx(want["loss"], rel=rtol)
    _same_change(got["params"], want["params"], one["before"], rtol)


def test_ddss_gradient_and_step_equal_one_device(two_by_four, one):
    got, want = two_by_four[0]["ddss"], one["ddss"]
    assert got["ok"] and want["ok"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5) and got["step_loss"] == pytest.approx(got["loss"], rel=1e-6)
    g_got, g_want = np.asarray(got["grad"]), np.asarray(want["grad"])
    assert np.linalg.norm(g_want) > 0 and np.linalg.norm(g_got - g_want) <= 1e-5 * np.linalg.norm(g_want)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    assert got["before"] == want["before"]
    np.testing.assert_allclose(got["params"], want["params"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(want["params"], want["before"])

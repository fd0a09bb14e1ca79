"""DDSS search on a Gaussian mixture with its exact denoiser: the loss against a float64 KID written
here, the sharded gradient on 2 real Ray workers against one process, SIGKILL + resume against an
uninterrupted run, divergence, the artefact, and bad input."""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import checkpoint, config, ddss, rundir, samplers
from pipeline.ddss.chain import Chain, kid_loss
from pipeline.ddss.problem import build_problem
from pipeline.ddss.search import init_state
from pipeline.errors import UserError
from pipeline.metrics import frechet_distance
from pipeline.samplers import ggdm, linear

SEARCH = {"gmm": "ring2d", "steps": 4, "batch_size": 64, "train_steps": 200, "eval_every": 50, "eval_samples": 500,
          "checkpoint_every": 5, "learning_rate": 0.01, "workers": 0}


def _cli(run_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "pipeline.app.cli", "search", "--gmm", "ring2d", "--steps", "4", "--workers", "0",
           "--train-steps", str(SEARCH["train_steps"]), "--batch-size", "64", "--learning-rate", "0.01",
           "--config", os.path.join(os.path.dirname(run_dir), "search.yaml"), "--run-dir", str(run_dir), *extra]
    # The three runs compile the same programs: JAX's persistent cache compiles them once.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(run_dir), "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddss")
    config.dump_yaml({k: v for k, v in SEARCH.items() if k not in ("gmm", "steps", "train_steps", "batch_size",
                                                                        "learning_rate", "workers")}, d / "search.yaml")
    return d


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    out = _cli(workdir / "whole")
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir / "whole"


def _final_state(run_dir):
    cfg = ddss.load_config(rundir.read_config(run_dir))
    target = jax.device_get(init_state(cfg, build_problem(cfg).model.schedule))
    with checkpoint.Checkpointer(rundir.checkpoint_dir(run_dir)) as ck:
        assert ck.latest_step() == cfg.train_steps
        return jax.device_get(ck.restore(target))


@pytest.mark.parametrize("init", ["ddim", "unipc-2"])
def test_a_zero_step_search_is_its_start_sampler_on_its_grid(tmp_path, init):
    """Started from `init` on karras at t_max 0.9, the step-0 artefact samples exactly as that sampler
    on time_grid(K, "karras", t_max=0.9), and it says what it started from."""
    from pipeline import schedules

    cfg = ddss.load_config(None, {**SEARCH, "init": init, "stride": "karras", "t_max": 0.9, "train_steps": 0,
                                  "eval_samples": 64, "batch_size": 32})
    result = ddss.search(cfg, run_dir=tmp_path / "run")
    assert result["best_step"] == 0 and result["stride"] == "karras" and result["t_max"] == 0.9 and result["init"] == init
    art = ddss.load_artefact(tmp_path / "run")
    assert art["meta"]["stride"] == "karras" and art["meta"]["t_max"] == 0.9 and art["meta"]["best_step"] == 0
    assert art["meta"]["init"] == init and art["meta"]["clip_x0"] is True
    problem = build_problem(cfg)
    gm, sched = problem.model.mixture, problem.model.schedule
    x_T = jax.random.normal(jax.random.key(11), (256, 2), jnp.float32)
    grid = schedules.time_grid(4, "karras", sched, 0.9)
    start = samplers.sample(init, gm.eps_fn(sched), sched, x_T, steps=4, grid=grid)
    mine = samplers.sample("ggdm", gm.eps_fn(sched), sched, x_T, steps=4, key=jax.random.key(0), params=art["params"])
    np.testing.assert_allclose(np.asarray(mine), np.asarray(start), rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(start) - np.asarray(samplers.sample(init, gm.eps_fn(sched), sched, x_T, steps=4))).max() > 1e-2
    other = "ddim" if init != "ddim" else "unipc-2"
    assert np.abs(np.asarray(start) - np.asarray(samplers.sample(other, gm.eps_fn(sched), sched, x_T, steps=4, grid=grid))).max() > 1e-3


def test_a_search_that_only_gets_worse_keeps_its_initial_parameters(tmp_path):
    """Every step at a learning rate this large worsens validation FD: the artefact is exactly the
    initial (DDIM's) parameters, best_step 0, and results.json's initial and best FD agree."""
    from helpers import read_metrics

    cfg = ddss.load_config(None, {**SEARCH, "steps": 3, "batch_size": 32, "train_steps": 4, "eval_every": 1,
                                  "eval_samples": 256, "checkpoint_every": 100, "learning_rate": 0.5,
                                  "lr_schedule": "constant"})
    ddss.search(cfg, run_dir=tmp_path / "run")
    fd = {m["step"]: m["val_fd"] for m in read_metrics(tmp_path / "run") if "val_fd" in m}
    assert sorted(fd) == [0, 1, 2, 3, 4] and all(fd[n] > fd[0] for n in (1, 2, 3, 4)), fd  # the premise
    res = rundir.read_results(tmp_path / "run")["ddss_search"]
    assert res["best_step"] == 0 and res["select_by"] == "fd"
    assert res["initial_val_fd"] == res["best_val_fd"] == fd[0] and res["val_fd_gain"] == 1.0
    art = ddss.load_artefact(tmp_path / "run")
    init = linear.ggdm_params(cfg.init, 3, cfg.variant, build_problem(cfg).model.schedule, cfg.stride, cfg.t_max)
    assert sorted(art["params"]) == sorted(init) and art["meta"]["best_step"] == 0
    for k, v in init.items():
        np.testing.assert_array_equal(art["params"][k], np.asarray(v), err_msg=k)


def test_ties_and_nan_keep_the_incumbent():
    from pipeline.ddss.search import is_better

    assert is_better(0.09, 0.1) and not is_better(0.1, 0.1) and not is_better(0.2, 0.1)
    assert not is_better(0.1, np.float32(0.1))  # float64 0.1 < float32(0.1), but a tie at the state's precision
    assert not is_better(float("nan"), 0.1) and is_better(5.0, float("inf"))


def test_validation_uses_the_same_chains_at_every_evaluation(uninterrupted):
    """Common random numbers: the validation FD logged at step 0 and at the best step are those of
    the initial and the best parameters on the run's one validation key, recomputed here."""
    from helpers import read_metrics

    from pipeline.ddss.search import make_validation
    from pipeline.distributed.context import make_mesh

    cfg = ddss.load_config(rundir.read_config(uninterrupted))
    problem = build_problem(cfg)
    res = rundir.read_results(uninterrupted)["ddss_search"]
    fd = {m["step"]: m["val_fd"] for m in read_metrics(uninterrupted) if "val_fd" in m}
    best = res["best_step"]
    assert best > 0 and res["best_val_fd"] == fd[best] <= min(fd.values()) * (1 + 1e-6) and res["initial_val_fd"] == fd[0]
    assert res["val_fd_gain"] == pytest.approx(fd[0] / fd[best]) and res["val_fd_gain"] > 2
    features = jax.jit(make_validation(Chain(problem.model, problem.feature_fn, cfg.guidance), make_mesh(), cfg))
    key = jax.random.key_data(jax.random.key(cfg.seed))
    init = init_state(cfg, problem.model.schedule)["params"]
    for step, params in ((0, init), (best, ddss.load_ggdm(uninterrupted))):
        again = frechet_distance(np.asarray(features(params, key)), problem.validation)
        assert again == pytest.approx(fd[step], rel=1e-5), step
    other = frechet_distance(np.asarray(features(init, jax.random.key_data(jax.random.key(cfg.seed + 1)))), problem.validation)
    assert other != pytest.approx(fd[0], rel=1e-3)  # another key's chains would have given another FD


def test_cosine_learning_rate_against_its_closed_form():
    """lr_schedule cosine: linear warm-up from 0, then lr (1 + cos(pi (n - W) / (T - W))) / 2; the
    optimizer's n-th Adam step (first steps: |update| = lr_n, the gradient's sign) follows it."""
    import math

    from pipeline.ddss.search import learning_rate, make_optimizer

    cfg = ddss.load_config(None, {**SEARCH, "train_steps": 100, "warmup_steps": 10, "learning_rate": 0.02})
    lr = learning_rate(cfg)
    for n in (0, 4, 10, 37, 99, 100):
        want = 0.02 * n / 10 if n < 10 else 0.01 * (1 + math.cos(math.pi * (n - 10) / 90))
        assert float(lr(n)) == pytest.approx(want, rel=1e-5, abs=1e-9), n
    assert learning_rate(ddss.load_config(None, {**SEARCH, "lr_schedule": "constant"})) == SEARCH["learning_rate"]
    cfg = dataclasses.replace(cfg, warmup_steps=0)
    opt = make_optimizer(cfg)
    params = {"a": jnp.zeros(3)}
    state = opt.init(params)
    g = {"a": jnp.asarray([1e-3, -2e-3, 3e-3])}  # small: clipping leaves it alone
    for n in range(3):
        upd, state = opt.update(g, state, params)
        np.testing.assert_allclose(np.asarray(upd["a"]), -float(learning_rate(cfg)(n)) * np.sign(g["a"]), rtol=1e-4)
    assert float(learning_rate(cfg)(0)) == pytest.approx(0.02) and float(learning_rate(cfg)(2)) < float(learning_rate(cfg)(0))


def test_bad_search_keys_are_one_line():
    for overrides, needle in (({"t_max": 0.0}, "'t_max': must be a number in (0, 1]"),
                              ({"t_max": 1.5}, "'t_max'"), ({"holdout_fraction": 1.0}, "'holdout_fraction'"),
                              ({"holdout_fraction": -0.1}, "'holdout_fraction'"), ({"lr_schedule": "step"}, "'lr_schedule'"),
                              ({"warmup_steps": 200, "train_steps": 200}, "'warmup_steps': must be fewer than train_steps"),
                              ({"stride": "karas"}, "'stride'"), ({"init": "ddpm"}, "'init': must be one of ddim,"),
                              ({"clip_x0": "no"}, "'clip_x0' must be true or false")):
        with pytest.raises(UserError) as e:
            ddss.load_config(None, {**SEARCH, **overrides})
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert ddss.load_config(None, {**SEARCH, "warmup_steps": 200, "train_steps": 200, "lr_schedule": "constant"})


def test_sigkill_then_resume_reaches_the_uninterrupted_parameters(workdir, uninterrupted):
    run = workdir / "killed"
    proc = _cli(run, wait=False)
    ckdir = run / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckdir.is_dir() and any(p.isdigit() for p in os.listdir(ckdir)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed"
    steps = [int(p) for p in os.listdir(ckdir) if p.isdigit()]
    assert steps and max(steps) < SEARCH["train_steps"] and not (run / "sampler").exists()
    out = _cli(run, "--resume")
    assert out.returncode == 0, out.stderr[-2000:]
    assert rundir.read_results(run)["ddss_search"]["resumed_from"] == max(steps)
    whole, resumed = _final_state(uninterrupted), _final_state(run)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    art_a, art_b = ddss.load_ggdm(uninterrupted / "sampler"), ddss.load_ggdm(run / "sampler")
    for k in art_a:
        np.testing.assert_array_equal(art_a[k], art_b[k])


def test_search_beats_ddim_and_its_artefact_samples(uninterrupted):
    res = rundir.read_results(uninterrupted)["ddss_search"]
    assert res["best_val_kid"] < 0.5 * res["initial"]["kid"]  # step 0 is DDIM
    art = ddss.load_artefact(uninterrupted)  # a run directory finds its sampler
    assert art["meta"]["K"] == 4 and art["meta"]["variant"] == "ggdm+pred+time" and art["meta"]["gmm"] == "ring2d"
    # Fresh seeds, exact reference samples, FD of the samples themselves: GGDM beats DDIM on its own grid.
    problem = build_problem(ddss.load_config(rundir.read_config(uninterrupted)))
    gm, sched = problem.model.mixture, problem.model.schedule
    x_T = jax.random.normal(jax.random.key(2024), (2000, 2), jnp.float32)
    exact = np.asarray(gm.sample(jax.random.key(2025), 4000))
    keys = jax.random.split(jax.random.key(2026), 2000)
    fd_ggdm = frechet_distance(np.asarray(samplers.sample("ggdm", gm.eps_fn(sched), sched, x_T, steps=4, key=keys,
                                                          params=ddss.load_ggdm(uninterrupted / "sampler"))), exact)
    fd_ddim = frechet_distance(np.asarray(samplers.sample("ddim", gm.eps_fn(sched), sched, x_T, steps=4)), exact)
    assert fd_ggdm < 0.7 * fd_ddim


def _mmd2_float64(a, b):
    """Unbiased MMD^2 with the kernel (x.y/d + 1)^3 (Binkowski et al. 2018), written out in NumPy."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return ((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
            - 2 * k(a, b).mean())


def _gradient_loop(ctx):
    """The loss and its gradient at perturbed DDIM parameters, on ctx's mesh (runs in every process)."""
    cfg = ddss.load_config(ctx.config)
    problem = build_problem(cfg)
    chain = Chain(problem.model, problem.feature_fn)
    params = ggdm.init_params(cfg.steps, cfg.variant, problem.model.schedule)
    params = {k: v + 0.01 * jnp.cos(jnp.arange(v.size, dtype=jnp.float32).reshape(v.shape)) for k, v in params.items()}
    params, key = ctx.replicate(jax.device_get(params)), ctx.replicate(jax.random.key_data(jax.random.key(3)))
    loss = kid_loss(chain, problem.reference, ctx.mesh)

    def loss_of(p, k):
        return loss(p, jax.random.wrap_key_data(k), jnp.arange(cfg.batch_size))

    value, grads = jax.jit(jax.value_and_grad(loss_of), out_shardings=ctx.replicated)(params, key)
    out = {"loss": float(value), "grads": {k: np.asarray(v).tolist() for k, v in grads.items()}}
    if ctx.process_count == 1:  # the features too, for the float64 check of the loss
        feats = chain.features(params, jax.random.wrap_key_data(key), jnp.arange(cfg.batch_size))
        out.update(features=np.asarray(feats).tolist(), reference=problem.reference.tolist())
    return out


@pytest.mark.ray
def test_sharded_gradient_on_two_ray_workers_equals_one_process(tmp_path, local_ray):
    from ray import cloudpickle

    from pipeline.distributed.spmd import run_spmd

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = ddss.load_config(None, {**SEARCH, "batch_size": 32})
    loop_cfg = config.to_dict(cfg)
    one = run_spmd(_gradient_loop, loop_cfg, num_workers=0, run_dir=tmp_path / "one")
    # The loss is the KID of the chain's features, checked against float64 NumPy.
    assert one["loss"] == pytest.approx(_mmd2_float64(one["features"], one["reference"]), rel=1e-4, abs=1e-7)
    two = run_spmd(_gradient_loop, loop_cfg, num_workers=2, run_dir=tmp_path / "two")
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    g1 = np.concatenate([np.ravel(one["grads"][k]) for k in sorted(one["grads"])])
    g2 = np.concatenate([np.ravel(two["grads"][k]) for k in sorted(two["grads"])])
    assert np.linalg.norm(g2 - g1) <= 1e-5 * np.linalg.norm(g1)


def test_non_finite_gradient_stops_at_a_named_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = ddss.load_config(None, {**SEARCH, "train_steps": 20, "eval_every": 100, "eval_samples": 64,
                                  "checkpoint_every": 1, "learning_rate": 30.0, "clip_norm": 1e6})
    with pytest.raises(ddss.SearchDiverged, match=r"diverged at step (\d+): non-finite") as err:
        ddss.search(cfg, run_dir=tmp_path / "run")
    bad = int(err.value.args[0].split("step ")[1].split(":")[0])
    assert "\n" not in str(err.value)
    with checkpoint.Checkpointer(rundir.checkpoint_dir(tmp_path / "run")) as ck:
        assert ck.latest_step() == bad - 1
        state = ck.restore(jax.device_get(init_state(cfg, build_problem(cfg).model.schedule)))
    assert int(state["step"]) == bad - 1
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(state["params"]))


def test_bad_input_is_one_line(tmp_path, uninterrupted):
    with pytest.raises(UserError, match="cannot resume .* different 'steps'"):
        ddss.search(ddss.load_config(rundir.read_config(uninterrupted), {"steps": 5}), run_dir=uninterrupted, resume=True)
    with pytest.raises(UserError, match="already exists"):
        ddss.save_artefact(uninterrupted / "sampler", ggdm.init_params(3), {})
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="not a DDSS sampler artefact"):
        ddss.load_artefact(tmp_path / "junk")
    with pytest.raises(UserError, match="'variant'"):
        ddss.load_config(None, {"gmm": "ring2d", "variant": "ggdm+fast"})
    path = ddss.save_artefact(tmp_path / "a", ggdm.init_params(3, "ggdm"), {"teacher": "t"})
    p = ddss.load_ggdm(path)
    assert ggdm.variant_of(p) == "ggdm" and p["mu_x"].dtype == np.float32


def test_resume_runs_on_the_workers_given_and_keeps_the_stored_config(tmp_path, monkeypatch):
    from pipeline.distributed import spmd

    ran = []
    monkeypatch.setattr(spmd, "run_spmd", lambda loop, cfg, num_workers, **kw: ran.append(num_workers) or {})
    run = tmp_path / "run"
    stored = ddss.load_config(None, {**SEARCH, "workers": 2})
    ddss.search(stored, run_dir=run)
    assert ran == [2]
    ddss.search(ddss.load_config(rundir.read_config(run), {"workers": 0}), run_dir=run, resume=True)
    ddss.search(run_dir=run, resume=True)  # no config given: the stored workers
    ddss.search(run_dir=run, resume=True, workers=1)
    assert ran == [2, 0, 2, 1]
    assert rundir.read_config(run)["workers"] == 2  # config.yaml: the workers the run started with


def test_a_run_older_than_the_new_keys_resumes_as_it_ran(tmp_path, monkeypatch):
    """A config.yaml written before lr_schedule and holdout_fraction existed resumes with a constant
    learning rate and validation against the loss's reference (its checkpoints' Adam state and its
    incumbent's score stay valid), also when the invocation's config filled in today's defaults."""
    from pipeline.distributed import spmd

    ran = []
    monkeypatch.setattr(spmd, "run_spmd", lambda loop, cfg, num_workers, **kw: ran.append(cfg) or {})
    run = tmp_path / "run"
    ddss.search(ddss.load_config(None, SEARCH), run_dir=run)
    assert (ran[0]["lr_schedule"], ran[0]["holdout_fraction"]) == ("cosine", 0.2)
    old = {k: v for k, v in rundir.read_config(run).items() if k not in ("lr_schedule", "holdout_fraction")}
    rundir.write_config(run, old)
    ddss.search(run_dir=run, resume=True)
    ddss.search(ddss.load_config(old, {"workers": 0}), run_dir=run, resume=True)  # as `ddss search --resume` builds it
    for cfg in ran[1:]:
        assert (cfg["lr_schedule"], cfg["holdout_fraction"]) == ("constant", 0.0)
    assert ran[2]["workers"] == 0


def search_steps(steps=2):
    """The loss and gradient of search.py's kid_loss at perturbed DDIM parameters, and the
    parameters after `steps` of its make_train_step, on a 1-D mesh over all devices of this
    process (batch 32: divisible by 4); JSON-able."""
    from jax.flatten_util import ravel_pytree
    from jax.sharding import NamedSharding, PartitionSpec

    from pipeline.ddss.search import make_train_step
    from pipeline.distributed.context import make_mesh

    cfg = ddss.load_config(None, {**SEARCH, "batch_size": 32})
    problem = build_problem(cfg)
    chain = Chain(problem.model, problem.feature_fn, cfg.guidance)
    mesh = make_mesh()
    rep = lambda tree: jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))  # noqa: E731
    params = ggdm.init_params(cfg.steps, cfg.variant, problem.model.schedule)
    params = rep({k: v + 0.01 * jnp.cos(jnp.arange(v.size, dtype=jnp.float32).reshape(v.shape))
                  for k, v in params.items()})
    loss = kid_loss(chain, problem.reference, mesh, cfg.remat)
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, jax.random.key(3), jnp.arange(cfg.batch_size))))(params)
    state = rep(jax.device_get(init_state(cfg, problem.model.schedule)))
    step = jax.jit(make_train_step(chain, problem.reference, mesh, cfg))
    for _ in range(steps):
        state, _, _, finite = step(state)
        assert bool(finite)
    ravel = lambda tree: np.asarray(ravel_pytree(jax.device_get(tree))[0]).tolist()  # noqa: E731
    return jax.device_count(), float(value), ravel(grads), ravel(state["params"])


def test_search_gradient_and_steps_on_four_devices_equal_one_device():
    """search.py's KID gradient and train step on 1 process x 4 devices = 1 process x 1 device."""
    from forced_devices import call_with_devices

    devices, loss4, grad4, params4 = call_with_devices(4, "test_ddss_search", "search_steps")
    assert devices == 4
    _, loss1, grad1, params1 = search_steps()
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    grad1, grad4 = np.asarray(grad1), np.asarray(grad4)
    assert np.linalg.norm(grad4 - grad1) <= 1e-5 * np.linalg.norm(grad1)
    np.testing.assert_allclose(np.asarray(params4), np.asarray(params1), rtol=1e-4, atol=1e-6)

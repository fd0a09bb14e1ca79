"""`ddss sample` writes an .npz and a grid of the evaluation's samples and never overwrites them;
an artefact made for another model or step count, and a sampler that diverges, end with one line
and exit code 2, writing nothing (teachers, gmm_search: tests/cli_fixtures.py)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cli_fixtures import fails, snapshot
from pipeline import ddss, samplers
from pipeline.app import cli
from pipeline.samplers import ggdm
from pipeline.teacher import model as tmodel


def test_artefact_for_another_model_or_step_count_is_one_line(gmm_search, teachers, tmp_path, capsys):
    t = teachers["good"]
    before = snapshot(t)
    gmm_art = os.path.join(gmm_search, "sampler")  # made for 2-d vectors, the teacher makes 8x8x1 images
    fails(["evaluate", "--teacher", t, "--sampler", f"ggdm:{gmm_art}", "--steps", 2, "--workers", 1], capsys,
           "data shape 2", "8x8x1")
    fails(["sample", "--teacher", t, "--sampler", f"ggdm:{gmm_art}", "--steps", 2, "--out", tmp_path / "a.npz"],
           capsys, "data shape 2")

    mine = ddss.save_artefact(tmp_path / "k2", ggdm.init_params(2, "ggdm", "cosine"),
                              {"schedule": "cosine", "data_shape": [8, 8, 1]})
    fails(["sample", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 3, "--out", tmp_path / "b.npz"],
           capsys, "made for 2 steps")
    fails(["evaluate", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 3, "--workers", 1], capsys,
           "made for 2 steps")
    lin = ddss.save_artefact(tmp_path / "lin", ggdm.init_params(2, "ggdm", "linear"),
                             {"schedule": "linear", "data_shape": [8, 8, 1]})
    fails(["sample", "--teacher", t, "--sampler", f"ggdm:{lin}", "--steps", 2, "--out", tmp_path / "c.npz"],
           capsys, "schedule linear")

    with open(os.path.join(mine, "params.npz"), "r+b") as f:  # a torn write
        f.truncate(40)
    fails(["sample", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 2, "--out", tmp_path / "d.npz"],
           capsys, "unreadable")
    fails(["sample", "--teacher", t, "--sampler", f"ggdm:{tmp_path}", "--steps", 2, "--out", tmp_path / "e.npz"],
           capsys, "not a DDSS sampler artefact")
    fails(["sample", "--teacher", t, "--sampler", f"student-ddim:{tmp_path}", "--steps", 2,
            "--out", tmp_path / "f.npz"], capsys, "no finished distillation round")
    assert sorted(os.listdir(tmp_path)) == ["k2", "lin"]
    assert snapshot(t) == before


def test_sample_writes_the_evaluation_samples_and_never_overwrites(teachers, tmp_path, capsys):
    out = tmp_path / "ddim.npz"
    argv = ["sample", "--teacher", teachers["good"], "--steps", 2, "--num-samples", 12, "--batch-size", 12,
            "--seed", 3, "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    with np.load(out, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, np.arange(12) % 10)
    assert np.all(np.abs(images) <= 1.0) and np.std(images) > 0.1
    assert (tmp_path / "ddim.png").stat().st_size > 0
    # the same samples drawn here through the public samplers.sample, x_T of sample i from
    # fold_in(fold_in(key(seed), i), 0) and label i % 10
    teacher = tmodel.load_teacher(teachers["good"])
    keys = [jax.random.fold_in(jax.random.fold_in(jax.random.key(3), i), 0) for i in range(12)]
    x_T = jnp.stack([jax.random.normal(k, (8, 8, 1), jnp.float32) for k in keys])
    ref = samplers.sample("ddim", teacher.eps_fn(jnp.arange(12) % 10), teacher.schedule, x_T, steps=2, stride="quadratic")
    np.testing.assert_allclose(images, np.clip(np.asarray(ref), -1.0, 1.0), atol=1e-5)

    before = snapshot(tmp_path)
    fails(argv, capsys, "already exists")
    (tmp_path / "ddim.npz").rename(tmp_path / "moved.npz")  # the grid alone also blocks the name
    fails(argv, capsys, "ddim.png", "already exists")
    assert snapshot(tmp_path) == {k.replace("ddim.npz", "moved.npz"): v for k, v in before.items()}


def test_stride_t_max_and_clipping_reach_the_samples(teachers, tmp_path, capsys):
    """--stride trailing --t-max 0.9 --no-clip-x0: the public samplers.sample on the grid written
    out by hand (diffusers' trailing timesteps 999, 499 of 0..999 -> t = 0.9 (n + 1) / 1000, then 0)
    with the teacher's unclipped eps_fn; the clipped eps_fn gives other samples. The teacher's
    parameters are shifted off their initial values: an output layer of zeros predicts eps = 0,
    with which clipping changes only pixels that end clipped to [-1, 1] anyway."""
    from cli_fixtures import _write_teachers

    t = _write_teachers(tmp_path / "teachers", shifted=lambda a: a + 0.05)["shifted"]
    out = tmp_path / "trailing.npz"
    argv = ["sample", "--teacher", t, "--steps", 2, "--num-samples", 6, "--batch-size", 6,
            "--stride", "trailing", "--t-max", 0.9, "--no-clip-x0", "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    capsys.readouterr()
    with np.load(out, allow_pickle=False) as z:
        images = z["images"]
    teacher = tmodel.load_teacher(t)
    keys = [jax.random.fold_in(jax.random.fold_in(jax.random.key(0), i), 0) for i in range(6)]
    x_T = jnp.stack([jax.random.normal(k, (8, 8, 1), jnp.float32) for k in keys])
    y = jnp.arange(6) % 10
    grid = np.array([0.9, 0.45, 0.0])
    ref = samplers.sample("ddim", teacher.eps_fn(y, clip_x0=False), teacher.schedule, x_T, steps=2, grid=grid)
    np.testing.assert_allclose(images, np.clip(np.asarray(ref), -1.0, 1.0), atol=1e-5)
    clipped = samplers.sample("ddim", teacher.eps_fn(y), teacher.schedule, x_T, steps=2, grid=grid)
    assert np.abs(np.clip(np.asarray(clipped), -1, 1) - images).max() > 1e-2
    for value in ("0", "1.5", "nan"):
        fails(["sample", "--teacher", t, "--t-max", value, "--out", tmp_path / "s.npz"], capsys,
              "--t-max must be in (0, 1]")
    assert sorted(os.listdir(tmp_path)) == ["teachers", "trailing.npz", "trailing.png"]


def test_diverging_sampler_is_one_line_and_writes_nothing(teachers, tmp_path, capsys):
    t = teachers["inf"]
    fails(["sample", "--teacher", t, "--steps", 2, "--num-samples", 4, "--out", tmp_path / "s.npz"], capsys,
           "non-finite", "step 1 of 2")
    assert os.listdir(tmp_path) == []


def test_flags_out_of_range_are_one_line_before_anything_is_loaded(teachers, tmp_path, capsys, monkeypatch):
    """Sizes that allocated exabytes (MemoryError, a traceback) or ran for ever, and a seed
    past JAX's 32 bits (2**32 was seed 0 again): one line, nothing written."""
    t = teachers["good"]
    before = snapshot(t)
    for flag, value, needle in (("--steps", 10**18, "--steps must be in [1, 100000], got 1000000000000000000"),
                                ("--batch-size", 10**12, "--batch-size must be in [1, 100000]"),
                                ("--num-samples", 10**12, "--num-samples must be in [2, 1000000]"),
                                ("--seed", 2**32, "--seed must be in [0, 4294967295], got 4294967296"),
                                ("--seed", -1, "--seed must be in [0, 4294967295]"),
                                ("--grid", 0, "--grid must be in [1, 1000000]")):
        fails(["sample", "--teacher", t, flag, value, "--out", tmp_path / "s.npz"], capsys, needle)
    # an allocation no bound foresaw: one line too
    from pipeline.app.commands import sample as sample_command

    def oom(out):
        raise MemoryError("Unable to allocate 6.94 EiB for an array with shape (1000000000000000000,)")

    monkeypatch.setattr(sample_command, "outputs", oom)
    fails(["sample", "--teacher", t, "--out", tmp_path / "s.npz"], capsys, "out of memory: Unable to allocate 6.94 EiB")
    assert os.listdir(tmp_path) == [] and snapshot(t) == before


def test_an_artefact_of_a_npy_or_a_guidance_of_words_is_one_line(teachers, tmp_path, capsys):
    import hashlib
    import json

    t = teachers["good"]
    for name, change, needle in (("npy", "params", "a .npy array"), ("words", "guidance", "'guidance' must be a finite number, got 'high'")):
        art = ddss.save_artefact(tmp_path / name, ggdm.init_params(2, "ggdm", "cosine"),
                                 {"schedule": "cosine", "data_shape": [8, 8, 1], "guidance": 0.5})
        meta = json.loads(open(f"{art}/meta.json").read())
        if change == "params":
            np.save(f"{art}/p.npy", np.ones(2, np.float32))
            os.replace(f"{art}/p.npy", f"{art}/params.npz")
            meta["params_sha256"] = hashlib.sha256(open(f"{art}/params.npz", "rb").read()).hexdigest()
        else:
            meta["guidance"] = "high"
        with open(f"{art}/meta.json", "w") as f:
            json.dump(meta, f)
        fails(["sample", "--teacher", t, "--sampler", f"ggdm:{art}", "--steps", 2, "--out", tmp_path / "s.npz"],
              capsys, needle)
    assert sorted(os.listdir(tmp_path)) == ["npy", "words"]


def test_off_a_terminal_the_progress_is_whole_lines(teachers, tmp_path):
    """stderr a pipe (a log, `ray job logs`): plain lines, no carriage-return redraws."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "sample", "--teacher", teachers["good"], "--steps", "2",
                          "--num-samples", "12", "--batch-size", "4", "--out", str(tmp_path / "s.npz")],
                         cwd=root, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr, repr(out.stderr[-2000:])
    bar = [line for line in out.stderr.splitlines() if line.startswith("sample ddim K=2")]
    assert bar and "12/12" in bar[-1] and "0/12" in bar[0], out.stderr[-2000:]

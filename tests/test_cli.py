"""The `ddss` command as a user meets it: help with examples; bad configs, a missing or corrupt
checkpoint, a teacher that does not match its checkpoint, an artefact made for another model and
a sampler that diverges each end with one line and exit code 2, writing nothing; --run-dir and
--resume; `ddss sample` writes an .npz and a grid and never overwrites them.

The teacher here is an untrained tiny U-Net written as a real orbax checkpoint (the plumbing is
under test, not sample quality); the search runs on the exact Gaussian-mixture denoiser."""
import importlib
import os
import shutil

import jax
import numpy as np
import pytest

from pipeline import checkpoint, cli, ddss, rundir, train
from pipeline.samplers import ggdm

TINY = {"model": {"kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}}, "sample": {"fd_samples": 0}}


def _write_teachers(root, **ema_transforms) -> dict:
    """Teacher run directories root/NAME: config.yaml and an orbax checkpoint of the initial state,
    its EMA parameters passed through ema_transforms[NAME]."""
    cfg = train.load_config(TINY)
    state = train.init_state(train.build_model(cfg.model, 10), train.make_optimizer(cfg.train), (8, 8, 1), 0)
    out = {}
    for name, transform in ema_transforms.items():
        out[name] = str(root / name)
        os.makedirs(out[name])
        rundir.write_config(out[name], cfg)
        with checkpoint.Checkpointer(rundir.checkpoint_dir(out[name])) as ck:
            ck.save(0, {**state, "ema": jax.tree.map(transform, state["ema"])})
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """{"good", "missing" (no checkpoint), "corrupt" (garbled arrays), "mismatch" (config.yaml
    names a wider model than its checkpoint holds), "inf" (parameters +inf)}."""
    root = tmp_path_factory.mktemp("teachers")
    out = _write_teachers(root, good=lambda a: a, inf=lambda a: np.full(a.shape, np.inf, a.dtype))
    for name in ("missing", "corrupt", "mismatch"):
        out[name] = str(shutil.copytree(out["good"], root / name))
    shutil.rmtree(rundir.checkpoint_dir(out["missing"]))
    for p in (root / "corrupt").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"\x00garbage" * 3)
    cfg = rundir.read_config(out["mismatch"])
    cfg["model"]["kwargs"]["ch"] = 16
    rundir.write_config(out["mismatch"], cfg)
    return out


def _snapshot(*dirs) -> dict:
    """Every file under dirs with its bytes (to check that nothing was written or changed)."""
    out = {}
    for d in dirs:
        for base, _, files in os.walk(d):
            for f in files:
                with open(os.path.join(base, f), "rb") as fh:
                    out[os.path.join(base, f)] = fh.read()
    return out


def _fails(argv, capsys, *needles) -> str:
    """cli.main(argv) exits 2 with one error line on stderr (besides any progress bar) containing
    every needle."""
    argv = [str(a) for a in argv]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"ddss {argv[0]}: error: ") and len(errors[0]) < 600, err
    for n in needles:
        assert n in errors[0], err
    return errors[0]


# ---------------------------------------------------------------------------------------
# Help.


def test_help_shows_an_example_for_the_command_and_each_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    assert "examples:" in top and "ddss demo --quick" in top
    names = [importlib.import_module(f"pipeline.commands.{m}").NAME for m in cli.COMMANDS]
    assert "sample" in names
    for name in names:
        assert name in top
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert f"example:\n  ddss {name} " in text, name
    assert cli.main([]) == 2  # no command: the help, exit 2
    assert "examples:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Configs validated at the edge.


@pytest.mark.parametrize("command, yaml_text, key", [
    ("evaluate", "stepz: 3\n", "stepz"),                       # unknown key
    ("evaluate", "num_samples: many\n", "num_samples"),        # wrong type
    ("evaluate", "workers: 0\n", "workers"),                   # impossible value
    ("evaluate", "w: .inf\n", "'w'"),                          # impossible value
    ("search", "eval_every: soon\n", "eval_every"),
    ("search", "learning_rate: -1\n", "learning_rate"),
    ("search", "remat: sometimes\n", "remat"),
    ("distill", "distill:\n  stage1:\n    lr: 1\n    lrr: 2\n", "distill.stage1.lrr"),
])
def test_bad_yaml_config_is_one_line_naming_the_key(command, yaml_text, key, tmp_path, capsys, teachers):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    before = _snapshot(teachers["good"])
    _fails([command, "--config", path, "--teacher", teachers["good"]], capsys, key)
    assert _snapshot(teachers["good"]) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_bad_set_and_flags_are_one_line(teachers, tmp_path, capsys):
    t = teachers["good"]
    _fails(["evaluate", "--teacher", t, "--set", "stride=cubic"], capsys, "stride")
    _fails(["evaluate", "--teacher", t, "--set", "sampler"], capsys, "--set")
    _fails(["evaluate", "--teacher", t, "--w", "nan"], capsys, "'w'")
    _fails(["evaluate", "--teacher", t, "--sampler", "euler"], capsys, "euler")
    _fails(["search", "--teacher", t, "--set", "batch_size=1"], capsys, "batch_size")
    _fails(["search", "--teacher", t, "--gmm", "ring2d"], capsys, "teacher")
    _fails(["sample", "--teacher", t, "--out", tmp_path / "x.png"], capsys, ".npz")
    _fails(["sample", "--teacher", t, "--out", tmp_path / "no" / "x.npz"], capsys, "does not exist")
    _fails(["evaluate", "--teacher", tmp_path / "nowhere"], capsys, "not found")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Teachers that cannot be used: one line, before anything is written.


@pytest.mark.parametrize("which, needle", [
    ("missing", "no checkpoint"),
    ("corrupt", "unreadable"),
    ("mismatch", "incompatible"),
])
def test_unusable_teacher_is_one_line_and_nothing_is_written(which, needle, teachers, tmp_path, capsys):
    t = teachers[which]
    before = _snapshot(t)
    _fails(["sample", "--teacher", t, "--steps", 2, "--num-samples", 4, "--out", tmp_path / "s.npz"], capsys, needle)
    _fails(["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 4, "--workers", 1], capsys, needle)
    _fails(["search", "--teacher", t, "--steps", 2, "--workers", 0, "--run-dir", tmp_path / "search"], capsys, needle)
    assert os.listdir(tmp_path) == [], "nothing may be created for an unusable teacher"
    assert _snapshot(t) == before


# ---------------------------------------------------------------------------------------
# --run-dir and --resume (on the exact Gaussian-mixture denoiser: fast), and artefacts made
# for another model.

SEARCH = ["--gmm", "ring2d", "--steps", "2", "--workers", "0", "--train-steps", "2", "--batch-size", "16",
          "--set", "eval_samples=32", "--set", "eval_every=2", "--set", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def gmm_search(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("search") / "run")
    assert cli.main(["search", *SEARCH, "--run-dir", run_dir]) == 0
    return run_dir


def test_search_run_dir_is_never_overwritten_and_resume_keeps_the_run(gmm_search, capsys):
    capsys.readouterr()
    before = _snapshot(gmm_search)
    _fails(["search", *SEARCH, "--run-dir", gmm_search], capsys, "not empty", "--resume")
    _fails(["search", "--resume"], capsys, "--run-dir")
    _fails(["search", "--resume", "--run-dir", gmm_search, "--steps", "3"], capsys, "'steps'")
    _fails(["search", "--resume", "--run-dir", os.path.dirname(gmm_search)], capsys, "config.yaml")
    assert _snapshot(gmm_search) == before

    art = os.path.join(gmm_search, "sampler")
    art_before = _snapshot(art)
    assert cli.main(["search", "--resume", "--run-dir", gmm_search]) == 0  # finished: nothing left to do
    assert '"resumed_from": 2' in capsys.readouterr().out
    assert _snapshot(art) == art_before
    assert ddss.load_artefact(gmm_search)["meta"]["data_shape"] == [2]


def test_artefact_for_another_model_or_step_count_is_one_line(gmm_search, teachers, tmp_path, capsys):
    t = teachers["good"]
    before = _snapshot(t)
    gmm_art = os.path.join(gmm_search, "sampler")  # made for 2-d vectors, the teacher makes 8x8x1 images
    _fails(["evaluate", "--teacher", t, "--sampler", f"ggdm:{gmm_art}", "--steps", 2, "--workers", 1], capsys,
           "data shape 2", "8x8x1")
    _fails(["sample", "--teacher", t, "--sampler", f"ggdm:{gmm_art}", "--steps", 2, "--out", tmp_path / "a.npz"],
           capsys, "data shape 2")

    mine = ddss.save_artefact(tmp_path / "k2", ggdm.init_params(2, "ggdm", "cosine"),
                              {"schedule": "cosine", "data_shape": [8, 8, 1]})
    _fails(["sample", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 3, "--out", tmp_path / "b.npz"],
           capsys, "made for 2 steps")
    _fails(["evaluate", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 3, "--workers", 1], capsys,
           "made for 2 steps")
    lin = ddss.save_artefact(tmp_path / "lin", ggdm.init_params(2, "ggdm", "linear"),
                             {"schedule": "linear", "data_shape": [8, 8, 1]})
    _fails(["sample", "--teacher", t, "--sampler", f"ggdm:{lin}", "--steps", 2, "--out", tmp_path / "c.npz"],
           capsys, "schedule linear")

    with open(os.path.join(mine, "params.npz"), "r+b") as f:  # a torn write
        f.truncate(40)
    _fails(["sample", "--teacher", t, "--sampler", f"ggdm:{mine}", "--steps", 2, "--out", tmp_path / "d.npz"],
           capsys, "unreadable")
    _fails(["sample", "--teacher", t, "--sampler", f"ggdm:{tmp_path}", "--steps", 2, "--out", tmp_path / "e.npz"],
           capsys, "not a DDSS sampler artefact")
    _fails(["sample", "--teacher", t, "--sampler", f"student-ddim:{tmp_path}", "--steps", 2,
            "--out", tmp_path / "f.npz"], capsys, "no finished distillation round")
    assert sorted(os.listdir(tmp_path)) == ["k2", "lin"]
    assert _snapshot(t) == before


def test_student_of_another_teacher_is_one_line(teachers, tmp_path, capsys):
    """A finished round-0 student (written as ddss distill writes one) of a teacher on the linear
    schedule, used with the cosine teacher."""
    from pipeline.distill import config as dconfig
    from pipeline.distill import rounds

    linear = str(shutil.copytree(teachers["good"], tmp_path / "linear"))
    cfg = rundir.read_config(linear)
    cfg["schedule"] = "linear"
    rundir.write_config(linear, cfg)
    dcfg = dconfig.load({"teacher": linear, "dir": str(tmp_path / "distill"), "start_steps": 4})
    d = rounds.prepare_round(dcfg, str(tmp_path / "distill"), 0)
    with checkpoint.Checkpointer(rounds.student_dir(str(tmp_path / "distill"), 0), max_to_keep=1) as ck:
        ck.save(0, {"params": train.load_teacher(linear).params})
    rundir.update_results(d, {"round": 0, "steps": 4, "finished": True})
    t = teachers["good"]
    before = _snapshot(t, tmp_path)
    _fails(["sample", "--teacher", t, "--sampler", f"student-ddim:{tmp_path / 'distill'}", "--steps", 4,
            "--out", tmp_path / "s.npz"], capsys, "student", "schedule linear", "cosine")
    _fails(["evaluate", "--teacher", t, "--sampler", f"student-stochastic:{d}", "--steps", 4, "--workers", 1],
           capsys, "schedule linear")
    assert _snapshot(t, tmp_path) == before


# ---------------------------------------------------------------------------------------
# ddss sample, and samplers that diverge.


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
    # train.sample_teacher draws sample i from the same fold_in(seed, i) keys, by its own code
    ref, ref_labels = train.sample_teacher(train.load_teacher(teachers["good"]), 12, seed=3, sampler="ddim", steps=2,
                                           batch_size=12)
    np.testing.assert_allclose(images, ref, atol=1e-5)
    np.testing.assert_array_equal(labels, ref_labels)

    before = _snapshot(tmp_path)
    _fails(argv, capsys, "already exists")
    (tmp_path / "ddim.npz").rename(tmp_path / "moved.npz")  # the grid alone also blocks the name
    _fails(argv, capsys, "ddim.png", "already exists")
    assert _snapshot(tmp_path) == {k.replace("ddim.npz", "moved.npz"): v for k, v in before.items()}


def test_diverging_sampler_is_one_line_and_writes_nothing(teachers, tmp_path, capsys):
    t = teachers["inf"]
    _fails(["sample", "--teacher", t, "--steps", 2, "--num-samples", 4, "--out", tmp_path / "s.npz"], capsys,
           "non-finite", "step 1 of 2")
    assert os.listdir(tmp_path) == []


@pytest.mark.ray
def test_diverging_sampler_in_an_evaluation_actor_is_one_line(teachers, local_ray, capsys):
    t = teachers["inf"]
    before = _snapshot(t)
    _fails(["evaluate", "--teacher", t, "--steps", 2, "--num-samples", 8, "--batch-size", 8, "--workers", 1], capsys,
           "non-finite", "ddim")
    assert _snapshot(t) == before, "a failed evaluation must not touch results.json"
    assert not os.path.exists(os.path.join(t, rundir.RESULTS))

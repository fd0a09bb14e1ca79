"""The project as installed: `ddss` finds its default configs from any directory (they ship inside
the package, pipeline/configs; configs/ in the checkout links there), the wheel holds them, and
a non-editable install of that wheel runs from anywhere. Real processes, run in a temporary cwd."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "pipeline" / "configs").glob("*.yaml"))
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _run(argv, cwd, env=None, timeout=120) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env or ENV, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _one_line_error(argv, cwd, needle, env=None):
    rc, out, err = _run(argv, cwd, env)
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and needle in err, err
    return err


def test_the_checkout_configs_are_the_packaged_ones():
    assert (ROOT / "configs").resolve() == (ROOT / "pipeline" / "configs").resolve()
    assert {"digits_teacher.yaml", "ddss_search.yaml", "distill.yaml", "evaluate.yaml", "tiny.yaml"} <= set(SHIPPED)


def test_commands_and_jobs_find_their_default_configs_from_any_directory(tmp_path):
    """The config is read (its range check fails before any work) from a directory with no configs/."""
    cli = ["-m", "pipeline.app.cli"]
    steps0 = "config key 'train.steps': must be in [1, 100000], got 0"
    err = _one_line_error([*cli, "train-teacher", "--set", "train.steps=0"], tmp_path, steps0)
    assert err.startswith("ddss train-teacher: error:")
    _one_line_error([*cli, "train-teacher", "--config", "configs/digits_teacher.yaml", "--set", "train.steps=0"],
                    tmp_path, steps0)  # the README's command, as written
    _one_line_error([*cli, "distill", "--teacher", tmp_path / "t", "--set", "distill.start_steps=3"], tmp_path,
                    "config key 'start_steps': must be a power of two")
    _one_line_error([ROOT / "jobs" / "tiny.py", "--set", "tasks=0"], tmp_path, "config key 'tasks': must be in [1, 1000]")
    # a path the user names is not looked up in the package
    _one_line_error([*cli, "train-teacher", "--config", "digits_teacher.yaml"], tmp_path,
                    "config file not found: digits_teacher.yaml")
    # ddss submit finds jobs/ and configs/ of the checkout (the config is checked before any upload)
    _one_line_error([*cli, "submit", "tiny", "--address", "http://127.0.0.1:9", "--no-follow", "--", "--set",
                     "tasks=0"], tmp_path, "config key 'tasks': must be in [1, 1000]")
    assert os.listdir(tmp_path) == []


def _wheel(tmp_path) -> Path:
    """A wheel built from a copy of the project's sources (so nothing is built in the checkout)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "wheel"
    errors = []
    for isolation in ([], ["--no-build-isolation"]):  # isolated needs setuptools from an index; in place, `wheel`
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
        if p.returncode == 0:
            return next(out.glob("ddss_pipeline-*.whl"))
        errors.append(p.stderr.strip().splitlines()[-1:] or ["?"])
    pytest.skip(f"cannot build a wheel here: {errors}")


def test_the_wheel_ships_the_default_configs_and_runs_from_anywhere(tmp_path):
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"pipeline/configs/{n}" for n in SHIPPED} <= set(names), names
    site = tmp_path / "site"  # a non-editable install: no checkout beside the package
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = dict(ENV, PYTHONPATH=str(site))
    ddss = site / "bin" / "ddss"  # the console script (python puts its folder, not the cwd, on sys.path)
    rc, out, err = _run([ddss, "--version"], cwd, env)
    assert (rc, out) == (0, "ddss 0.1.0\n"), err
    rc, out, err = _run([ddss, "--version"], ROOT, dict(env, PYTHONVERBOSE="1"))
    assert f"{site / 'pipeline' / '__init__.py'}" in err and f"{ROOT / 'pipeline' / '__init__.py'}" not in err
    _one_line_error([ddss, "train-teacher", "--set", "train.steps=0"], cwd,
                    "config key 'train.steps': must be in [1, 100000], got 0", env)
    # jobs/ is not packaged: such an install submits from a checkout only, and says so
    _one_line_error([ddss, "submit", "tiny", "--address", "http://127.0.0.1:9"], cwd,
                    "jobs are submitted from a checkout of ddss-pipeline", env)
    _one_line_error([ddss, "submit", "tiny", "--address", "http://127.0.0.1:9", "--", "--set", "tasks=0"], ROOT,
                    "config key 'tasks'", env)  # in a checkout it finds the job there
    assert sorted(os.listdir(cwd)) == []


def test_ddss_submit_uploads_the_configs_its_jobs_name(tmp_path, monkeypatch):
    """The working directory `ddss submit` uploads (built as Ray builds it, from any cwd) holds
    configs/NAME.yaml (Ray follows the checkout's configs link) and the package's copy."""
    from ray._private.runtime_env.packaging import _zip_files  # what JobSubmissionClient.submit_job uploads

    from pipeline.distributed import jobs_client

    monkeypatch.chdir(tmp_path)
    assert jobs_client.project_root() == ROOT
    _zip_files(str(ROOT), list(jobs_client.EXCLUDES), str(tmp_path / "wd.zip"), include_gitignore=True)
    names = set(zipfile.ZipFile(tmp_path / "wd.zip").namelist())
    for name in SHIPPED:
        assert {f"configs/{name}", f"pipeline/configs/{name}"} <= names, name
    assert {f"jobs/{job}.py" for job in jobs_client.job_names()} <= names


def test_the_demo_teacher_is_the_same_from_any_directory(tmp_path, monkeypatch):
    """`ddss demo` builds its teacher on configs/digits_teacher.yaml wherever it runs (the package's
    copy outside the checkout), so the teacher cache is shared."""
    from pipeline.app import demo

    monkeypatch.chdir(ROOT)
    here = demo.teacher_config(demo.QUICK, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert demo.teacher_config(demo.QUICK, str(tmp_path)) == here

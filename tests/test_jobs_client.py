"""Job submission's local side (pipeline/distributed/jobs_client.py), without a cluster: the
jobs found in a jobs/ folder, their import, the config check before upload, a job's command
line, the address, and one-line errors from the job server (a fake client)."""
from __future__ import annotations

import socket
import sys
import types

import pytest

from pipeline.distributed import jobs_client
from pipeline.errors import UserError

LOADER = """
import dataclasses

@dataclasses.dataclass
class Cfg:  # a dataclass: the module must be in sys.modules while it is imported
    path: str
    overrides: dict

def load_config(path, overrides):
    if "bad" in overrides:
        raise ValueError("unknown config key 'bad'")
    return Cfg(path, overrides)
"""


@pytest.fixture
def root(tmp_path):
    """A checkout with jobs/{check,plain,_helper}.py, jobs/notes.txt and configs/check.yaml."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "jobs" / "check.py").write_text(LOADER)
    (tmp_path / "jobs" / "plain.py").write_text("VALUE = 1\n")
    (tmp_path / "jobs" / "_helper.py").write_text("")
    (tmp_path / "jobs" / "notes.txt").write_text("")
    (tmp_path / "configs" / "check.yaml").write_text("a: 1\n")
    return tmp_path


def test_job_names_are_the_public_python_files(root):
    assert jobs_client.job_names(root) == ["check", "plain"]
    assert "evaluate" in jobs_client.job_names()  # the project's own jobs/


def test_an_unknown_job_names_the_jobs(root):
    with pytest.raises(UserError, match="no job 'nope' in .*jobs; jobs: check, plain") as e:
        jobs_client.import_job("nope", root)
    assert "\n" not in str(e.value)


def test_a_job_that_fails_to_import_leaves_no_module(root):
    (root / "jobs" / "broken.py").write_text("raise ImportError('no such thing')\n")
    with pytest.raises(ImportError, match="no such thing"):
        jobs_client.import_job("broken", root)
    assert "ddss_job_broken" not in sys.modules
    assert jobs_client.import_job("plain", root).VALUE == 1


def test_the_config_and_its_overrides_are_checked_by_the_job_s_loader(root):
    cfg = jobs_client.check_job_config("check", "configs/check.yaml", root,
                                       ["--set", "train.steps=5", "--other-flag", "--set", "w=[1, 2]"])
    assert cfg.path == str(root / "configs" / "check.yaml")
    assert cfg.overrides == {"train.steps": 5, "w": [1, 2]}  # values read as YAML
    with pytest.raises(ValueError, match="unknown config key 'bad'"):
        jobs_client.check_job_config("check", "configs/check.yaml", root, ["--set", "bad=1"])
    with pytest.raises(UserError, match="config configs/missing.yaml not found"):
        jobs_client.check_job_config("check", "configs/missing.yaml", root)
    assert jobs_client.check_job_config("plain", "configs/check.yaml", root) is None  # no loader: nothing to check


def test_job_arguments():
    assert jobs_client.parse_job_args([], "d", "configs/x.yaml") == ("configs/x.yaml", {})
    assert jobs_client.parse_job_args(["--config", "c.yaml", "--set", "a.b=0.5", "--set", "name=x y"], "d", "z") == (
        "c.yaml", {"a.b": 0.5, "name": "x y"})
    with pytest.raises(UserError, match="key=value"):
        jobs_client.parse_job_args(["--set", "novalue"], "d", "z")
    assert jobs_client.entrypoint("tiny", "configs/my run.yaml", ["--set", "name=a b"]) == (
        "python jobs/tiny.py --config 'configs/my run.yaml' --set 'name=a b'")


def test_the_address_is_the_argument_else_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="--address"):
        jobs_client.resolve_address(None)
    assert jobs_client.resolve_address("10.0.0.1:8265") == "http://10.0.0.1:8265"
    assert jobs_client.resolve_address("https://head:443") == "https://head:443"
    monkeypatch.setenv("RAY_ADDRESS", "head:8265")
    assert jobs_client.resolve_address(None) == "http://head:8265"
    assert jobs_client.resolve_address("other:1") == "http://other:1"


def test_an_unreachable_job_server_is_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"cannot reach the Ray job server at http://127.0.0.1:{port}") as e:
        jobs_client.client(f"127.0.0.1:{port}")
    assert "\n" not in str(e.value)


class FakeClient:
    def __init__(self, info=None):
        self.info = info

    def get_job_status(self, job_id):
        if self.info is None:
            raise RuntimeError(f"Job {job_id} does not exist.\nmore detail")
        return self.info.status

    def get_job_info(self, job_id):
        return self.info or self.get_job_status(job_id)


def test_job_status_and_info_lines():
    status = types.SimpleNamespace(value="FAILED")
    info = types.SimpleNamespace(status=status, entrypoint="python jobs/tiny.py", message="  boom\nsecond line ")
    assert jobs_client.status(FakeClient(info), "j1") == "FAILED"
    assert jobs_client.info_line(FakeClient(info), "j1") == "j1  FAILED  python jobs/tiny.py (boom)"
    info.message = " "
    assert jobs_client.info_line(FakeClient(info), "j1") == "j1  FAILED  python jobs/tiny.py"
    for call in (jobs_client.status, jobs_client.info_line):
        with pytest.raises(UserError, match="^job j2: Job j2 does not exist.$"):
            call(FakeClient(), "j2")


def test_run_job_exit_codes(capsys):
    assert jobs_client.run_job(lambda argv: None, []) == 0
    assert jobs_client.run_job(lambda argv: len(argv), ["a", "b", "c"]) == 3

    def refuse(argv):
        raise UserError("bad input")

    assert jobs_client.run_job(refuse, []) == 2
    assert capsys.readouterr().err == "error: bad input\n"
    with pytest.raises(ZeroDivisionError):
        jobs_client.run_job(lambda argv: 1 / 0, [])


def test_a_job_name_must_be_a_name_from_jobs(root):
    """A path (or a private jobs/_NAME.py) is no job: refused in one line listing the jobs, and the
    file it names is never run."""
    (root / "x.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    (root / "jobs" / "sub").mkdir()
    (root / "jobs" / "sub" / "y.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    for name in ("../x", str(root / "x"), "sub/y", "./check", "_helper", "check.py", ""):
        with pytest.raises(UserError) as e:
            jobs_client.import_job(name, root)
        assert str(e.value) == f"no job {name!r} in {root / 'jobs'}; jobs: check, plain"
        with pytest.raises(UserError, match="no job"):
            jobs_client.check_job_config(name, "configs/check.yaml", root)
    assert not list(root.rglob("*.ran"))


def test_submit_passes_the_allowed_model_packages_to_the_job(root, monkeypatch):
    from pipeline.models import build

    assert jobs_client.ALLOW_ENV == build.ALLOW_ENV
    sent = []

    class Client:
        def submit_job(self, **kw):
            sent.append(kw)
            return "job-1"

    monkeypatch.setattr(jobs_client, "client", lambda address: Client())
    monkeypatch.delenv(build.ALLOW_ENV, raising=False)
    jobs_client.submit("plain", "h:1", config_path="configs/check.yaml", root=root)
    monkeypatch.setenv(build.ALLOW_ENV, "mypkg,other.models")
    jobs_client.submit("plain", "h:1", config_path="configs/check.yaml", root=root)
    assert "env_vars" not in sent[0]["runtime_env"]
    assert sent[1]["runtime_env"]["env_vars"] == {build.ALLOW_ENV: "mypkg,other.models"}

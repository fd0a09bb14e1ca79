"""`ddss jobs status|logs|stop|list` against a stand-in job client (the real Ray job server:
tests/test_submit.py): what each action prints, and one line with exit 2 for a missing JOB_ID
or a job the server does not know."""
from types import SimpleNamespace

import pytest

from helpers import one_line_exit_2
from pipeline.app import cli
from pipeline.distributed import jobs_client


class FakeJobs:
    """The JobSubmissionClient calls `ddss jobs` makes, on a fixed table of jobs."""

    def __init__(self):
        self.jobs = {
            "ddss-b": SimpleNamespace(submission_id="ddss-b", start_time=20, status="RUNNING",
                                      entrypoint="python jobs/evaluate.py", message="", logs="b's logs\n"),
            "ddss-a": SimpleNamespace(submission_id="ddss-a", start_time=10, status="SUCCEEDED",
                                      entrypoint="python jobs/tiny.py", message="done\nmore", logs="a's logs\n"),
            "raw": SimpleNamespace(submission_id=None, start_time=5),  # submitted by the driver API: skipped
        }
        self.stopped = []

    def _job(self, job_id):
        if job_id not in self.jobs or self.jobs[job_id].submission_id is None:
            raise RuntimeError(f"Job {job_id} does not exist\nat the server")
        return self.jobs[job_id]

    def list_jobs(self):
        return list(self.jobs.values())

    def get_job_info(self, job_id):
        job = self._job(job_id)
        return SimpleNamespace(status=SimpleNamespace(value=job.status), entrypoint=job.entrypoint, message=job.message)

    def get_job_status(self, job_id):
        return SimpleNamespace(value=self._job(job_id).status)

    def get_job_logs(self, job_id):
        return self._job(job_id).logs

    def stop_job(self, job_id):
        job = self._job(job_id)
        self.stopped.append(job_id)
        if job.status in jobs_client.TERMINAL:
            return False
        job.status = "STOPPED"
        return True


@pytest.fixture
def fake(monkeypatch):
    jobs = FakeJobs()
    addresses = []
    monkeypatch.setattr(jobs_client, "client", lambda address: addresses.append(address) or jobs)
    jobs.addresses = addresses
    return jobs


def _out(capsys, *argv) -> str:
    assert cli.main(["jobs", *argv]) == 0
    return capsys.readouterr().out


def test_each_action_prints_what_the_server_says(fake, capsys):
    assert _out(capsys, "list", "--address", "http://h:8265").splitlines() == [
        "ddss-a  SUCCEEDED  python jobs/tiny.py (done)", "ddss-b  RUNNING  python jobs/evaluate.py"]
    assert fake.addresses == ["http://h:8265"]
    assert _out(capsys, "status", "ddss-b") == "ddss-b  RUNNING  python jobs/evaluate.py\n"
    assert _out(capsys, "logs", "ddss-a") == "a's logs\n"
    assert _out(capsys, "stop", "ddss-b") == "job ddss-b: stop requested (STOPPED)\n"
    assert _out(capsys, "stop", "ddss-a") == "job ddss-a: already finished (SUCCEEDED)\n"
    assert fake.stopped == ["ddss-b", "ddss-a"]


def test_missing_or_unknown_job_is_one_line(fake, capsys):
    for action in ("status", "logs", "stop"):
        one_line_exit_2(["jobs", action], capsys, f"`ddss jobs {action}` needs a JOB_ID")
    assert fake.addresses == []  # refused before reaching for the server
    for action in ("status", "logs", "stop"):
        one_line_exit_2(["jobs", action, "ddss-zzz"], capsys, "job ddss-zzz: Job ddss-zzz does not exist")
    assert fake.stopped == []

"""Bring your own model: a Flax module in a package outside pipeline/, named by import path, is
trained by `ddss train-teacher`, searched by `ddss search` and evaluated by `ddss evaluate`
(on Ray actors, which import it from PYTHONPATH) through the command line."""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline import ddss, rundir

from pipeline.app import cli
from pipeline.models import build
from pipeline.teacher import model as tmodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "byo_tiny_denoiser"

MODEL = '''
"""A user's eps-network: an MLP on the flattened image with time features and a class embedding
(the label num_classes is the null class), following pipeline.train's model contract."""
import flax.linen as nn
import jax.numpy as jnp


class TinyEps(nn.Module):
    hidden: int = 32
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, t, y=None, w=None, train: bool = False):
        B = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (B,))
        y = jnp.full((B,), self.num_classes, jnp.int32) if y is None else jnp.broadcast_to(y, (B,))
        freqs = jnp.arange(1, 5, dtype=jnp.float32)
        time = jnp.concatenate([jnp.sin(jnp.pi * freqs * t[:, None]), jnp.cos(jnp.pi * freqs * t[:, None])], -1)
        h = nn.Dense(self.hidden)(jnp.concatenate([x.reshape(B, -1), time], -1))
        h = h + nn.Embed(self.num_classes + 1, self.hidden)(y)
        h = nn.Dense(self.hidden)(nn.silu(h))
        return nn.Dense(x[0].size)(nn.silu(h)).reshape(x.shape).astype(x.dtype)
'''


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The user's package, written outside pipeline/ and put on sys.path."""
    where = tmp_path_factory.mktemp("user_code")
    (where / PACKAGE).mkdir()
    (where / PACKAGE / "__init__.py").write_text("")
    (where / PACKAGE / "models.py").write_text(textwrap.dedent(MODEL))
    sys.path.insert(0, str(where))
    yield str(where)
    sys.path.remove(str(where))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def test_own_model_trains_searches_and_evaluates_through_the_cli(package, tmp_path, capsys, monkeypatch):
    # a model from outside pipeline/ is built only from a package the user allows (--allow-module)
    monkeypatch.delenv(build.ALLOW_ENV, raising=False)
    teacher, search_dir = tmp_path / "teacher", tmp_path / "search"
    sets = {"model.import_path": f"{PACKAGE}.models:TinyEps", "model.kwargs": "{hidden: 32}", "train.steps": 60,
            "train.batch_size": 32, "train.checkpoint_every": 60, "train.log_every": 20, "sample.steps": 4,
            "sample.per_class": 1, "sample.fd_samples": 0}
    argv = ["train-teacher", "--run-dir", str(teacher), "--allow-module", PACKAGE]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    t = tmodel.load_teacher(teacher)
    assert type(t.model).__module__ == f"{PACKAGE}.models" and t.step == 60

    monkeypatch.delenv(build.ALLOW_ENV)
    assert cli.main(["search", "--teacher", str(teacher), "--steps", "2", "--workers", "0"]) == 2
    assert f"'{PACKAGE}.models:TinyEps' is not allowed" in capsys.readouterr().err
    argv = ["search", "--allow-module", PACKAGE, "--teacher", str(teacher), "--steps", "2", "--workers", "0",
            "--train-steps", "2", "--batch-size", "16", "--run-dir", str(search_dir), "--set", "eval_samples=32", "--set", "eval_every=2",
            "--set", "checkpoint_every=2"]
    assert cli.main(argv) == 0, capsys.readouterr().err[-2000:]
    found = json.loads(capsys.readouterr().out)
    art = ddss.load_artefact(found["artefact"])
    assert art["meta"]["teacher"] == str(teacher) and art["meta"]["K"] == 2
    assert art["meta"]["data_shape"] == [8, 8, 1]
    assert all(np.all(np.isfinite(v)) for v in art["params"].values())

    # Ray's actors import the model from PYTHONPATH, as a user's would: a fresh `ddss` process
    # with its own local Ray.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([package, os.environ.get("PYTHONPATH", "")])}
    env.pop(build.ALLOW_ENV, None)  # the flag sets it for the actors too
    cmd = [sys.executable, "-m", "pipeline.app.cli", "evaluate", "--allow-module", PACKAGE, "--teacher", str(teacher),
           "--sampler", f"ggdm:{found['artefact']}", "--steps", "2", "--num-samples", "32", "--batch-size", "16", "--workers", "1"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout)
    (key, row), = rundir.read_results(teacher)["evaluations"].items()
    assert key.startswith(f"ggdm:{found['artefact']} K=2")
    assert row["features"] == "digit-classifier" and row["nfe"] == 2 and row["num_samples"] == 32
    assert math.isfinite(row["fd"]) and math.isfinite(row["kid"]) and row["fd"] > 0
    assert printed["fd"] == row["fd"] and printed["kid"] == row["kid"]

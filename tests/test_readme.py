"""README.md's command lines run as written: every `ddss ...` line of its code blocks is either run
here, in README order, from an empty directory, through the real command-line parser, or named in
ELSEWHERE with the reason it is not (a cluster, the demo's own test).

Each line is run without its optional `[--...]` parts, its placeholders (RUN_DIR, SEARCH_RUN,
IMPORTED) replaced by directories of the test, and tiny budgets appended as `--set KEY=VALUE`
(TINY; flags written in the line win over --set, so the line's own values hold). The digit
classifier behind FD/KID is cached beforehand, untrained (training it takes ~40 s), and
the U-Net weights `ddss import-teacher` reads are a random U-Net's, saved as the README says."""
import json
import os
import re
import shlex

import jax
import numpy as np
import pytest

from pipeline.app import cli

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PLACEHOLDERS = {"RUN_DIR": "teacher", "SEARCH_RUN": "search", "IMPORTED": "imported"}
ELSEWHERE = {"demo": "tests/test_demo.py runs ddss demo --quick", "submit": "needs a Ray cluster (cluster/README.md)"}
TINY = {  # appended to every line of that command (values as YAML, like any --set)
    "train-teacher": ["model.kwargs={ch: 8, ch_mult: [1], num_res_blocks: 1}", "train.steps=10", "train.batch_size=16",
                      "train.log_every=10", "train.checkpoint_every=10", "sample.fd_samples=0", "sample.steps=4",
                      "sample.per_class=1"],
    "search": ["train_steps=2", "batch_size=8", "eval_samples=16", "eval_every=2", "checkpoint_every=2", "workers=0"],
    "distill": ["distill.start_steps=8", "distill.stage1={train_steps: 2, lr: 1.0e-4, batch: 8}",
                "distill.rounds={train_steps: 2, lr: 5.0e-5, batch: 8}", "workers=0"],
    "evaluate": ["num_samples=64", "workers=1", "batch_size=64", "val_seeds=[1000]", "tune_strides=[linear, karras]",
                 "tune_t_max=[1.0, 0.97]"],
}


def readme_commands(text: str) -> list[str]:
    """The `ddss ...` lines of the fenced code blocks of a Markdown text, in order (comments cut)."""
    out, inside = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("```"):
            inside = not inside
        elif inside and s.startswith("ddss "):
            out.append(" ".join(shlex.split(s, comments=True)) if "#" in s else s)
    return out


def as_argv(line: str, dirs: dict) -> list[str]:
    """argv of a README line: optional [--...] parts dropped, placeholders replaced, TINY appended."""
    argv = shlex.split(re.sub(r"\s*\[--[^\]]*\]", "", line))[1:]
    pattern = re.compile(r"\b(" + "|".join(PLACEHOLDERS) + r")\b")
    argv = [pattern.sub(lambda m: dirs[m.group(1)], a) for a in argv]
    for item in TINY.get(argv[0], []):
        argv += ["--set", item]
    return argv


def test_readme_lines_are_found_and_parsed():
    lines = readme_commands(open(README).read())
    commands = [shlex.split(line)[1] for line in lines]
    # the pipeline in order, then a pretrained model brought in
    for needed in ("train-teacher", "evaluate", "search", "distill", "sample", "import-teacher"):
        assert needed in commands, needed
    assert set(commands) - set(ELSEWHERE) <= {"train-teacher", "evaluate", "search", "distill", "sample", "import-teacher"}
    argv = as_argv("ddss x --a RUN_DIR/distill@4 --k '{ch: [1]}' [--workers 2] [--set a.b=1]", {"RUN_DIR": "/t"})
    assert argv == ["x", "--a", "/t/distill@4", "--k", "{ch: [1]}"]
    assert readme_commands("```\nddss demo   # the demo\nmake x\n```\nddss not-in-a-block\n") == ["ddss demo"]


def _cache_digit_classifier(cache_dir):
    """The digit classifier's cache entry, filled with an untrained classifier: features for the
    plumbing under test (training it takes ~40 s)."""
    import jax.numpy as jnp

    from pipeline.models import classifier

    with jax.threefry_partitionable(False):  # jitted: one XLA program, not one per op
        params = jax.jit(lambda: classifier.DigitCNN().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))()
    classifier.save_feature_net(classifier.feature_net_path(cache_dir, 0), params,
                                {"seed": 0, "test_accuracy": 0.0, "feature_dim": classifier.FEATURE_DIM, "data": "untrained"})


def _save_unet_msgpack(path):
    """A random U-Net's params (the README's --kwargs, 10 classes, 8x8x1) as flax.serialization.to_bytes."""
    from flax import serialization

    from helpers import perturb
    from pipeline.models.unet import UNet
    from pipeline.teacher.model import init_params

    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1)
    with jax.threefry_partitionable(False):
        params = jax.jit(lambda: init_params(model, (8, 8, 1), jax.random.key(0)))()
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(perturb(jax.device_get(params), 0)))


@pytest.mark.ray
def test_every_readme_command_runs_as_written(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty directory: configs/ comes from the package
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _cache_digit_classifier(tmp_path / ".cache")  # the default cache_dir, .cache, of every command
    _save_unet_msgpack(tmp_path / "unet.msgpack")
    dirs = {k: str(tmp_path / v) for k, v in PLACEHOLDERS.items()}
    ran = []
    for line in readme_commands(open(README).read()):
        argv = as_argv(line, dirs)
        if argv[0] in ELSEWHERE:
            continue
        rc = cli.main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"{line}\n{out.err[-3000:]}"
        ran.append(argv[0])
    assert ran.count("evaluate") == 4 and ran.count("sample") == 2 and "import-teacher" in ran

    results = json.load(open(os.path.join(dirs["RUN_DIR"], "results.json")))
    evals = results["evaluations"]
    tuned = [k for k in evals if k.startswith("unipc-2 ")]  # the --tune --seeds 0 1 2 line: validation and test seeds
    assert len(evals) - len(tuned) == 3 and len(results["protocol"]) == 1
    assert sorted(re.search(r" seed=(\d+) ", k)[1] for k in tuned if " seed=1000 " not in k) == ["0", "1", "2"]
    for row in evals.values():
        assert np.isfinite(row["fd"]) and np.isfinite(row["kid"])
    for npz, n in (("k5.npz", 100), ("imported.npz", 16)):
        with np.load(tmp_path / npz, allow_pickle=False) as z:
            assert z["images"].shape == (n, 8, 8, 1) and np.all(np.isfinite(z["images"]))

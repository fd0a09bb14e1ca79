"""A seeded fuzz of bad input (issue 15, point 6): mutated configs of every kind, YAML of random
bytes, and bad .npz and artefact files (random bytes, truncations, flipped bytes, .npy files,
arrays of wrong shape, dtype or range, meta.json of wrong types), driven through the entry
points that validate before any work: config.load of each config class, load_npz,
load_artefact and `ddss train-teacher` / `ddss evaluate`. Every case ends in a UserError (through
`ddss`: exit code 2 and one error line), never in another exception, and no existing file or
directory changes. Nothing trains or samples: a case that passes every check is stopped at the
training (or evaluation) call and counted as accepted, not judged."""
import copy
import hashlib
import io
import json
import math
import os
import random
import shutil

import numpy as np
import pytest
import yaml

from pipeline import config
from pipeline.errors import UserError

SEED = 15
INF, NAN = math.inf, math.nan
BAD_VALUES = [None, True, False, 0, -1, 1, -7, 3, 2**31, 2**32, 2**63, 10**30, -10**30, 0.5, -0.5, 1e300, -1e300,
              INF, -INF, NAN, "", "x", "nan", "1", "../../etc/passwd", "/proc/self", "\x00", "a\nb", "é" * 3,
              "x" * 3000, "os:system", "pipeline.models.unet:UNet", "ggdm:/nowhere", [], [1, 2], [[]], ["a"], {},
              {"a": 1}, {"nested": {"deep": [1, {"x": None}]}}]
TINY_TEACHER = {"model": {"kwargs": {"ch": 8, "ch_mult": [1], "num_res_blocks": 1}},
                "train": {"steps": 2, "batch_size": 4}, "sample": {"fd_samples": 0, "steps": 2, "per_class": 1}}


class WouldRun(Exception):
    """Raised in place of training or evaluating: the case passed every check."""


def _snapshot(root) -> dict:
    """Every directory and file under root, files with their bytes."""
    out = {}
    for base, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.join(base, d)] = None
        for f in files:
            with open(os.path.join(base, f), "rb") as fh:
                out[os.path.join(base, f)] = fh.read()
    return out


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


def _sections(d: dict, prefix=()):
    yield prefix
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _sections(v, prefix + (k,))


def _at(d: dict, path):
    for k in path:
        d = d[k]
    return d


def _huge_model(path, value) -> bool:
    """model.kwargs integers of 2**31 and more: not drawn for `ddss train-teacher`, whose U-Net
    does not bound its sizes (num_res_blocks=2**31 loops for ever while it is traced; ch=2**31
    passes the check and fails only when training allocates it)."""
    return path[:2] == ("model", "kwargs") and isinstance(value, int) and abs(value) >= 2**31


def mutate(rng: random.Random, base: dict, skip=lambda path, value: False):
    """A copy of `base` with 1-3 random mutations (or a document that is no mapping), and what
    was done; skip(path, value): draw another value."""
    if rng.random() < 0.05:
        doc = rng.choice([[], [1], "text", 3, None, 1.5, True])
        return doc, f"document {doc!r}"
    data, done = copy.deepcopy(base), []
    for _ in range(rng.choice([1, 1, 2, 3])):
        kind = rng.random()
        if kind < 0.6:
            path = rng.choice(list(_leaves(data)))
            value = copy.deepcopy(rng.choice(BAD_VALUES))
            while skip(path, value):
                value = copy.deepcopy(rng.choice(BAD_VALUES))
            _at(data, path[:-1])[path[-1]] = value
            done.append(f"{'.'.join(path)}={value!r:.60}")
        elif kind < 0.8:
            section = rng.choice(list(_sections(data)))
            key = rng.choice(["nonsense", "stepz", "", "1", "train", "__class__", "x.y"])
            _at(data, section)[key] = 1
            done.append(f"unknown {'.'.join(section + (key,))}")
        else:
            sections = [s for s in _sections(data) if s]
            if sections:
                path = rng.choice(sections)
                value = copy.deepcopy(rng.choice(BAD_VALUES))
                while skip(path, value):
                    value = copy.deepcopy(rng.choice(BAD_VALUES))
                _at(data, path[:-1])[path[-1]] = value
                done.append(f"section {'.'.join(path)}={value!r:.60}")
    return data, "; ".join(done)


def _judge(fn, case: str) -> str:
    """'refused' (a UserError) or 'accepted'; any other exception fails the test naming the case."""
    try:
        fn()
    except UserError:
        return "refused"
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{case}: {type(e).__name__}: {str(e)[:300]}")
    return "accepted"


def _config_classes():
    from pipeline.app.evaluate_job import EvaluateConfig
    from pipeline.ddss.config import SearchConfig
    from pipeline.distill.config import DistillConfig, JobConfig
    from pipeline.teacher.config import TeacherConfig

    bases = {TeacherConfig: TINY_TEACHER, EvaluateConfig: {"teacher": "t"}, SearchConfig: {"gmm": "ring2d"},
             DistillConfig: {"teacher": "t"}, JobConfig: {"distill": {"teacher": "t"}}}
    return {cls: config.to_dict(config.load(cls, base)) for cls, base in bases.items()}


def test_config_loading_refuses_with_one_user_error(tmp_path):
    rng = random.Random(SEED)
    counts = {"refused": 0, "accepted": 0}
    for cls, base in _config_classes().items():
        for i in range(60):
            data, what = mutate(rng, base)
            if isinstance(data, dict):  # a program's dict (a document that is no mapping comes as YAML)
                counts[_judge(lambda: config.load(cls, data), f"{cls.__name__} {what}")] += 1
            path = tmp_path / f"{cls.__name__}-{i}.yaml"
            path.write_text(yaml.safe_dump(data))
            counts[_judge(lambda: config.load(cls, str(path)), f"{cls.__name__} YAML of {what}")] += 1
            if i % 3 == 0:  # YAML text: random bytes, or a dump of the mutation cut short
                text = yaml.safe_dump(data) if isinstance(data, dict) else "x: 1\n"
                raw = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randrange(80))),
                                  text.encode()[:rng.randrange(len(text) + 1)],
                                  b"a: [\n", b"a: *x\n", b"\xff\xfe\x00a: 1\n", b"{a: 1, a: 2}\n", b"!!python/object:os.system\n"])
                path.write_bytes(raw)
                counts[_judge(lambda: config.load(cls, str(path)), f"{cls.__name__} YAML {raw[:60]!r}")] += 1
    assert counts["refused"] > 2 * counts["accepted"], counts


def _good_npz(rng) -> bytes:
    buf = io.BytesIO()
    n = rng.randrange(1, 5)
    np.savez(buf, images=np.zeros((n, 4, 4, 1), np.uint8), labels=np.arange(n))
    return buf.getvalue()


def bad_bytes(rng, good: bytes) -> tuple[bytes, str]:
    """A corrupted version of the file `good`, and how."""
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.randrange(0, 200)
        return bytes(rng.randrange(256) for _ in range(n)), f"{n} random bytes"
    if kind == 1:
        cut = rng.randrange(len(good))
        return good[:cut], f"cut at {cut}"
    if kind == 2:
        data = bytearray(good)
        spots = [rng.randrange(len(data)) for _ in range(rng.randrange(1, 5))]
        for s in spots:
            data[s] ^= 1 << rng.randrange(8)
        return bytes(data), f"bits flipped at {spots}"
    if kind == 3:
        data = bytearray(good)
        a = rng.randrange(len(data))
        data[a:a + rng.randrange(1, 64)] = bytes(min(64, len(data) - a))
        return bytes(data), f"zeroed from {a}"
    if kind == 4:
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 4, 4, 1), np.uint8))
        return buf.getvalue(), "a .npy"
    return b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(rng.randrange(100))), "zip magic, then noise"


def bad_arrays(rng) -> tuple[dict, str]:
    """Arrays an .npz may hold that are not valid data."""
    n = rng.randrange(0, 4)
    images = rng.choice([np.zeros((n, 4, 4, 1), np.uint8), np.zeros((n, 4, 4), np.uint8), np.zeros((n, 4, 4, 1), np.int64),
                         np.full((n, 4, 4, 1), rng.choice([NAN, INF, 2.0, -1.5, 0.25]), np.float32),
                         np.zeros((n, 4, 4, 1), np.float16), np.zeros((n, 4, 4, 1), bool), np.zeros(0)])
    labels = rng.choice([np.arange(n), np.arange(n) - 1, np.full(n, 2**32), np.full(n, 10**9), np.full(n, 0.5),
                         np.arange(n + 1), np.zeros((n, 1), int), np.full(n, True), np.full(n, 2**64 - 1, np.uint64),
                         np.array(["a"] * n)])
    arrays = {"images": images, "labels": labels}
    if rng.random() < 0.2:
        del arrays[rng.choice(["images", "labels"])]
    return arrays, f"images {images.dtype} {images.shape}, labels {labels.dtype} {labels.shape}"


def test_bad_npz_files_are_one_user_error(tmp_path):
    from pipeline.data.arrays import MAX_CLASSES, load_npz

    rng = random.Random(SEED + 1)
    path = tmp_path / "data.npz"
    for i in range(150):
        if i % 2:
            data, what = bad_bytes(rng, _good_npz(rng))
            path.write_bytes(data)
        else:
            arrays, what = bad_arrays(rng)
            np.savez(path, **arrays)
        result = []
        if _judge(lambda: result.append(load_npz(path, "images", "labels")), f"npz {what}") == "accepted":
            x, y = result[0]
            assert x.dtype == np.float32 and np.all(np.abs(x) <= 1) and y.dtype == np.int32, what
            assert y.shape == x.shape[:1] and (not y.size or 0 <= y.min() <= y.max() < MAX_CLASSES), what


def test_bad_artefacts_are_one_user_error(tmp_path):
    from pipeline import schedules
    from pipeline.data.gmm import gmm_preset
    from pipeline.ddss.artefact import load_artefact, plan, save_artefact
    from pipeline.evaluation import AnalyticModel
    from pipeline.samplers import ggdm

    rng = random.Random(SEED + 2)
    good = save_artefact(tmp_path / "good", ggdm.init_params(3, "ggdm+pred+time", "cosine"),
                         {"schedule": "cosine", "data_shape": [2], "guidance": 0.5})
    model = AnalyticModel(gmm_preset("ring2d"), schedules.get("cosine"))
    good_params = open(f"{good}/params.npz", "rb").read()
    good_meta = json.loads(open(f"{good}/meta.json").read())
    counts = {"refused": 0, "accepted": 0}
    for i in range(150):
        case = str(tmp_path / f"case{i}")
        shutil.copytree(good, case)
        meta, what = dict(good_meta), ""
        kind = i % 3
        if kind == 0:  # params.npz corrupted; its checksum kept (caught by it) or recomputed / dropped (parsed)
            data, what = bad_bytes(rng, good_params)
            with open(f"{case}/params.npz", "wb") as f:
                f.write(data)
            meta["params_sha256"] = rng.choice([meta.get("params_sha256"), hashlib.sha256(data).hexdigest(), None])
        elif kind == 1:  # GGDM arrays of wrong layout, shape, dtype or value
            params = {k: np.asarray(v) for k, v in ggdm.init_params(3, "ggdm+pred+time", "cosine").items()}
            key = rng.choice(sorted(params))
            change = rng.randrange(5)
            if change == 0:
                del params[key]
            elif change == 1:
                params[key] = params[key][..., :2]
            elif change == 2:
                params[key] = params[key].astype(rng.choice([np.int32, np.complex64, np.float16, bool]))
            elif change == 3:
                params[key] = np.full_like(params[key], rng.choice([NAN, INF, -INF, 1e30]))
            else:
                params["extra"] = np.zeros(3, np.float32)
            buf = io.BytesIO()
            np.savez(buf, **params)
            with open(f"{case}/params.npz", "wb") as f:
                f.write(buf.getvalue())
            meta.pop("params_sha256", None)
            what = f"params change {change} of {key}"
        else:  # meta.json of wrong types, or not JSON at all
            if rng.random() < 0.2:
                raw = rng.choice([b"", b"[]", b"null", b"{", b"\xff\xfe", b"[" * 5000, json.dumps(rng.choice(BAD_VALUES)).encode()])
                with open(f"{case}/meta.json", "wb") as f:
                    f.write(raw)
                what = f"meta.json {raw[:40]!r}"
                meta = None
            else:
                key = rng.choice(["format", "sampler", "variant", "K", "schedule", "data_shape", "guidance", "params_sha256"])
                meta[key] = copy.deepcopy(rng.choice(BAD_VALUES))
                what = f"meta {key}={meta[key]!r:.60}"
        if meta is not None:
            with open(f"{case}/meta.json", "w") as f:
                json.dump({k: v for k, v in meta.items() if v is not None or k != "params_sha256"}, f)
        counts[_judge(lambda: plan(case, model), f"artefact {what}")] += 1
        if kind == 0 and i % 2:
            _judge(lambda: load_artefact(case), f"artefact {what}")
    assert counts["refused"] > counts["accepted"], counts


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A folder of existing things (data files, an artefact, a finished-looking run) as the cwd,
    with training and evaluation replaced by WouldRun."""
    from pipeline.app import evaluate_job
    from pipeline.distributed import spmd

    w = tmp_path / "world"
    (w / "old-run").mkdir(parents=True)
    (w / "old-run" / "config.yaml").write_text("schedule: cosine\n")
    (w / "old-run" / "results.json").write_text('{"teacher": {"fd": 1.0}}\n')
    np.savez(w / "good.npz", images=np.zeros((3, 4, 4, 1), np.uint8), labels=np.arange(3))
    monkeypatch.chdir(w)

    def would_run(*args, **kwargs):
        raise WouldRun()

    monkeypatch.setattr(spmd, "run_spmd", would_run)
    monkeypatch.setattr(evaluate_job, "run_evaluation", would_run)
    return w


def _cli(argv, capsys, case: str) -> str:
    """'refused' (exit code 2, one error line) or 'accepted' (WouldRun)."""
    from pipeline.app import cli

    try:
        rc = cli.main([str(a) for a in argv])
    except WouldRun:
        return "accepted"
    except BaseException as e:  # noqa: BLE001
        pytest.fail(f"{case}: {type(e).__name__}: {str(e)[:300]}")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, f"{case}: rc {rc}: {err[-500:]}"
    return "refused"


def test_ddss_refuses_bad_configs_and_files_with_one_line_touching_nothing(world, capsys):
    from pipeline.app.evaluate_job import EvaluateConfig
    from pipeline.teacher.config import TeacherConfig

    rng = random.Random(SEED + 3)
    before = _snapshot(world)
    counts = {"refused": 0, "accepted": 0}
    teacher = config.to_dict(config.load(TeacherConfig, TINY_TEACHER))
    tiny = world.parent / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(teacher))
    for i in range(70):
        data, what = mutate(rng, teacher, skip=_huge_model)
        bad, new = world.parent / f"bad{i}.yaml", world / f"new{i}"
        bad.write_text(yaml.safe_dump(data))
        verdict = _cli(["train-teacher", "--config", bad, "--run-dir", new], capsys, f"train-teacher {what}")
        counts[verdict] += 1
        if verdict == "accepted":  # it got as far as training: its own new run directory, nothing else
            shutil.rmtree(new)
        assert not new.exists() and _snapshot(world) == before, what
    for i in range(40):  # the user's own data: a bad training .npz
        data, what = (bad_bytes(rng, _good_npz(rng)) if i % 2 else (None, None))
        path = world.parent / f"data{i}.npz"
        if data is None:
            arrays, what = bad_arrays(rng)
            np.savez(path, **arrays)
        else:
            path.write_bytes(data)
        new = world / f"npz{i}"
        verdict = _cli(["train-teacher", "--config", tiny, "--set", "data.name=npz", "--set", f"data.path={path}",
                        "--run-dir", new], capsys, f"npz {what}")
        counts[verdict] += 1
        if verdict == "accepted":
            shutil.rmtree(new)
        assert not new.exists() and _snapshot(world) == before, what
    evaluate = config.to_dict(config.load(EvaluateConfig, {"teacher": str(world / "old-run")}))
    for i in range(40):
        data, what = mutate(rng, evaluate)
        bad = world.parent / f"eval{i}.yaml"
        bad.write_text(yaml.safe_dump(data))
        counts[_cli(["evaluate", "--config", bad], capsys, f"evaluate {what}")] += 1
        assert _snapshot(world) == before, what
    assert counts["refused"] > 3 * counts["accepted"], counts

"""The SPMD context (pipeline/distributed/context.py): the mesh, this process's rows, host
values to and from global arrays, and the run directory's metrics, results and progress
lines. Several devices: a forced 4-device CPU in a subprocess."""
import dataclasses
import io
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from forced_devices import call_with_devices
from jax.sharding import PartitionSpec

from pipeline import rundir
from pipeline.distributed import context
from pipeline.distributed.context import DATA, TENSORBOARD, SpmdContext, local_context, make_mesh


def test_local_context_is_one_process_over_every_device(tmp_path):
    ctx = local_context(str(tmp_path), {"a": 1})
    assert (ctx.process_index, ctx.process_count, ctx.is_main) == (0, 1, True)
    assert ctx.config == {"a": 1} and ctx.run_dir == str(tmp_path)
    assert ctx.mesh.axis_names == (DATA,) and ctx.num_devices == jax.device_count() == make_mesh().size
    assert ctx.data_sharding.spec == PartitionSpec(DATA) and ctx.replicated.spec == PartitionSpec()


def test_one_process_holds_every_row(tmp_path):
    ctx = local_context(str(tmp_path), {})
    n = 3 * ctx.num_devices
    assert ctx.local_rows(n) == slice(0, n)


def test_replicate_then_gather_gives_the_host_values_back(tmp_path):
    ctx = local_context(str(tmp_path), {})
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(5)}
    rep = ctx.replicate(tree)
    for a in jax.tree.leaves(rep):
        assert isinstance(a, jax.Array) and a.sharding.is_equivalent_to(ctx.replicated, a.ndim)
    back = ctx.gather(rep)
    for k in tree:
        assert isinstance(back[k], np.ndarray) and back[k].dtype == np.asarray(tree[k]).dtype
        np.testing.assert_array_equal(back[k], tree[k])


def on_four_devices(run_dir):
    """What a one-process context over 4 devices gives: its rows, the error of a batch the
    devices do not divide, and a sharded and a replicated array gathered whole."""
    ctx = local_context(run_dir, {})
    rows = ctx.local_rows(8)
    try:
        ctx.local_rows(6)
        error = None
    except ValueError as e:
        error = str(e)
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    sharded = jax.device_put(x, ctx.data_sharding)
    rep = ctx.replicate({"x": x})
    return {"devices": ctx.num_devices, "rows": [rows.start, rows.stop], "error": error,
            "shards": len(sharded.addressable_shards), "gathered": ctx.gather(sharded).tolist(),
            "replicated": ctx.gather(rep)["x"].tolist(),
            "replicated_whole": all(s.data.shape == x.shape for s in rep["x"].addressable_shards)}


def test_four_devices_one_process(tmp_path):
    out = call_with_devices(4, "test_context", "on_four_devices", str(tmp_path))
    x = np.arange(16, dtype=np.float32).reshape(8, 2).tolist()
    assert out["devices"] == 4 and out["rows"] == [0, 8]
    assert out["error"] and "global batch 6 is not divisible by the 4 devices" in out["error"]
    assert out["shards"] == 4 and out["gathered"] == x
    assert out["replicated"] == x and out["replicated_whole"]


def _metrics(run_dir):
    path = os.path.join(run_dir, rundir.METRICS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _worker_1(ctx):
    return SpmdContext(run_dir=ctx.run_dir, config={}, mesh=ctx.mesh, process_index=1, process_count=2)


def test_report_appends_step_time_and_host_values_on_process_0_only(tmp_path):
    ctx = local_context(str(tmp_path), {})
    t0 = time.time()
    ctx.report(3, loss=jnp.float32(0.5), v=jnp.arange(2))
    ctx.report(4, loss=1.25)
    t1 = time.time()
    _worker_1(ctx).report(5, loss=2.0)
    records = _metrics(str(tmp_path))
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 3, "loss": 0.5, "v": [0, 1]}, {"step": 4, "loss": 1.25}]
    assert all(t0 <= r["time"] <= t1 for r in records)
    assert isinstance(records[0]["step"], int)


def read_event_scalars(logdir) -> dict:
    """{tag: [(step, value)]} from every TensorBoard event file under `logdir`, read back from
    the TFRecord framing (length, masked CRC, Event proto, masked CRC) with tensorboardX's protos,
    in the order they were written (by wall time: two writers' file names in the same second need
    not sort in the order they were opened)."""
    import struct

    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for name in sorted(os.listdir(logdir)):
        assert name.startswith("events.out.tfevents."), name
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (n,) = struct.unpack("Q", header)
            assert struct.unpack("I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
            body = data[pos + 12:pos + 12 + n]
            assert struct.unpack("I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(body)
            pos += 16 + n
            events.append(event_pb2.Event.FromString(body))
    out = {}
    for event in sorted(events, key=lambda e: e.wall_time):  # stable: a file's own order is kept
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_report_writes_the_scalars_to_tensorboard_event_files(tmp_path):
    ctx = local_context(str(tmp_path), {})
    ctx.report(3, loss=jnp.float32(0.5), v=jnp.arange(2), name="x")
    ctx.report(4, loss=1.25, lr=jnp.float32(1e-3))
    _worker_1(ctx).report(5, loss=2.0)  # process 1 writes nothing
    ctx.close()
    scalars = read_event_scalars(tmp_path / TENSORBOARD)
    assert scalars.keys() == {"loss", "lr"}  # arrays and strings stay in metrics.jsonl only
    assert scalars["loss"] == [(3, 0.5), (4, 1.25)]
    assert scalars["lr"] == [(4, pytest.approx(1e-3))]
    ctx.report(6, loss=0.25)  # after close: a new event file; TensorBoard reads both
    ctx.close()
    assert read_event_scalars(tmp_path / TENSORBOARD)["loss"] == [(3, 0.5), (4, 1.25), (6, 0.25)]


def test_reports_reach_ray_train_at_most_every_interval_and_the_newest_at_close(tmp_path, monkeypatch):
    """A Ray Train worker's context sends {"step", **metrics} to its on_report (ray.train.report,
    which blocks when called more often than Ray's controller polls)."""
    sent = []
    ctx = dataclasses.replace(local_context(str(tmp_path), {}), on_report=sent.append)
    ctx.report(1, loss=jnp.float32(4.0))  # the first at once
    ctx.report(2, loss=3.0)
    ctx.report(3, loss=2.0, v=jnp.arange(2))
    assert sent == [{"step": 1, "loss": 4.0}]
    ctx.close()  # the newest one not sent yet
    assert sent == [{"step": 1, "loss": 4.0}, {"step": 3, "loss": 2.0, "v": [0, 1]}]
    ctx.close()
    assert len(sent) == 2  # nothing new
    monkeypatch.setattr(context, "TRAIN_REPORT_EVERY_S", 0.0)
    ctx.report(4, loss=1.0)
    ctx.report(5, loss=0.5)
    ctx.close(send=False)
    assert [m["step"] for m in sent] == [1, 3, 4, 5]
    ctx.close(send=False)
    assert len(sent) == 4


def test_update_results_merges_on_process_0_only(tmp_path):
    ctx = local_context(str(tmp_path), {})
    ctx.update_results({"a": 1})
    ctx.update_results({"b": {"c": 2}})
    _worker_1(ctx).update_results({"a": 3})
    assert rundir.read_results(str(tmp_path)) == {"a": 1, "b": {"c": 2}}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _progress_output(monkeypatch, ctx, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = ctx.progress(5, desc="train")
    for _ in range(5):
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_progress_off_a_terminal_writes_whole_lines(tmp_path, monkeypatch):
    ctx = local_context(str(tmp_path), {})
    out = _progress_output(monkeypatch, ctx, io.StringIO())
    assert out and "\r" not in out and out.endswith("\n"), repr(out)
    lines = out.splitlines()
    assert all(line.strip() for line in lines) and "train" in lines[-1] and "5/5" in lines[-1], lines
    # on a terminal the same bar redraws in place
    assert "\r" in _progress_output(monkeypatch, ctx, _Terminal())


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal])
def test_progress_is_silent_off_process_0(tmp_path, monkeypatch, stream):
    ctx = _worker_1(local_context(str(tmp_path), {}))
    assert _progress_output(monkeypatch, ctx, stream()) == ""


def test_checkpointer_writes_under_the_run_directory(tmp_path):
    ctx = local_context(str(tmp_path), {})
    state = ctx.replicate({"w": np.arange(3, dtype=np.float32)})
    with ctx.checkpointer(async_save=False) as ck:
        ck.save(2, state)
    assert os.path.isdir(os.path.join(rundir.checkpoint_dir(str(tmp_path)), "2"))
    with ctx.checkpointer() as ck:
        assert ck.latest_step() == 2
        np.testing.assert_array_equal(np.asarray(ck.restore(state)["w"]), [0, 1, 2])

"""Pipeline.stream and its torch IterableDataset (docs/sampling.md, "Streaming into a pipeline"):
byte equality with Pipeline.sample, sharding across DataLoader workers and ranks, laziness."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastddpm

torch = pytest.importorskip("torch")

N, B = 100, 16  # 7 batches, the last one of 4
KW = dict(sampler="ddim", steps=6, seed=3)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from fastddpm import checkpoint
    from fastddpm.data import Normalization
    from fastddpm.nets import MLP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "ckpt"
    checkpoint.save(path, MLP(dim=2, width=16, depth=2), fastddpm.Schedule.linear(100),
                    normalization=Normalization(np.array([1.0, -1.0]), np.array([2.0, 0.5])))
    return fastddpm.Pipeline.from_checkpoint(path)


@pytest.mark.parametrize("engine", ["torch", "auto"])
@pytest.mark.parametrize("start,denormalize", [(0, True), (37, False), (48, True)])
def test_stream_equals_sample_byte_for_byte(pipe, engine, start, denormalize):
    if engine == "auto":
        pytest.importorskip("onnxruntime")
    ref = pipe.sample(N, batch_size=B, start=start, engine=engine, denormalize=denormalize, progress=False, **KW)
    batches = list(pipe.stream(N, batch_size=B, start=start, engine=engine, denormalize=denormalize, **KW))
    assert [b.start for b in batches] == list(range(start, start + N, B))
    assert [len(b.x) for b in batches] == [B] * 6 + [N - 6 * B]
    got = np.concatenate([b.x for b in batches])
    assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()
    if start % B == 0:  # cut where the whole request is cut: the stream of a shard is the shard of the whole
        whole = pipe.sample(start + N, batch_size=B, engine=engine, denormalize=denormalize, progress=False, **KW)
        assert got.tobytes() == whole[start:].tobytes()


def test_stream_of_an_onnx_file_and_its_pickle(pipe, tmp_path):
    pytest.importorskip("onnxruntime")
    path = fastddpm.export_onnx(pipe.checkpoint, tmp_path / "net.onnx")
    onnx = fastddpm.OnnxSampler(path, providers=["CPUExecutionProvider"])
    ref = onnx.sample(N, batch_size=B, progress=False, **KW)
    assert np.concatenate([b.x for b in onnx.stream(N, batch_size=B, **KW)]).tobytes() == ref.tobytes()
    clone = pickle.loads(pickle.dumps(onnx))  # what a spawned DataLoader worker receives
    assert clone.model is not onnx.model and clone.model.path == onnx.model.path
    assert np.concatenate([b.x for b in clone.stream(N, batch_size=B, **KW)]).tobytes() == ref.tobytes()


def test_stream_is_lazy(pipe):
    calls = []
    hook = pipe.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        stream = pipe.stream(N, batch_size=B, engine="torch", **KW)
        assert calls == []  # checked and set up, nothing sampled yet
        first = next(stream)
        assert len(calls) == KW["steps"] and first.start == 0  # one batch: one network call per step
        next(stream)
        assert len(calls) == 2 * KW["steps"]
        rest = list(stream)
        assert len(rest) == 5 and len(calls) == 7 * KW["steps"]
    finally:
        hook.remove()


def test_stream_refuses_file_options(pipe):
    with pytest.raises(TypeError, match="out: Pipeline.stream yields batches in memory"):
        pipe.stream(N, out="x.npy")
    with pytest.raises(TypeError, match="unexpected keyword"):
        pipe.stream(N, stepz=3)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        pipe.stream(0)
    with pytest.raises(ValueError, match="rank and world_size together"):
        pipe.dataset(N, rank=1)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size = 2\)"):
        pipe.dataset(N, rank=2, world_size=2)


def _collect(dataset, workers: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return [(b.start, b.x) for b in loader]


@pytest.mark.parametrize("engine", ["torch", "auto"])
def test_dataset_shards_across_workers_and_ranks(pipe, engine):
    if engine == "auto":
        pytest.importorskip("onnxruntime")
    ref = pipe.sample(N, batch_size=B, engine=engine, progress=False, **KW)
    seen = []
    for rank in range(2):
        items = _collect(pipe.dataset(N, batch_size=B, rank=rank, world_size=2, engine=engine, **KW), workers=2)
        starts = [s for s, _ in items]
        assert starts == sorted(starts)  # a DataLoader takes its workers' items in turn: in order
        assert all(isinstance(x, torch.Tensor) for _, x in items)
        seen += items
    # 7 batches over 2 ranks × 2 workers = 4 shards, batch j to shard j mod 4
    assert sorted(s for s, _ in seen) == list(range(0, N, B))  # every batch exactly once
    got = torch.cat([x for _, x in sorted(seen, key=lambda item: item[0])]).numpy()
    assert got.tobytes() == ref.tobytes()
    # one rank, several workers: the whole request, in order
    items = _collect(pipe.dataset(N, batch_size=B, engine=engine, **KW), workers=2)
    assert [s for s, _ in items] == list(range(0, N, B))
    assert torch.cat([x for _, x in items]).numpy().tobytes() == ref.tobytes()


def test_dataset_reads_the_rank_from_torch_distributed(pipe, monkeypatch):
    dist = torch.distributed
    ref = pipe.sample(N, batch_size=B, engine="torch", progress=False, **KW)
    seen = []
    for rank in range(3):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: 3)
        ds = pipe.dataset(N, batch_size=B, engine="torch", **KW)
        assert ds.place() == (rank, 3)
        seen += [(b.start, b.x) for b in ds]  # no DataLoader: this process is the only worker
    assert sorted(s for s, _ in seen) == list(range(0, N, B))
    got = torch.cat([x for _, x in sorted(seen, key=lambda item: item[0])]).numpy()
    assert got.tobytes() == ref.tobytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_on_cuda_yields_device_tensors(pipe, tmp_path):
    gpu = fastddpm.Pipeline.from_checkpoint(pipe.checkpoint.path, device="cuda")
    batches = list(gpu.stream(N, batch_size=B, **KW))
    assert all(isinstance(b.x, torch.Tensor) and b.x.is_cuda for b in batches)
    ref = gpu.sample(N, batch_size=B, progress=False, **KW)
    assert torch.cat([b.x for b in batches]).cpu().numpy().tobytes() == ref.tobytes()
    assert torch.utils.dlpack.from_dlpack(batches[0].x.__dlpack__()).data_ptr() == batches[0].x.data_ptr()

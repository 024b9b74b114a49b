"""fastddpm.runtime on hand-built ONNX graphs: signature checks, metadata, call validation.

The graphs are written with onnx.helper (no torch), so these tests pin the runtime's behaviour
on files that fastddpm did not export.
"""
import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import fastddpm  # noqa: E402
from fastddpm.runtime import OnnxModel  # noqa: E402
from fastddpm.pipelines import OnnxSampler  # noqa: E402
from fastddpm.runtime.metadata import encode  # noqa: E402

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def write_graph(path, *, x=("x", F, ["B", 2]), t=("t", I64, ["B"]), out=("y", F, ["B", 2]), scale=0.5,
                metadata=None, opset=17):
    """y = scale·x + t (t cast to float and broadcast over the sample axes) — a tiny ε-net."""
    inputs = [helper.make_tensor_value_info(*spec) for spec in (x, t) if spec is not None]
    nodes = [helper.make_node("Mul", [x[0], "scale"], ["xs"])]
    init = [helper.make_tensor("scale", x[1], [], [scale])]
    if t is not None and len(t[2]) == 1 and len(x[2]) >= 2:
        nodes += [helper.make_node("Cast", [t[0]], ["tf"], to=x[1]),
                  helper.make_node("Unsqueeze", ["tf", "axes"], ["tu"]),
                  helper.make_node("Add", ["xs", "tu"], [out[0]])]
        init.append(helper.make_tensor("axes", I64, [len(x[2]) - 1], list(range(1, len(x[2])))))
    else:
        nodes.append(helper.make_node("Identity", ["xs"], [out[0]]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(*out)], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def meta(**over):
    props = dict(schedule=fastddpm.Schedule.linear(50), prediction="epsilon",
                 normalization={"shape": [2], "mean": [1.0, -2.0], "std": [2.0, 0.5]},
                 sample_shape=(2,), version=fastddpm.__version__)
    props.update(over)
    return encode(**props)


def oracle(x, t, scale=0.5):
    return scale * x + t.astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))


def test_call_matches_closed_form_and_reads_metadata(tmp_path):
    model = OnnxModel(write_graph(tmp_path / "m.onnx", metadata=meta()))
    assert model.array_api == "numpy"
    assert model.schedule == fastddpm.Schedule.linear(50)
    assert model.prediction == "epsilon" and model.sample_shape == (2,)
    assert model.normalization == {"shape": [2], "mean": [1.0, -2.0], "std": [2.0, 0.5]}
    assert model.providers == ["CPUExecutionProvider"] and model.device == "cpu"
    x = np.random.default_rng(0).standard_normal((37, 2)).astype(np.float32)
    t = np.arange(37, dtype=np.int64)
    np.testing.assert_array_equal(model(x, t), oracle(x, t))
    # a scalar t broadcasts to every sample
    np.testing.assert_array_equal(model(x, 3), oracle(x, np.full(37, 3)))


def test_fixed_batch_graph_runs_in_padded_chunks(tmp_path):
    path = write_graph(tmp_path / "fixed.onnx", x=("x", F, [4, 2]), t=("t", I64, [4]), out=("y", F, [4, 2]))
    model = OnnxModel(path)
    assert model.fixed_batch == 4
    x = np.random.default_rng(1).standard_normal((11, 2)).astype(np.float32)
    t = np.arange(11, dtype=np.int64)
    np.testing.assert_array_equal(model(x, t), oracle(x, t))


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxModel(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf\n")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxModel(junk)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x=("input", F, ["B", 2])), ValueError, r"inputs \['input', 't'\].*exactly 'x'"),
    (dict(t=("timestep", I64, ["B"])), ValueError, r"inputs \['timestep', 'x'\]"),
    (dict(t=None), ValueError, r"inputs \['x'\]"),
    (dict(x=("x", F, ["B"]), out=("y", F, ["B"])), ValueError, "input 'x' has rank 1"),
    (dict(t=("t", I64, ["B", 1])), ValueError, "input 't' has rank 2"),
    (dict(x=("x", TensorProto.DOUBLE, ["B", 2]), out=("y", TensorProto.DOUBLE, ["B", 2])), TypeError,
     r"input 'x' has type tensor\(double\), expected tensor\(float\)"),
    (dict(t=("t", TensorProto.INT32, ["B"])), TypeError, r"input 't' has type tensor\(int32\)"),
])
def test_wrong_signature_is_rejected(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        OnnxModel(write_graph(tmp_path / "bad.onnx", **kwargs))


def test_metadata_must_match_graph_and_format(tmp_path):
    with pytest.raises(ValueError, match=r"metadata says samples of shape \[3\]"):
        OnnxModel(write_graph(tmp_path / "a.onnx", metadata=meta(sample_shape=(3,))))
    props = meta()
    props["fastddpm.format"] = "99"
    with pytest.raises(ValueError, match="metadata format '99'"):
        OnnxModel(write_graph(tmp_path / "b.onnx", metadata=props))
    props = meta()
    props["fastddpm.schedule"] = "{not json"
    with pytest.raises(ValueError, match="fastddpm.schedule is not valid JSON"):
        OnnxModel(write_graph(tmp_path / "c.onnx", metadata=props))


def test_call_validation(tmp_path):
    model = OnnxModel(write_graph(tmp_path / "m.onnx", metadata=meta()))
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(TypeError, match="x must be float32"):
        model(x.astype(np.float64), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        model(np.zeros((5, 3), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"t must have shape \[B\] = \[5\]"):
        model(x, np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="t must be an integer"):
        model(x, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        model([[0.0, 0.0]], np.zeros(1, np.int64))


def test_providers_are_checked(tmp_path):
    path = write_graph(tmp_path / "m.onnx", metadata=meta())
    with pytest.raises(ValueError, match="providers must be .*available"):
        OnnxModel(path, providers=["NoSuchExecutionProvider"])
    assert OnnxModel(path, providers=["CPUExecutionProvider"]).device == "cpu"


def test_sampler_without_metadata_needs_a_schedule(tmp_path):
    path = write_graph(tmp_path / "foreign.onnx")
    model = OnnxModel(path)
    assert not model.metadata.present and model.schedule is None and model.sample_shape == (2,)
    with pytest.raises(ValueError, match="no fastddpm schedule metadata.*pass schedule="):
        OnnxSampler(path)
    with pytest.raises(TypeError, match="schedule must be a fastddpm.Schedule"):
        OnnxSampler(path, schedule="linear")
    sampler = OnnxSampler(path, schedule=fastddpm.Schedule.linear(50))
    assert sampler.prediction == "epsilon"
    from fastddpm.data import Normalization

    assert sampler.normalization == Normalization.identity(1)  # nothing stored: no rescaling


def test_metadata_roundtrip_is_plain_json(tmp_path):
    props = meta(schedule=fastddpm.Schedule.cosine(20, s=0.01), prediction="v_prediction")
    assert json.loads(props["fastddpm.schedule"]) == {"name": "cosine", "num_steps": 20, "s": 0.01,
                                                      "min_beta": 0.0, "max_beta": 0.999}
    model = OnnxModel(write_graph(tmp_path / "m.onnx", metadata=props))
    assert model.schedule == fastddpm.Schedule.cosine(20, s=0.01)
    assert model.prediction == "v_prediction"
    assert os.path.getsize(model.path) > 0

"""fastddpm.distill: the student is an ordinary checkpoint that samples everywhere with no extra
flags; resume = uninterrupted; a fixed seed gives identical students; bad input is one line; a
small distillation makes a few-step sampler that the same few steps of its teacher cannot match."""
import json

import numpy as np
import pytest
import torch

import fastddpm
from fastddpm import checkpoint as ckpt
from fastddpm.cli import main
from fastddpm.distillation import DistillationError, distill, grid

TINY = dict(teacher_steps=8, iters=6, batch_size=64, progress=False, num_threads=1)
METHODS = [("progressive", "ddim"), ("consistency", "consistency"), ("consistency-bootstrap", "consistency")]


def tiny(method="progressive", **kw):
    """TINY settings for ``method`` (the exact-target consistency method takes no teacher_steps)."""
    out = dict(TINY, method=method, **kw)
    if method == "consistency":
        out.pop("teacher_steps")
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small butterfly ResMLP (v-prediction) and a small ε-prediction MLP on 8gaussians."""
    tmp = tmp_path_factory.mktemp("teachers")
    fastddpm.train("butterfly", tmp / "v", net_kwargs={"width": 32, "depth": 2, "fourier_features": 4}, iters=60,
                   batch_size=128, progress=False)
    fastddpm.train("8gaussians", tmp / "eps", net="MLP", net_kwargs={"width": 32, "depth": 2}, iters=40,
                   batch_size=64, prediction="epsilon", progress=False)
    return tmp


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("method,sampler", METHODS, ids=[m for m, _ in METHODS])
def test_student_round_trip_samples_everywhere_without_flags(teacher, tmp_path, method, sampler):
    out = tmp_path / "student"
    r = distill(teacher / "v", out, steps=2, **tiny(method))
    loaded = fastddpm.load(out)
    assert loaded.sampling["sampler"] == sampler and loaded.sampling["steps"] == 2
    assert loaded.sampling == r.sampling and len(loaded.sampling["spacing"]) == 2
    assert loaded.config["train"]["kind"] == "distill" and loaded.config["train"]["method"] == method
    assert "teacher.safetensors" not in loaded.config["files"] and "target.safetensors" not in loaded.config["files"]
    with torch.no_grad():  # the saved weights are the result's
        x, t = torch.randn(5, 2), torch.arange(5)
        assert torch.equal(loaded.model(x, t), r.student(x, t))
    pipe = fastddpm.Pipeline.from_checkpoint(out)
    x_torch = pipe.sample(300, seed=3, progress=False, engine="torch")
    # the recorded sampler is the default: the same as asking for it explicitly
    spec = loaded.sampling
    explicit = fastddpm.sample(loaded.model, loaded.schedule, 300, sampler=spec["sampler"], steps=2,
                               spacing=spec["spacing"], prediction=loaded.prediction, seed=3, progress=False)
    np.testing.assert_array_equal(x_torch, loaded.normalization.denormalize(explicit))
    # the ONNX Runtime engine, an exported file (its metadata carries the sampler) and the CLI
    np.testing.assert_allclose(pipe.sample(300, seed=3, progress=False, engine="onnx"), x_torch, rtol=0, atol=1e-4)
    onnx_path = fastddpm.export_onnx(out, tmp_path / "student.onnx")
    sampler_file = fastddpm.OnnxSampler(onnx_path)
    assert sampler_file.sampling_defaults["sampler"] == sampler
    np.testing.assert_allclose(sampler_file.sample(300, seed=3, progress=False), x_torch, rtol=0, atol=1e-4)
    assert main(["sample", str(out), "--n", "300", "--seed", "3", "--out", str(tmp_path / "cli.npy"),
                 "--engine", "torch", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "cli.npy"), x_torch)
    # another sampler drops the student's whole run (steps, timesteps): dpmpp2m with its own defaults
    other = pipe.sample(20, seed=3, progress=False, engine="torch", sampler="dpmpp2m", steps=5)
    want = fastddpm.sample(loaded.model, loaded.schedule, 20, sampler="dpmpp2m", steps=5,
                           prediction=loaded.prediction, seed=3, progress=False)
    np.testing.assert_array_equal(other, loaded.normalization.denormalize(want))


def test_student_sampling_resumes_and_shards(teacher, tmp_path):
    out = tmp_path / "student"
    distill(teacher / "v", out, steps=2, **tiny())
    pipe = fastddpm.Pipeline.from_checkpoint(out)
    full = pipe.sample(200, seed=5, progress=False, engine="torch")
    # a bulk write resumed part-way (a progress record that says 100 rows are done) ends equal
    path = tmp_path / "x.npy"
    pipe.sample(200, seed=5, progress=False, engine="torch", out=path, batch_size=100)
    np.testing.assert_array_equal(np.load(path), full)
    part = pipe.sample(80, seed=5, progress=False, engine="torch", start=120)  # a shard of the same request
    np.testing.assert_array_equal(part, full[120:])


@pytest.mark.parametrize("method", [m for m, _ in METHODS])
def test_resume_of_an_interrupted_distillation_equals_uninterrupted(teacher, tmp_path, method, monkeypatch):
    # 12 iterations either way: progressive's two rounds of 6, the consistency methods' one round of 12
    kw = tiny(method, steps=2, ema=0.9, iters=6 if method == "progressive" else 12)
    full = distill(teacher / "v", **kw)
    out = tmp_path / "s"
    real_save = ckpt.save
    calls = []

    class Crash(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: iteration 8 of 12 (progressive: inside round 2)
            raise Crash

    monkeypatch.setattr(ckpt, "save", save_then_crash)
    with pytest.raises(Crash):
        distill(teacher / "v", out, checkpoint_every=4, **kw)
    monkeypatch.setattr(ckpt, "save", real_save)
    assert ckpt.load_train_state(out)["step"] == 8
    resumed = distill(teacher / "v", out, resume=True, **kw)
    _same(resumed.model, full.model)
    _same(resumed.ema_model, full.ema_model)
    assert resumed.losses == full.losses
    with pytest.raises(ValueError, match="settings differ.*lr"):
        distill(teacher / "v", out, resume=True, **dict(kw, lr=0.5))


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_same_seed_same_student_and_seed_matters(teacher, method):
    a = distill(teacher / "v", steps=2, seed=1, **tiny(method))
    b = distill(teacher / "v", steps=2, seed=1, **tiny(method))
    c = distill(teacher / "v", steps=2, seed=2, **tiny(method))
    _same(a.model, b.model)
    assert a.losses == b.losses
    assert not torch.equal(a.model.out.weight, c.model.out.weight)


def test_an_epsilon_teacher_gets_a_conversion_round(teacher):
    r = distill(teacher / "eps", steps=2, **tiny("progressive"))
    assert r.prediction == "v_prediction"
    assert r.config["rounds"] == [[8, 1], [8, 2], [4, 2]]  # one teacher step per student step, then halvings
    assert len(r.losses) == 3 * TINY["iters"]


def test_bad_input_is_one_line(teacher, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"steps=3 must divide teacher_steps=8"):
        distill(teacher / "v", steps=3, **tiny())
    with pytest.raises(ValueError, match=r"steps=4 must divide teacher_steps=12 with a power of two"):
        distill(teacher / "v", steps=4, **dict(tiny(), teacher_steps=12))
    student = tmp_path / "student"
    distill(teacher / "v", student, steps=2, **tiny())
    with pytest.raises(DistillationError, match="already a distilled student.*distil its teacher"):
        distill(student, steps=2, **tiny())
    diffusers_dir = tmp_path / "pipe"
    diffusers_dir.mkdir()
    (diffusers_dir / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(DistillationError, match="diffusers pipeline directory; distill needs a fastddpm checkpoint"):
        distill(diffusers_dir, steps=2, **TINY)
    with pytest.raises(DistillationError, match="is an ONNX file"):
        distill(tmp_path / "model.onnx", steps=2, **TINY)
    with pytest.raises(ValueError, match="method must be one of 'progressive', 'consistency'"):
        distill(teacher / "v", method="magic", **TINY)
    with pytest.raises(ValueError, match="teacher_steps applies to methods 'progressive' and 'consistency-bootstrap'"):
        distill(teacher / "v", method="consistency", **TINY)
    with pytest.raises(ckpt.CheckpointNotFoundError):
        distill(tmp_path / "nothing", **TINY)
    for args, message in (
            (["--steps", "3", "--teacher-steps", "8"], "steps=3 must divide teacher_steps=8"),
            (["--method", "consistency-bootstrap", "--steps", "9", "--teacher-steps", "8"], "steps=9 must be at most"),
    ):
        method = [] if "--method" in args else ["--method", "progressive"]
        assert main(["distill", str(teacher / "v"), "--out", str(tmp_path / "o"), "--quiet", *method, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["distill", str(student), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already a distilled student" in err and err.count("\n") == 1


def test_cli_distill_then_sample_with_no_flags(teacher, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["distill", str(teacher / "v"), "--out", str(out), "--steps", "2", "--teacher-steps", "8",
                 "--method", "progressive", "--iters", "4", "--batch-size", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sampling"]["steps"] == 2 and report["iters"] == 8
    assert main(["sample", str(out), "--n", "16", "--out", str(tmp_path / "x.npy"), "--quiet",
                 "--engine", "torch"]) == 0
    pipe = fastddpm.Pipeline.from_checkpoint(out)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), pipe.sample(16, progress=False, engine="torch"))


def test_grids_nest():
    for n in (8, 16, 256):
        assert grid(1000, n)[::2].tolist() == grid(1000, n // 2).tolist()
    assert grid(1000, 4).tolist() == [999, 749, 499, 249]


@pytest.fixture(scope="module")
def gaussians(tmp_path_factory):
    """A small 8gaussians ResMLP (v-prediction), trained for the quality tests below."""
    path = tmp_path_factory.mktemp("gaussians") / "t"
    fastddpm.train("8gaussians", path, net_kwargs={"width": 64, "depth": 2, "fourier_features": 8}, iters=600,
                   batch_size=256, progress=False)
    return path


def _mean_distance(t, model, sampler, steps, spacing, n=2000):
    from fastddpm.metrics import support_distance

    x = fastddpm.sample(model, t.schedule, n, sampler=sampler, steps=steps, spacing=spacing,
                        prediction=t.prediction, seed=7, progress=False)
    return float(support_distance(t.normalization.denormalize(np.asarray(x)), "8gaussians").mean())


def test_progressive_distillation_works_at_small_scale(gaussians):
    """A 2-step progressive student of a small 8gaussians model is far better than the teacher's own
    2 DDIM steps on the same timesteps, and close to the teacher's 32-step DDIM (the first round's
    teacher, what it learns to imitate). A student target with the wrong sign of the σ-ratio term,
    or the student's parametrisation mixed up, leaves it at the teacher's ddim-2 or worse."""
    r = distill(gaussians, steps=2, method="progressive", teacher_steps=32, iters=150, batch_size=256,
                progress=False)
    t = fastddpm.load(gaussians)
    spacing = r.sampling["spacing"]
    teacher_2 = _mean_distance(t, t.model, "ddim", 2, spacing)
    teacher_32 = _mean_distance(t, t.model, "ddim", 32, grid(1000, 32).tolist())
    student_2 = _mean_distance(t, r.student.eval(), "ddim", 2, spacing)
    print(f"teacher ddim-2 {teacher_2:.3f}, ddim-32 {teacher_32:.3f}, student-2 {student_2:.3f}")
    assert student_2 < 0.5 * teacher_2
    assert student_2 < 2.0 * teacher_32 + 0.05


def test_consistency_distillation_works_at_small_scale(gaussians):
    """The default method: a 2-step consistency student samples far closer to the eight centres
    than the teacher sampled the same way (its x̂0 at t = 999 is the mean of all centres, so its
    2-step samples fall between them), and close to the teacher's dpmpp2m-20. A wrong ODE-end
    target (e.g. the teacher's one-call x̂0), or a student trained at other timesteps than it
    samples at, leaves it near the teacher's 2-step samples."""
    r = distill(gaussians, steps=2, method="consistency", iters=150, batch_size=256, progress=False)
    t = fastddpm.load(gaussians)
    spacing = r.sampling["spacing"]
    assert r.sampling["sampler"] == "consistency"
    teacher_2 = _mean_distance(t, t.model, "consistency", 2, spacing)
    teacher_ode = _mean_distance(t, t.model, "dpmpp2m", 20, None)
    student_2 = _mean_distance(t, r.student.eval(), "consistency", 2, spacing)
    print(f"teacher consistency-2 {teacher_2:.3f}, dpmpp2m-20 {teacher_ode:.3f}, student-2 {student_2:.3f}")
    assert student_2 < 0.5 * teacher_2
    assert student_2 < 2.0 * teacher_ode + 0.05


def test_a_conditional_teacher_is_refused_in_one_line(tmp_path):
    from fastddpm.data import Normalization
    from fastddpm.labels import LabelSet
    from fastddpm.nets import ResMLP

    path = tmp_path / "cond"
    ckpt.save(path, ResMLP(dim=2, width=16, depth=1, num_classes=3), fastddpm.Schedule.linear(1000),
              normalization=Normalization([0.0, 0.0], [1.0, 1.0]), labels=LabelSet(3, 3, (5, 3, 2)))
    with pytest.raises(DistillationError, match="class-conditional model") as info:
        distill(path, steps=2, **TINY)
    assert "\n" not in str(info.value)

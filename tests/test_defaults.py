"""One home per default: the CLI reads every default the library also has from the library, so
`fastddpm train` with no options trains what `fastddpm.train` trains (issue 28: the CLI used to
map `--net auto` to a plain MLP for vectors while the library trained the ResMLP)."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import numpy as np
import pytest

import fastddpm
from fastddpm.cli import build_parser, main


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def _config(path) -> dict:
    config = json.loads((path / "config.json").read_text())
    config["files"].pop("train_state.json")  # holds the wall time of the run
    return config


@pytest.mark.parametrize("dataset", ["butterfly", "digits", "npy"])
def test_cli_train_and_library_train_give_the_same_model(dataset, tmp_path):
    if dataset == "npy":  # a vector .npy file: fixed data, all of its rows
        dataset = str(tmp_path / "data.npy")
        np.save(dataset, np.random.default_rng(0).normal(size=(1100, 3)).astype(np.float32))
    # --iters is the one option passed (to both): the default is thousands of iterations
    assert main(["train", "--dataset", dataset, "--out", str(tmp_path / "cli"), "--iters", "2", "--quiet"]) == 0
    fastddpm.train(dataset, tmp_path / "lib", iters=2, progress=False)
    cli, lib = _config(tmp_path / "cli"), _config(tmp_path / "lib")
    assert cli["model"]["class"] == ("UNet" if dataset == "digits" else "ResMLP")
    # settings, net, schedule, normalisation — and, with the same thread count, the same weights
    assert cli == lib


def _defaults(command: str) -> dict:
    return {a.dest: a.default for a in _subparser(build_parser(), command)._actions}


def _signature(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items()}


def test_cli_defaults_are_the_librarys():
    from fastddpm.benchmark import run as bench_run
    from fastddpm.demo import plot_reverse_from_checkpoint, run_demo
    from fastddpm.metrics import evaluate
    from fastddpm.pipelines import Pipeline
    from fastddpm.sampling.options import SamplingOptions
    from fastddpm.training import train

    lib = _signature(train)
    cli = _defaults("train")
    flags = {"schedule": "schedule", "num_steps": "num_steps", "net": "net", "iters": "iters",
             "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule", "lr_warmup": "lr_warmup",
             "data": "data", "ema": "ema", "seed": "seed", "device": "device", "threads": "num_threads",
             "prediction": "prediction", "min_snr_gamma": "min_snr_gamma", "grad_clip": "grad_clip",
             "checkpoint_every": "checkpoint_every"}
    assert {f: cli[f] for f in flags} == {f: lib[k] for f, k in flags.items()}

    options = {f.name: f.default for f in dataclasses.fields(SamplingOptions)}
    cli = _defaults("sample")
    for flag in ("sampler", "steps", "eta", "seed", "batch_size", "backend", "dtype"):
        assert cli[flag] == options[flag], flag
    assert cli["device"] == _signature(Pipeline.load)["device"]
    assert cli["engine"] == _signature(Pipeline.sample)["engine"]

    for command, function, names in (("demo", run_demo, ("dataset", "out", "budget", "seed", "device")),
                                     ("bench", bench_run, ("device", "net", "steps", "dataset")),
                                     ("eval", evaluate, ("seed",))):
        cli, lib = _defaults(command), _signature(function)
        assert {n: cli[n] for n in names} == {n: lib[n] for n in names}, command

    reverse = {a.dest: a.default for a in _subparser(_subparser(build_parser(), "plot"), "reverse")._actions}
    lib = _signature(plot_reverse_from_checkpoint)
    assert {n: reverse[n] for n in ("n", "sampler", "steps", "panels", "seed")} == \
           {n: lib[n] for n in ("n", "sampler", "steps", "panels", "seed")}


def test_cli_threads_zero_keeps_torchs_setting_and_the_default_is_one():
    from fastddpm.training import DEFAULT_THREADS

    assert _defaults("train")["threads"] == DEFAULT_THREADS == 1

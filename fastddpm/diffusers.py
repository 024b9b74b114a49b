"""diffusers interop that needs the diffusers package (``pip install fastddpm[diffusers]``).

``import diffusers`` below is the real package (absolute import); the fastddpm core never imports
this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_pipeline_dir(path, *, device="cpu"):
    """A fastddpm Checkpoint from a local ``DDPMPipeline.save_pretrained`` directory.

    Reads model_index.json, unet/ (UNet2DModel) and scheduler/scheduler_config.json. Local paths
    only: a hub id or a missing directory raises FileNotFoundError saying so. Normalisation is
    DDPMPipeline's: model space [-1, 1] ↔ data (x + 1) / 2 (diffusers also clamps to [0, 1];
    fastddpm does not clamp).
    """
    from diffusers import UNet2DModel

    from .checkpoint import Checkpoint
    from .data import Normalization
    from .schedule import Schedule
    from .sampling.adapters import as_fastddpm_model

    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a local diffusers pipeline directory (no model_index.json); "
            "fastddpm loads only local DDPMPipeline.save_pretrained directories, never hub ids — "
            "download it first (e.g. DDPMPipeline.from_pretrained(id).save_pretrained(dir))")
    index = json.loads((root / "model_index.json").read_text())
    if list(index.get("unet", [None, None]))[1] != "UNet2DModel":
        raise ValueError(f"{root / 'model_index.json'}: unet must be a UNet2DModel, got {index.get('unet')!r}")
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    schedule = Schedule.from_diffusers(scheduler_config)
    unet = UNet2DModel.from_pretrained(root / "unet").to(device).eval()
    model = as_fastddpm_model(unet)
    return Checkpoint(model=model, schedule=schedule, normalization=Normalization(mean=np.array(0.5),
                      std=np.array(0.5)), prediction=schedule.sampling_defaults["prediction"],
                      sample_shape=model.sample_shape, config={"files": str(root.resolve()), "diffusers": index},
                      path=root, weights="model")

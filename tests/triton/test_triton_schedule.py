"""Schedule tables built on the device (float64 cumulative product, then cast) against the
host tables of fastddpm.Schedule (NumPy/Numba, float64)."""
import numpy as np
import pytest
import torch

import fastddpm
from fastddpm.kernels import triton as KT
from fastddpm.schedule import TABLE_NAMES


@pytest.mark.parametrize("name", fastddpm.SCHEDULES)
@pytest.mark.parametrize("num_steps", [1, 7, 1000])
def test_schedule_tables_float64(device, name, num_steps):
    host = fastddpm.Schedule.create(name, num_steps)
    tables = KT.schedule_tables(torch.tensor(host.betas, device=device), torch.float64)
    assert set(tables) == set(TABLE_NAMES)
    for key in TABLE_NAMES:
        got = tables[key].cpu().numpy()
        assert tables[key].dtype == torch.float64 and got.shape == (num_steps,)
        # A parallel scan multiplies in another order than the host loop: ~T ulps at most.
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(got, getattr(host, key), rtol=1e-12, atol=0, err_msg=key)


def test_schedule_tables_float32_match_schedule_cache(device):
    host = fastddpm.Schedule.cosine(500)
    tables = KT.schedule_tables(torch.tensor(host.betas, device=device), torch.float32)
    cached = host.tables(device, torch.float32)
    for key in TABLE_NAMES:
        assert tables[key].dtype == torch.float32
        np.testing.assert_allclose(tables[key].cpu().numpy(), cached[key].cpu().numpy(), rtol=2.4e-7,
                                   err_msg=key)


def test_respaced_schedule_on_device(device):
    """Respacing on the device gives the schedule improved-diffusion's respacing gives."""
    host = fastddpm.Schedule.linear(1000)
    timesteps = np.array([0, 99, 199, 399, 599, 999])
    ac = host.alphas_cumprod[timesteps]
    ref_betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    full = KT.schedule_tables(torch.tensor(host.betas, device=device), torch.float64)
    betas = KT.respaced_betas(full["alphas_cumprod"], torch.tensor(timesteps, device=device))
    np.testing.assert_allclose(betas.cpu().numpy(), ref_betas, rtol=1e-12)
    respaced = KT.schedule_tables(betas, torch.float64)
    np.testing.assert_allclose(respaced["alphas_cumprod"].cpu().numpy(), ac, rtol=1e-12)


def test_schedule_tables_bad_input(device):
    with pytest.raises(ValueError, match="betas must have shape"):
        KT.schedule_tables(torch.zeros(2, 3, device=device, dtype=torch.float64))
    with pytest.raises(TypeError, match="betas must be float32 or float64"):
        KT.schedule_tables(torch.zeros(3, device=device, dtype=torch.int64))

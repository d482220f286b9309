import pytest
import torch

from swd.models import FluxAdapter, SD3Adapter, TextCondition
from swd.models.configs import ARCHS


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    model = build()
    model.eval()
    return model


@pytest.fixture
def tiny_sd3():
    return _seeded(ARCHS["tiny-sd3"].build)


@pytest.fixture
def tiny_flux():
    return _seeded(ARCHS["tiny-flux"].build)


@pytest.fixture
def sd3_adapter(tiny_sd3):
    return SD3Adapter(tiny_sd3)


@pytest.fixture
def flux_adapter(tiny_flux):
    return FluxAdapter(tiny_flux, guidance=3.5)


def make_cond(batch, tokens=6, joint=16, pooled=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(batch, tokens, joint, generator=g), torch.randn(batch, pooled, generator=g))


@pytest.fixture
def cond2():
    return make_cond(2)

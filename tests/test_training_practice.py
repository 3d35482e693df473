"""Supernet-training practice as options: zero-initialised residual BatchNorm scales."""

from __future__ import annotations

import json

import pytest
import torch

from flwr_pfedrlnas.supernets import cpu_preset, get_supernet
from flwr_pfedrlnas.supernets._layers import InvertedResidual
from flwr_pfedrlnas.supernets.base import numpy_to_state


def _family(**knobs):
    return get_supernet("mobilenetv3", **{**cpu_preset("mobilenetv3"), **knobs})


def test_residual_blocks_start_as_the_identity():
    family = _family(zero_init_residual=True)
    state = family.init_supernet_state(seed=0)
    residual = non_residual = 0
    net = family.build_supernet()
    net.load_state_dict(numpy_to_state(state))
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    for name, block in net.named_modules():
        if not isinstance(block, InvertedResidual):
            continue
        gamma = state[f"{name}.project.bn.weight"]
        if block.residual:
            residual += 1
            assert (gamma == 0).all(), name
            inp = torch.randn(2, _in_channels(block), 8, 8)
            assert torch.equal(block(inp), inp), name
        else:
            non_residual += 1
            assert (gamma == 1).all(), name
    assert residual and non_residual
    assert net(x).shape == (2, 10)


def _in_channels(block: InvertedResidual) -> int:
    first = block.expand if not isinstance(block.expand, torch.nn.Identity) else block.dw
    return first.conv.in_channels


def test_the_default_is_the_authors_initialisation_and_its_config_unchanged():
    plain, zero = _family(), _family(zero_init_residual=True)
    assert "zero_init_residual" not in plain.config  # old configs and checkpoints still match
    assert zero.config["zero_init_residual"] is True
    state = plain.init_supernet_state(seed=0)
    assert all((v == 1).all() for k, v in state.items() if k.endswith("project.bn.weight"))
    # A client rebuilds the same family from the knobs it is sent.
    again = get_supernet("mobilenetv3", **json.loads(zero.config_json()))
    assert again.config == zero.config


def test_a_bad_value_is_refused_naming_the_knob():
    with pytest.raises(ValueError, match="zero_init_residual must be true or false, got 1"):
        _family(zero_init_residual=1)

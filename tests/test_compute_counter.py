"""ComputeCounter: MACs of forward and backward passes, hand-computed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flwr_pfedrlnas.core.cost import ComputeCounter, count_macs


def test_linear_forward_and_training_step():
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with torch.no_grad(), ComputeCounter() as counted:
        layer(x)
    assert counted.macs == 5 * 3 * 4  # output elements x in features
    with ComputeCounter() as counted:
        layer(x).sum().backward()  # the weight's gradient; the input needs none
    assert counted.macs == 2 * 60
    x.requires_grad_(True)
    with ComputeCounter() as counted:
        layer(x).sum().backward()
    assert counted.macs == 3 * 60


def test_conv_grouped_and_frozen():
    conv = nn.Conv2d(4, 6, kernel_size=3, padding=1, groups=2)
    x = torch.randn(2, 4, 5, 5)
    forward = 2 * 6 * 5 * 5 * (2 * 3 * 3)  # output elements x in/groups x kernel
    with torch.no_grad(), ComputeCounter() as counted:
        conv(x)
    assert counted.macs == forward
    conv.requires_grad_(False)  # frozen: autograd on, nothing to differentiate
    with ComputeCounter() as counted:
        conv(x)
    assert counted.macs == forward


def test_frozen_body_trained_head_counts_the_head_backward_only():
    body, head = nn.Linear(8, 16), nn.Linear(16, 2)
    body.requires_grad_(False)
    x = torch.randn(3, 8)
    with ComputeCounter() as counted:
        head(body(x)).sum().backward()
    # body: forward only; head: forward + weight gradient (its input needs none).
    assert counted.macs == 3 * 16 * 8 + 2 * (3 * 2 * 16)


def test_matmul_and_attention():
    a, b = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 4, 5)
    with ComputeCounter() as counted:
        a @ b
        torch.bmm(a, b)
    assert counted.macs == 2 * (2 * 3 * 5 * 4) * 2  # each: forward + a's gradient
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    with torch.no_grad(), ComputeCounter() as counted:
        F.scaled_dot_product_attention(q, k, v)
    assert counted.macs == (1 * 2 * 6) * 6 * (4 + 4)


def test_agrees_with_the_flop_counter_on_a_network():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )
    x = torch.randn(1, 3, 6, 6)
    expected = count_macs(net, x)
    with torch.no_grad(), ComputeCounter() as counted:
        net(x)
    assert counted.macs == expected


def test_counts_nothing_outside_and_changes_no_result():
    layer = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with torch.no_grad():
        plain = layer(x)
        with ComputeCounter() as counted:
            inside = layer(x)
        layer(x)  # after the block: not counted
    assert torch.equal(plain, inside)
    assert counted.macs == 3 * 2 * 4


@pytest.mark.parametrize("which", ["smallest", "largest"])
def test_a_subnet_counts_what_the_search_cost_counts(which):
    from flwr_pfedrlnas.core.cost import input_resolution, subnet_macs
    from flwr_pfedrlnas.supernets import cpu_preset, get_supernet

    family = get_supernet("mobilenetv3", **cpu_preset("mobilenetv3"))
    arch = getattr(family, f"{which}_architecture")()
    subnet = family.build_subnet(arch).eval()
    size = input_resolution(family)
    x = torch.randn(1, int(family.config.get("in_channels", 3)), size, size)
    with torch.no_grad(), ComputeCounter() as counted:
        subnet(x)
    assert counted.macs == subnet_macs(family, arch) > 0

"""Tests of the once-for-all style MobileNetV3 supernet family (its own checks; those
every family passes alike are in test_families.py)."""

from __future__ import annotations

import numpy as np
import torch
from family_checks import family_fixtures, paper_size_shapes

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.supernets import get_supernet
from flwr_pfedrlnas.supernets.mobilenetv3 import MobileNetV3Family

torch.set_num_threads(1)

families, supernet_states = family_fixtures("mobilenetv3")


def test_depth_and_width_select_leading_blocks(families) -> None:
    family = families["s5-rgb"]
    arch = family.largest_architecture()
    # At width_mult 0.35 stage 4 has at most 40 channels; 0.65 of it is 24.
    arch["stage4.depth"] = 2
    arch["stage4.width"] = 0.65
    shapes, super_shapes = family.subnet_shapes(arch), family.supernet_shapes()
    assert "stages.3.1.project.conv.weight" in shapes
    assert "stages.3.2.project.conv.weight" not in shapes
    assert "stages.3.2.project.conv.weight" in super_shapes
    assert shapes["stages.3.0.project.conv.weight"][0] == 24
    assert super_shapes["stages.3.0.project.conv.weight"][0] == 40
    # The next stage reads the leading channels of the narrower stage.
    assert shapes["stages.4.0.expand.conv.weight"][1] == 24


def test_kernel_choices_give_different_crops(families, supernet_states) -> None:
    family, super_state = families["s5-rgb"], supernet_states["s5-rgb"]
    key = "stages.0.0.dw.conv.weight"
    crops = {}
    for kernel in (3, 5, 7):
        arch = family.largest_architecture()
        arch["stage1.kernel"] = kernel
        crops[kernel] = extract_subnet(family, super_state, arch)[key]
    np.testing.assert_array_equal(crops[5][..., 1:4, 1:4], crops[3])
    np.testing.assert_array_equal(crops[7][..., 1:6, 1:6], crops[5])
    assert not np.array_equal(crops[7][..., :3, :3], crops[3])


def test_search_space_layout(families) -> None:
    for family in families.values():
        space = family.search_space
        n = family.config["num_stages"]
        assert space.names == [
            f"stage{i}.{field}"
            for i in range(1, n + 1)
            for field in ("kernel", "expand", "depth", "width")
        ]
        assert space.num_architectures() == 81**n


def test_stem_stride_rule() -> None:
    assert MobileNetV3Family(input_resolution=32).stem_stride == 1
    assert MobileNetV3Family(input_resolution=64).stem_stride == 1
    assert MobileNetV3Family(input_resolution=96).stem_stride == 2
    assert MobileNetV3Family().stem_stride == 2


def test_paper_size_on_meta_device() -> None:
    # The defaults: width 1.0, 224x224, 10 classes. OFA MobileNetV3 (w1.0) has
    # about 7.7M parameters with 1000 classes.
    _, shapes = paper_size_shapes("mobilenetv3", (4_000_000, 10_000_000), 1_000_000)
    assert shapes["stem.conv.weight"] == (16, 3, 3, 3)
    assert shapes["stages.4.3.dw.conv.weight"] == (960, 1, 7, 7)
    assert shapes["final_expand.conv.weight"] == (960, 160, 1, 1)
    assert shapes["feature_mix.weight"] == (1280, 960)
    assert shapes["classifier.weight"] == (10, 1280)


def _final_map_size(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    seen = []
    hook = net.final_expand.register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    with torch.no_grad():
        net(x)
    hook.remove()
    return tuple(seen[0])


def test_paper_size_resizes_cifar_inputs_to_224() -> None:
    # The authors resize 32x32 CIFAR images to the family's 224: total stride 32 then
    # ends on 7x7 (224 / 32), where the raw 32x32 input would end on 1x1.
    torch.manual_seed(0)
    resized = get_supernet("mobilenetv3", num_stages=5)
    raw = get_supernet("mobilenetv3", num_stages=5, resize_input=False)
    arch = resized.smallest_architecture()
    x = torch.randn(1, 3, 32, 32)
    net = resized.build_subnet(arch).eval()
    assert _final_map_size(net, x) == (7, 7)
    raw_net = raw.build_subnet(arch).eval()
    raw_net.load_state_dict(net.state_dict())
    assert _final_map_size(raw_net, x) == (1, 1)
    # The resize is exactly torch's bilinear interpolation before the same network.
    big = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(net(x), raw_net(big), rtol=0, atol=0)
        # An input already at 224 is left alone.
        torch.testing.assert_close(net(big), raw_net(big), rtol=0, atol=0)
    bicubic = get_supernet("mobilenetv3", num_stages=5, interpolation="bicubic")
    cubic_net = bicubic.build_subnet(arch).eval()
    cubic_net.load_state_dict(net.state_dict())
    big3 = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(cubic_net(x), raw_net(big3), rtol=0, atol=0)


def test_cpu_size_resize_is_a_no_op() -> None:
    # CPU presets: input_resolution 32 on 32x32 data, so resizing changes nothing.
    cfg = dict(width_mult=0.35, num_stages=3, input_resolution=32, in_channels=1)
    on, off = (
        get_supernet("mobilenetv3", **cfg),
        get_supernet("mobilenetv3", resize_input=False, **cfg),
    )
    arch = on.largest_architecture()
    net_on, net_off = on.build_subnet(arch).eval(), off.build_subnet(arch).eval()
    net_off.load_state_dict(net_on.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net_on(x), net_off(x), rtol=0, atol=0)
    assert on.supernet_shapes() == off.supernet_shapes()

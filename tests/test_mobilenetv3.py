"""Tests of the once-for-all style MobileNetV3 supernet family."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.supernets import available_supernets, get_supernet, numpy_to_state
from flwr_pfedrlnas.supernets.mobilenetv3 import MobileNetV3Family

torch.set_num_threads(1)

# CPU-sized instances: all five stages on RGB, three stages on greyscale.
CPU_CONFIGS = {
    "s5-rgb": dict(width_mult=0.35, num_stages=5, input_resolution=32, in_channels=3),
    "s3-grey": dict(width_mult=0.35, num_stages=3, input_resolution=32, in_channels=1),
}
ARCH_KINDS = ["smallest", "largest", "seed0", "seed1", "seed2"]
CASES = [(c, a) for c in CPU_CONFIGS for a in ARCH_KINDS]


@pytest.fixture(scope="module")
def families() -> dict[str, MobileNetV3Family]:
    return {
        name: get_supernet("mobilenetv3", num_classes=10, **cfg)
        for name, cfg in CPU_CONFIGS.items()
    }


@pytest.fixture(scope="module")
def supernet_states(families) -> dict[str, dict[str, np.ndarray]]:
    return {name: fam.init_supernet_state(seed=0) for name, fam in families.items()}


def _arch(family: MobileNetV3Family, kind: str) -> dict:
    if kind == "smallest":
        return family.smallest_architecture()
    if kind == "largest":
        return family.largest_architecture()
    return family.search_space.sample(np.random.default_rng(int(kind[4:])))


def _case(families, supernet_states, config: str, kind: str):
    family = families[config]
    return family, supernet_states[config], _arch(family, kind)


def test_registered() -> None:
    assert "mobilenetv3" in available_supernets()
    assert isinstance(get_supernet("mobilenetv3"), MobileNetV3Family)


@pytest.mark.parametrize("config,kind", CASES)
def test_forward_backward(families, config: str, kind: str) -> None:
    family = families[config]
    cfg = family.config
    torch.manual_seed(0)
    net = family.build_subnet(_arch(family, kind))
    net.train()
    res = cfg["input_resolution"]
    x = torch.randn(2, cfg["in_channels"], res, res)
    out = net(x)
    assert out.shape == (2, cfg["num_classes"])
    out.square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("config,kind", CASES)
def test_subnet_is_slice_of_supernet(families, supernet_states, config: str, kind: str) -> None:
    family, super_state, arch = _case(families, supernet_states, config, kind)
    shapes = family.subnet_shapes(arch)
    assert set(shapes) <= set(super_state)
    slices = family.subnet_slices(arch)
    assert list(slices) == list(shapes)
    sub_state = {k: np.array(super_state[k][s]) for k, s in slices.items()}
    for key, value in sub_state.items():
        assert value.shape == shapes[key], key

    # A subnet built directly has exactly these shapes and loads them strictly.
    net = family.build_subnet(arch)
    direct = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert direct == shapes
    net.load_state_dict(numpy_to_state(sub_state), strict=True)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sub_state[key])


@pytest.mark.parametrize("config,kind", CASES)
def test_extract_subnet(families, supernet_states, config: str, kind: str) -> None:
    family, super_state, arch = _case(families, supernet_states, config, kind)
    shapes = family.subnet_shapes(arch)
    slices = family.subnet_slices(arch)
    sub_state = extract_subnet(family, super_state, arch)
    assert list(sub_state) == list(shapes)
    for key, value in sub_state.items():
        assert value.shape == shapes[key], key
        assert value.dtype == super_state[key].dtype, key
        np.testing.assert_array_equal(value, super_state[key][slices[key]])
    check_subnet_state(family, arch, sub_state, super_state)
    net = family.build_subnet(arch)
    net.load_state_dict(numpy_to_state(sub_state), strict=True)


def test_largest_subnet_is_supernet(families) -> None:
    for family in families.values():
        assert family.subnet_shapes(family.largest_architecture()) == (family.supernet_shapes())


def test_depth_and_width_select_leading_blocks(families) -> None:
    family = families["s5-rgb"]
    arch = family.largest_architecture()
    # At width_mult 0.35 stage 4 has at most 40 channels; 0.65 of it is 24.
    arch["stage4.depth"] = 2
    arch["stage4.width"] = 0.65
    shapes = family.subnet_shapes(arch)
    super_shapes = family.supernet_shapes()
    assert "stages.3.1.project.conv.weight" in shapes
    assert "stages.3.2.project.conv.weight" not in shapes
    assert "stages.3.2.project.conv.weight" in super_shapes
    assert shapes["stages.3.0.project.conv.weight"][0] == 24
    assert super_shapes["stages.3.0.project.conv.weight"][0] == 40
    # The next stage reads the leading channels of the narrower stage.
    assert shapes["stages.4.0.expand.conv.weight"][1] == 24


@pytest.mark.parametrize("kernel,start", [(3, 2), (5, 1), (7, 0)])
def test_kernel_is_centre_crop(families, supernet_states, kernel, start) -> None:
    family, super_state = families["s5-rgb"], supernet_states["s5-rgb"]
    arch = family.largest_architecture()
    arch["stage3.kernel"] = kernel
    sub = extract_subnet(family, super_state, arch)
    for block in range(4):
        key = f"stages.2.{block}.dw.conv.weight"
        assert sub[key].shape[2:] == (kernel, kernel)
        crop = super_state[key][..., start : start + kernel, start : start + kernel]
        np.testing.assert_array_equal(sub[key], crop)
    # Other stages keep the full 7x7 kernel.
    assert sub["stages.1.0.dw.conv.weight"].shape[2:] == (7, 7)


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


@pytest.mark.parametrize("config", list(CPU_CONFIGS))
def test_merge_unchanged_is_identity(families, supernet_states, config) -> None:
    family, super_state = families[config], supernet_states[config]
    updates = [
        (arch, extract_subnet(family, super_state, arch), n)
        for arch, n in (
            (_arch(family, "smallest"), 5),
            (_arch(family, "seed0"), 3),
            (_arch(family, "seed1"), 11),
            (_arch(family, "largest"), 2),
        )
    ]
    merged = merge_subnets(family, super_state, updates)
    assert list(merged) == list(super_state)
    for key, old in super_state.items():
        assert merged[key].dtype == old.dtype, key
        assert merged[key].tobytes() == old.tobytes(), key


@pytest.mark.parametrize("config,kind", [("s5-rgb", "seed0"), ("s3-grey", "seed2")])
def test_merge_one_client_then_extract(families, supernet_states, config, kind) -> None:
    family, super_state, arch = _case(families, supernet_states, config, kind)
    rng = np.random.default_rng(7)
    sub = extract_subnet(family, super_state, arch)
    modified = {}
    for key, value in sub.items():
        if value.dtype.kind == "f":
            noise = rng.normal(0.0, 0.05, value.shape).astype(value.dtype)
            modified[key] = value + noise
        else:
            modified[key] = value + 5
    merged = merge_subnets(family, super_state, [(arch, modified, 7)])
    again = extract_subnet(family, merged, arch)
    for key, value in modified.items():
        np.testing.assert_array_equal(again[key], value)
    # Entries outside the subnet keep their bits.
    slices = family.subnet_slices(arch)
    for key, old in super_state.items():
        mask = np.ones(old.shape, dtype=bool)
        if key in slices:
            mask[slices[key]] = False
        assert merged[key][mask].tobytes() == old[mask].tobytes(), key


@pytest.mark.parametrize("config", list(CPU_CONFIGS))
def test_config_round_trip(families, config) -> None:
    family = families[config]
    config_dict = json.loads(family.config_json())
    again = get_supernet("mobilenetv3", **config_dict)
    assert again.config == family.config
    assert again.config_json() == family.config_json()
    assert again.search_space.to_json() == family.search_space.to_json()
    assert again.supernet_shapes() == family.supernet_shapes()
    arch = _arch(family, "seed1")
    assert again.subnet_shapes(arch) == family.subnet_shapes(arch)


def test_search_space_layout(families) -> None:
    for family in families.values():
        space = family.search_space
        n = family.config["num_stages"]
        assert space.names == [
            f"stage{i}.{field}"
            for i in range(1, n + 1)
            for field in ("kernel", "expand", "depth", "width")
        ]
        assert space.num_architectures() == math.prod(len(d) for d in space)
        assert space.num_architectures() == 81**n
        for dim in space:
            assert list(dim.choices) == sorted(dim.choices)


def test_stem_stride_rule() -> None:
    assert MobileNetV3Family(input_resolution=32).stem_stride == 1
    assert MobileNetV3Family(input_resolution=64).stem_stride == 1
    assert MobileNetV3Family(input_resolution=96).stem_stride == 2
    assert MobileNetV3Family().stem_stride == 2


@pytest.mark.parametrize(
    "knobs",
    [
        dict(num_stages=0),
        dict(num_stages=6),
        dict(width_mult=0),
        dict(kernel_choices=[3, 4]),
        dict(kernel_choices=[7, 5, 3]),
        dict(width_choices=[0.5, 1.5]),
        dict(depth_choices=[]),
        dict(dropout=1.0),
        dict(resize_input="yes"),
        dict(interpolation="area"),
    ],
)
def test_bad_knobs(knobs) -> None:
    with pytest.raises(ValueError):
        MobileNetV3Family(**knobs)


def test_bad_architecture(families) -> None:
    family = families["s3-grey"]
    arch = family.largest_architecture()
    arch["stage1.kernel"] = 9
    with pytest.raises(ValueError, match="stage1.kernel"):
        family.build_subnet(arch)


def test_paper_size_on_meta_device() -> None:
    family = get_supernet("mobilenetv3")  # defaults: width 1.0, 224x224, 10 classes
    with torch.device("meta"):
        supernet = family.build_supernet()
        smallest = family.build_subnet(family.smallest_architecture())
    assert all(p.is_meta for p in supernet.parameters())
    n_super = sum(p.numel() for p in supernet.parameters())
    n_small = sum(p.numel() for p in smallest.parameters())
    # OFA MobileNetV3 (w1.0) has about 7.7M parameters with 1000 classes.
    assert 4_000_000 < n_super < 10_000_000
    assert 1_000_000 < n_small < n_super
    shapes = family.supernet_shapes()
    assert shapes["stem.conv.weight"] == (16, 3, 3, 3)
    assert shapes["stages.4.3.dw.conv.weight"] == (960, 1, 7, 7)
    assert shapes["final_expand.conv.weight"] == (960, 160, 1, 1)
    assert shapes["feature_mix.weight"] == (1280, 960)
    assert shapes["classifier.weight"] == (10, 1280)
    slices = family.subnet_slices(family.smallest_architecture())
    assert set(slices) <= set(shapes)


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

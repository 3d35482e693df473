"""Tests of the NASViT supernet family (MBConv stages + transformer stages)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flwr_pfedrlnas.core.aggregation import check_subnet_state, extract_subnet, merge_subnets
from flwr_pfedrlnas.supernets import available_supernets, get_supernet, numpy_to_state
from flwr_pfedrlnas.supernets._nasvit_blocks import relative_position_index
from flwr_pfedrlnas.supernets.nasvit import (
    NASVIT_CONV_STAGES,
    NASVIT_VIT_STAGES,
    NASViTFamily,
)

torch.set_num_threads(1)

# CPU-sized instances for 32x32 data: two conv + two transformer stages on RGB
# (upsampled to 40 at the larger resolution), three conv + one transformer stage
# on greyscale (downsampled to 24 at the smaller resolution).
CPU_CONFIGS = {
    "c2v2-rgb": dict(
        width_mult=0.5,
        channel_divisor=4,
        num_conv_stages=2,
        num_vit_stages=2,
        resolution_choices=[32, 40],
        in_channels=3,
    ),
    "c3v1-grey": dict(
        width_mult=0.25,
        channel_divisor=4,
        num_conv_stages=3,
        num_vit_stages=1,
        resolution_choices=[24, 32],
        in_channels=1,
        head_width_choices=[256, 320],
        vit_depth_choices=[[1, 2]],
    ),
}
ARCH_KINDS = ["smallest", "largest", "seed0", "seed1", "seed2"]
CASES = [(c, a) for c in CPU_CONFIGS for a in ARCH_KINDS]


@pytest.fixture(scope="module")
def families() -> dict[str, NASViTFamily]:
    return {
        name: get_supernet("nasvit", num_classes=10, **cfg) for name, cfg in CPU_CONFIGS.items()
    }


@pytest.fixture(scope="module")
def supernet_states(families) -> dict[str, dict[str, np.ndarray]]:
    return {name: fam.init_supernet_state(seed=0) for name, fam in families.items()}


def _arch(family: NASViTFamily, kind: str) -> dict:
    if kind == "smallest":
        return family.smallest_architecture()
    if kind == "largest":
        return family.largest_architecture()
    return family.search_space.sample(np.random.default_rng(int(kind[4:])))


def _case(families, supernet_states, config: str, kind: str):
    family = families[config]
    return family, supernet_states[config], _arch(family, kind)


def test_registered() -> None:
    assert "nasvit" in available_supernets()
    assert isinstance(get_supernet("nasvit"), NASViTFamily)


@pytest.mark.parametrize("config,kind", CASES)
def test_forward_backward(families, config: str, kind: str) -> None:
    family = families[config]
    cfg = family.config
    torch.manual_seed(0)
    net = family.build_subnet(_arch(family, kind))
    net.train()
    x = torch.randn(2, cfg["in_channels"], 32, 32)
    out = net(x)
    assert out.shape == (2, cfg["num_classes"])
    out.square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, cfg["num_classes"])


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


def test_no_module_shared_by_reference(families) -> None:
    family = families["c2v2-rgb"]
    a = family.build_subnet(_arch(family, "seed0"))
    b = family.build_subnet(_arch(family, "seed0"))
    supernet = family.build_supernet()
    ids = [{id(p) for p in m.parameters()} for m in (a, b, supernet)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    for m in (a, b, supernet):
        assert len(list(m.named_parameters(remove_duplicate=False))) == len(list(m.parameters()))


def test_resolution_has_no_weights(families) -> None:
    family = families["c2v2-rgb"]
    small = family.largest_architecture()
    small["resolution"] = 32
    large = family.largest_architecture()
    assert large["resolution"] == 40
    assert family.subnet_shapes(small) == family.subnet_shapes(large)
    seen: list[tuple[int, ...]] = []
    for arch in (small, large):
        net = family.build_subnet(arch)
        hook = net.stem.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
        net(torch.randn(1, 3, 32, 32))
        hook.remove()
    assert seen == [(1, 3, 32, 32), (1, 3, 40, 40)]


def test_depth_and_width_select_leading_blocks(families) -> None:
    family = families["c2v2-rgb"]
    arch = family.largest_architecture()
    arch["vit2.depth"] = 3
    arch["vit1.width"] = 32  # 4 heads of 8 instead of 5
    arch["conv2.depth"] = 3
    shapes = family.subnet_shapes(arch)
    super_shapes = family.supernet_shapes()
    assert "vit_stages.1.blocks.2.attn.q.weight" in shapes
    assert "vit_stages.1.blocks.3.attn.q.weight" not in shapes
    # NASViT's mb5 allows 9 blocks: the downsampling MBConv and 8 transformer blocks.
    assert "vit_stages.1.blocks.7.attn.q.weight" in super_shapes
    assert "vit_stages.1.blocks.8.attn.q.weight" not in super_shapes
    assert "conv_stages.1.2.project.conv.weight" in shapes
    assert "conv_stages.1.3.project.conv.weight" not in shapes
    assert shapes["vit_stages.0.downsample.project.conv.weight"][0] == 32
    assert super_shapes["vit_stages.0.downsample.project.conv.weight"][0] == 40
    # The next stage's downsampling MBConv reads the leading channels.
    assert shapes["vit_stages.1.downsample.expand.conv.weight"][1] == 32
    assert shapes["vit_stages.0.blocks.0.attn.mix_logits.weight"] == (4, 4)
    assert super_shapes["vit_stages.0.blocks.0.attn.mix_logits.weight"] == (5, 5)
    # The relative position table keeps its offsets (rows) and loses heads (columns).
    assert shapes["vit_stages.0.blocks.0.attn.rel_bias"][1] == 4
    assert (
        shapes["vit_stages.0.blocks.0.attn.rel_bias"][0]
        == super_shapes["vit_stages.0.blocks.0.attn.rel_bias"][0]
    )


def test_fewer_heads_are_leading_rows(families, supernet_states) -> None:
    family, super_state = families["c2v2-rgb"], supernet_states["c2v2-rgb"]
    arch = family.largest_architecture()
    arch["vit1.width"] = 32  # 4 heads instead of 5
    sub = extract_subnet(family, super_state, arch)
    prefix = "vit_stages.0.blocks.0.attn."
    # Values are 4x wider (NASViT): head h owns value rows [32 h, 32 (h + 1)).
    for name, rows in (("q", 32), ("k", 32), ("v", 128)):
        assert sub[prefix + name + ".weight"].shape == (rows, 32)
        np.testing.assert_array_equal(
            sub[prefix + name + ".weight"], super_state[prefix + name + ".weight"][:rows, :32]
        )
        np.testing.assert_array_equal(
            sub[prefix + name + ".bias"], super_state[prefix + name + ".bias"][:rows]
        )
    np.testing.assert_array_equal(
        sub[prefix + "v_conv.weight"], super_state[prefix + "v_conv.weight"][:128]
    )
    np.testing.assert_array_equal(
        sub[prefix + "proj.weight"], super_state[prefix + "proj.weight"][:32, :128]
    )
    np.testing.assert_array_equal(sub[prefix + "rel_bias"], super_state[prefix + "rel_bias"][:, :4])

    # Functionally: the subnet's heads are the supernet's first heads.
    supernet = family.build_supernet()
    supernet.load_state_dict(numpy_to_state(super_state), strict=True)
    subnet = family.build_subnet(arch)
    subnet.load_state_dict(numpy_to_state(sub), strict=True)
    big = supernet.vit_stages[0].blocks[0].attn
    small = subnet.vit_stages[0].blocks[0].attn
    assert (big.num_heads, small.num_heads) == (5, 4)
    torch.manual_seed(1)
    x = torch.randn(2, 9, 32)  # the tokens of a 3x3 map
    x_pad = F.pad(x, (0, 8))  # the supernet's extra channels are zero
    with torch.no_grad():
        for name in ("q", "k"):
            heads_big = big._heads(getattr(big, name)(x_pad))
            heads_small = small._heads(getattr(small, name)(x))
            torch.testing.assert_close(heads_big[:, :4], heads_small)
        # With the fifth head switched off (no talking-heads mixing into the
        # first four, no output weight), the supernet attention is the subnet's.
        big.mix_logits.weight[:4, 4:] = 0
        big.mix_weights.weight[:4, 4:] = 0
        big.proj.weight[:, 128:] = 0
        torch.testing.assert_close(big(x_pad, 3, 3)[..., :32], small(x, 3, 3))


@pytest.mark.parametrize("kernel,start", [(3, 1), (5, 0)])
def test_kernel_is_centre_crop(families, supernet_states, kernel, start) -> None:
    family, super_state = families["c2v2-rgb"], supernet_states["c2v2-rgb"]
    arch = family.largest_architecture()
    arch["conv2.kernel"] = kernel
    sub = extract_subnet(family, super_state, arch)
    for block in range(5):
        key = f"conv_stages.1.{block}.dw.conv.weight"
        assert sub[key].shape[2:] == (kernel, kernel)
        crop = super_state[key][..., start : start + kernel, start : start + kernel]
        np.testing.assert_array_equal(sub[key], crop)
    assert sub["conv_stages.0.0.dw.conv.weight"].shape[2:] == (5, 5)


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


@pytest.mark.parametrize("config,kind", [("c2v2-rgb", "seed0"), ("c3v1-grey", "seed2")])
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
    other = _arch(family, "smallest")
    other_sub = extract_subnet(family, super_state, other)
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
    # A second, unchanged client pulls shared entries toward the old values.
    merged2 = merge_subnets(family, super_state, [(arch, modified, 7), (other, other_sub, 7)])
    key = "stem.conv.weight"
    both = tuple(slice(0, n) for n in other_sub[key].shape)
    expected = (modified[key][both].astype(np.float64) + other_sub[key]) / 2
    np.testing.assert_allclose(merged2[key][both], expected, rtol=1e-6)


@pytest.mark.parametrize("config", list(CPU_CONFIGS))
def test_config_round_trip(families, config) -> None:
    family = families[config]
    config_dict = json.loads(family.config_json())
    again = get_supernet("nasvit", **config_dict)
    assert again.config == family.config
    assert again.config_json() == family.config_json()
    assert again.search_space.to_json() == family.search_space.to_json()
    assert again.supernet_shapes() == family.supernet_shapes()
    arch = _arch(family, "seed1")
    assert again.subnet_shapes(arch) == family.subnet_shapes(arch)


def test_search_space_layout(families) -> None:
    for family in families.values():
        space = family.search_space
        n_conv, n_vit = family.config["num_conv_stages"], family.config["num_vit_stages"]
        assert space.names == (
            ["resolution", "stem.width"]
            + [
                f"conv{i}.{field}"
                for i in range(1, n_conv + 1)
                for field in ("width", "depth", "kernel", "expand")
            ]
            + [
                f"vit{j}.{field}"
                for j in range(1, n_vit + 1)
                for field in ("width", "depth", "expand")
            ]
            + ["head.width"]
        )
        assert space.num_architectures() == math.prod(len(d) for d in space)
        for dim in space:
            assert list(dim.choices) == sorted(dim.choices)
        head_dim = family.config["head_dim"]
        for j in range(1, n_vit + 1):
            assert all(w % head_dim == 0 for w in space[f"vit{j}.width"].choices)


def test_paper_search_space() -> None:
    space = get_supernet("nasvit").search_space
    assert space["resolution"].choices == (192, 224, 256, 288)
    assert space["stem.width"].choices == (16, 24)
    for i, spec in enumerate(NASVIT_CONV_STAGES, start=1):
        assert space[f"conv{i}.width"].choices == spec.widths
        assert space[f"conv{i}.depth"].choices == spec.depths
        assert space[f"conv{i}.kernel"].choices == spec.kernels
        assert space[f"conv{i}.expand"].choices == spec.expands
    for j, spec in enumerate(NASVIT_VIT_STAGES, start=1):
        assert space[f"vit{j}.width"].choices == spec.widths
        assert space[f"vit{j}.depth"].choices == spec.depths
        assert space[f"vit{j}.expand"].choices == spec.expands
    assert space["vit3.width"].choices == (160, 168, 176, 184)
    assert space["head.width"].choices == (1792, 1984)
    # NASViT's supernet config, value by value (mb1-mb3 conv stages, mb4-mb7
    # transformer stages whose depth counts the downsampling MBConv): kernels
    # 3/5, 3/5, 3; transformer depths 3-6, 3-9, 3-8, 3-6 (blocks after the
    # MBConv: one less); the expand ratio t of mb4-mb7 is the downsampling
    # MBConv's (4/5/6, 4/5/6, 6, 6), the MLP ratio is fixed at 1.
    assert [space[f"conv{i}.kernel"].choices for i in (1, 2, 3)] == [(3, 5), (3, 5), (3,)]
    assert [space[f"vit{j}.depth"].choices for j in (1, 2, 3, 4)] == [
        tuple(range(2, 6)),
        tuple(range(2, 9)),
        tuple(range(2, 8)),
        tuple(range(2, 6)),
    ]
    assert [space[f"vit{j}.expand"].choices for j in (1, 2, 3, 4)] == [
        (4, 5, 6),
        (4, 5, 6),
        (6,),
        (6,),
    ]
    assert [space[f"conv{i}.expand"].choices for i in (1, 2, 3)] == [(1,), (4, 5, 6), (4, 5, 6)]


def test_stem_stride_rule() -> None:
    assert NASViTFamily(resolution_choices=[32, 40]).stem_stride == 1
    assert NASViTFamily(resolution_choices=[64]).stem_stride == 1
    assert NASViTFamily(resolution_choices=[64, 96]).stem_stride == 2
    assert NASViTFamily().stem_stride == 2


def test_width_mult_collapses_duplicate_choices() -> None:
    family = NASViTFamily(width_mult=0.25)  # divisor 8: 16 and 24 both round to 8
    assert family.search_space["stem.width"].choices == (8,)
    assert family.search_space["vit2.width"].choices == (32,)
    assert family.search_space["vit1.width"].choices == (16, 24)


def test_cpu_instance_trains(families) -> None:
    family = families["c2v2-rgb"]
    torch.manual_seed(0)
    net = family.build_subnet(_arch(family, "seed1"))
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 10
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "knobs",
    [
        dict(num_conv_stages=0),
        dict(num_conv_stages=4),
        dict(num_vit_stages=0),
        dict(num_vit_stages=5),
        dict(width_mult=0),
        dict(head_dim=0),
        dict(resolution_choices=[224, 192]),
        dict(resolution_choices=[]),
        dict(conv_kernel_choices=[[3, 4], [3, 5], [3, 5]]),
        dict(conv_width_choices=[[16, 24]]),  # three stages need three lists
        dict(conv_depth_choices=[[], [3], [3]]),
        dict(vit_expand_choices=[[2, 1]] * 4),
        dict(vit_depth_choices=[[0, 1]] * 4),
        dict(dropout=1.0),
        dict(mlp_ratio=0),
        dict(value_expand=0),
        dict(layer_scale_init=0),
        dict(interpolation="area"),
    ],
)
def test_bad_knobs(knobs) -> None:
    with pytest.raises(ValueError):
        NASViTFamily(**knobs)


def test_bad_architecture(families) -> None:
    family = families["c3v1-grey"]
    arch = family.largest_architecture()
    arch["vit1.width"] = 20
    with pytest.raises(ValueError, match="vit1.width"):
        family.build_subnet(arch)
    arch = family.largest_architecture()
    del arch["resolution"]
    with pytest.raises(ValueError, match="resolution"):
        family.build_subnet(arch)


def test_paper_size_on_meta_device() -> None:
    family = get_supernet("nasvit")  # defaults: the NASViT table, 10 classes
    with torch.device("meta"):
        supernet = family.build_supernet()
        smallest = family.build_subnet(family.smallest_architecture())
    assert all(p.is_meta for p in supernet.parameters())
    n_super = sum(p.numel() for p in supernet.parameters())
    n_small = sum(p.numel() for p in smallest.parameters())
    # NASViT-A0..A5 span about 5 to 10 million parameters with 1000 classes; the
    # supernet (every stage at its largest depth, mb5 with 8 transformer blocks,
    # values 4x wide) is larger.
    assert 10_000_000 < n_super < 20_000_000
    assert 2_000_000 < n_small < n_super
    shapes = family.supernet_shapes()
    assert shapes["stem.conv.weight"] == (24, 3, 3, 3)
    assert shapes["conv_stages.2.5.dw.conv.weight"] == (240, 1, 3, 3)
    assert shapes["vit_stages.3.blocks.4.attn.q.weight"] == (224, 224)
    assert shapes["vit_stages.3.blocks.4.attn.v.weight"] == (896, 224)
    assert shapes["vit_stages.3.blocks.4.attn.v_conv.weight"] == (896, 1, 3, 3)
    assert shapes["vit_stages.3.blocks.4.attn.mix_logits.weight"] == (28, 28)
    assert shapes["vit_stages.3.blocks.4.mlp1.fc1.weight"] == (224, 224)
    assert shapes["vit_stages.3.blocks.4.mlp2.fc1.weight"] == (224, 224)
    assert shapes["vit_stages.3.blocks.4.scale_attn"] == (224,)
    # 288 / 16 = 18 before the first transformer stage (NASViT's 18x18 window),
    # then 9, 9 (stride 1) and 5: (2 * side - 1)^2 offsets, one column per head.
    assert family.relative_table_sides() == [18, 9, 9, 5]
    assert shapes["vit_stages.0.blocks.0.attn.rel_bias"] == (35 * 35, 9)
    assert shapes["vit_stages.3.blocks.0.attn.rel_bias"] == (9 * 9, 28)
    # The transformer stages' downsampling MBConvs expand by the searched ratio.
    assert shapes["vit_stages.0.downsample.expand.conv.weight"] == (240, 40, 1, 1)
    assert shapes["final_expand.conv.weight"] == (1344, 224, 1, 1)
    assert shapes["feature_mix.weight"] == (1984, 1344)
    assert shapes["classifier.weight"] == (10, 1984)
    slices = family.subnet_slices(family.smallest_architecture())
    assert set(slices) <= set(shapes)


def test_relative_position_index_hand_computed() -> None:
    # A 2x2 map, table side 3 (offsets -2..2 on each axis, 5 x 5 rows): tokens
    # (0,0), (0,1), (1,0), (1,1); row = (dy + 2) * 5 + (dx + 2).
    index = relative_position_index(2, 2, 3)
    assert index.tolist() == [
        [12, 11, 7, 6],
        [13, 12, 8, 7],
        [17, 16, 12, 11],
        [18, 17, 13, 12],
    ]
    # The row depends on the offset only: a 3x3 map's top-left 2x2 tokens see the
    # same rows, so one table serves every resolution.
    big = relative_position_index(3, 3, 3)
    corner = [0, 1, 3, 4]
    assert big[corner][:, corner].tolist() == index.tolist()
    with pytest.raises(ValueError, match="4x4"):
        relative_position_index(4, 4, 3)


def test_input_is_resized_bicubically(families) -> None:
    family = families["c2v2-rgb"]
    arch = family.largest_architecture()  # resolution 40 on 32x32 inputs
    net = family.build_subnet(arch).eval()
    seen = []
    hook = net.stem.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        net(x)
    hook.remove()
    expected = F.interpolate(x, size=(40, 40), mode="bicubic", align_corners=False)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    bilinear = get_supernet("nasvit", interpolation="bilinear", **CPU_CONFIGS["c2v2-rgb"])
    assert bilinear.build_subnet(arch).interpolation == "bilinear"


def test_initialisation_as_nasvit(families) -> None:
    family = families["c2v2-rgb"]
    torch.manual_seed(0)
    net = family.build_supernet()
    state = net.state_dict()
    # Residual MBConvs (blocks after a stage's first) close on a zero BatchNorm
    # scale; first blocks and downsampling MBConvs do not.
    for i, stage in enumerate(net.conv_stages):
        for b in range(len(stage)):
            weight = state[f"conv_stages.{i}.{b}.project.bn.weight"]
            assert bool((weight == 0).all()) == (b > 0), (i, b)
    assert (state["vit_stages.0.downsample.project.bn.weight"] == 1).all()
    # So a residual MBConv starts as the identity (eval mode: running statistics).
    block = net.conv_stages[1][1].eval()
    x = torch.randn(2, block.project.conv.out_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    # Layer scales start at 1e-4, the talking heads at the identity.
    attn = net.vit_stages[0].blocks[0].attn
    assert (state["vit_stages.0.blocks.0.scale_attn"] == 1e-4).all()
    assert (state["vit_stages.0.blocks.0.scale_mlp"] == 1e-4).all()
    assert torch.equal(attn.mix_logits.weight, torch.eye(attn.num_heads))
    assert 0 < attn.rel_bias.std().item() < 0.05


def test_cpu_preset_tables_follow_the_resolution() -> None:
    # The CPU preset (largest resolution 32, stride-1 stem, conv strides 1 and 2,
    # first transformer stage stride 2): 32 -> 32 -> 16 -> 8.
    from flwr_pfedrlnas.supernets import cpu_preset

    family = get_supernet("nasvit", **cpu_preset("nasvit"))
    assert family.relative_table_sides() == [8]
    net = family.build_subnet(family.largest_architecture())
    assert net.vit_stages[0].blocks[0].attn.rel_bias.shape[0] == 15 * 15
    # The smaller resolution (24 -> 6x6 tokens) indexes the same table.
    arch = family.largest_architecture()
    arch["resolution"] = 24
    assert family.subnet_shapes(arch) == family.subnet_shapes(family.largest_architecture())
    assert family.build_subnet(arch)(torch.randn(1, 1, 32, 32)).shape == (1, 10)

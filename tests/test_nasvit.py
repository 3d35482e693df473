"""Tests of the NASViT supernet family (MBConv stages + transformer stages): its own
checks; those every family passes alike are in test_families.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from family_checks import CPU_CONFIGS, arch_of, family_fixtures, paper_size_shapes

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.supernets import get_supernet, numpy_to_state
from flwr_pfedrlnas.supernets._nasvit_blocks import relative_position_index
from flwr_pfedrlnas.supernets.nasvit import (
    NASVIT_CONV_STAGES,
    NASVIT_VIT_STAGES,
    NASViTFamily,
)

torch.set_num_threads(1)

families, supernet_states = family_fixtures("nasvit")


def test_no_module_shared_by_reference(families) -> None:
    family = families["c2v2-rgb"]
    a = family.build_subnet(arch_of(family, "seed0"))
    b = family.build_subnet(arch_of(family, "seed0"))
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
    net = family.build_subnet(arch_of(family, "seed1"))
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


def test_architecture_without_resolution(families) -> None:
    family = families["c3v1-grey"]
    arch = family.largest_architecture()
    del arch["resolution"]
    with pytest.raises(ValueError, match="resolution"):
        family.build_subnet(arch)


def test_paper_size_on_meta_device() -> None:
    # The defaults: the NASViT table, 10 classes. NASViT-A0..A5 span about 5 to 10
    # million parameters with 1000 classes; the supernet (every stage at its largest
    # depth, mb5 with 8 transformer blocks, values 4x wide) is larger.
    family, shapes = paper_size_shapes("nasvit", (10_000_000, 20_000_000), 2_000_000)
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
    bilinear = get_supernet("nasvit", interpolation="bilinear", **CPU_CONFIGS["nasvit"]["c2v2-rgb"])
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

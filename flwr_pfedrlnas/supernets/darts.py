"""DARTS cell search space as a path-wise supernet family (one operation per edge)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flwr_pfedrlnas.core.search_space import Architecture, Dimension, SearchSpace
from flwr_pfedrlnas.supernets import register_supernet
from flwr_pfedrlnas.supernets._choices import positive_int
from flwr_pfedrlnas.supernets.base import SupernetFamily, block_shapes

__all__ = ["DARTS_OPERATIONS", "DARTSFamily"]

# The eight candidate operations of DARTS (genotypes.PRIMITIVES), in its order.
DARTS_OPERATIONS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

_NONE = "none"
_CELL_TYPES = ("normal", "reduce")


def _num_edges(steps: int) -> int:
    """Edges of a cell: intermediate node ``j`` reads all ``2 + j`` predecessors."""
    return sum(2 + j for j in range(steps))


def _edge_inputs(steps: int) -> list[int]:
    """Input node of every edge, in DARTS's edge order (node ``j``'s edges together)."""
    return [i for j in range(steps) for i in range(2 + j)]


class _ReLUOp(nn.Module):
    """A ReLU, then ``layers``: one ``nn.Sequential`` (keys ``op.*``), as DARTS's ops."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(), *layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _ReLUConvBN(_ReLUOp):
    """ReLU, convolution (no bias), BatchNorm (DARTS's ``ReLUConvBN``; keys ``op.*``)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class _DilConv(_ReLUOp):
    """ReLU, dilated depthwise conv, pointwise conv, BatchNorm (DARTS's ``DilConv``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                c_in,
                c_in,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class _SepConv(_ReLUOp):
    """Two stacked (ReLU, depthwise, pointwise, BatchNorm), the first strided (DARTS)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, kernel, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class _FactorizedReduce(nn.Module):
    """ReLU, two offset 1x1 stride-2 convs concatenated, BatchNorm (DARTS).

    The second conv reads the input shifted by one pixel. Unlike DARTS, odd
    output channels are allowed (the second conv takes the extra one) and odd
    spatial sizes are padded so both halves have ``ceil(H / 2)`` rows; for even
    sizes and channels this is exactly DARTS's module.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        height, width = x.shape[-2:]
        if height % 2 or width % 2:
            shifted = F.pad(shifted, (0, width % 2, 0, height % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _make_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module | None:
    """The DARTS operation ``name`` on ``channels`` channels (``None`` for 'none').

    Pooling is followed by a BatchNorm without affine parameters, as in DARTS's
    ``MixedOp``; that BatchNorm holds running statistics only.
    """
    c = channels
    if name == _NONE:
        return None
    if name == "max_pool_3x3":
        return nn.Sequential(
            nn.MaxPool2d(3, stride=stride, padding=1), nn.BatchNorm2d(c, affine=False)
        )
    if name == "avg_pool_3x3":
        return nn.Sequential(
            nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
            nn.BatchNorm2d(c, affine=False),
        )
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else _FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return _SepConv(c, c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return _SepConv(c, c, 5, stride, 2, affine)
    if name == "dil_conv_3x3":
        return _DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return _DilConv(c, c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown DARTS operation {name!r}")


class _Edge(nn.ModuleDict):
    """The operations of one edge, keyed by name; forward = their mean.

    In the supernet the edge holds every operation and its forward is DARTS's
    ``MixedOp`` at uniform architecture weights: the mean over all operations,
    'none' counting as a zero term. In a subnet it holds the one chosen
    operation (nothing for 'none'), and the mean is that operation's output.
    """

    def __init__(self, names: Sequence[str], channels: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.num_terms = len(names)
        self.op_names = [str(n) for n in names]
        for name in names:
            op = _make_op(name, channels, stride, affine)
            if op is not None:
                self[name] = op

    @property
    def is_zero(self) -> bool:
        """Whether the edge contributes nothing (only 'none')."""
        return len(self) == 0

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            out = sum(op(x) for op in self.values())
            return out if self.num_terms == 1 else out / self.num_terms
        # DARTS's MixedOp: sum_o w_o * o(x), 'none' a zero term (weights follow op_names).
        terms = [weights[i] * self[name](x) for i, name in enumerate(self.op_names) if name in self]
        return sum(terms)


def _used_inputs(edge_ops: Sequence[Sequence[str]], steps: int) -> list[bool]:
    """Whether each input node is preprocessed: some edge reading it is not 'none'."""
    inputs = _edge_inputs(steps)
    return [
        any(any(op != _NONE for op in ops) for ops, i in zip(edge_ops, inputs) if i == n)
        for n in range(2)
    ]


def _preprocess0(c_prev_prev: int, channels: int, reduction_prev: bool, affine: bool) -> nn.Module:
    """The older input's preprocessing: halved (FactorizedReduce) after a reduction cell."""
    if reduction_prev:
        return _FactorizedReduce(c_prev_prev, channels, affine)
    return _ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)


def _edge_stride(reduction: bool, input_node: int) -> int:
    """Stride 2 on a reduction cell's edges from the input nodes, else 1."""
    return 2 if reduction and input_node < 2 else 1


def _stem(in_channels: int, channels: int) -> nn.Sequential:
    """DARTS's stem: a 3x3 convolution (no bias) and BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
    )


class _Cell(nn.Module):
    """A DARTS cell: two preprocessed inputs, ``steps`` nodes, concatenated output.

    Parameters
    ----------
    edge_ops : list[list[str]]
        Operation names held by each edge (all of them in the supernet, the
        chosen one in a subnet).
    reduction, reduction_prev : bool
        Whether this cell, and the previous one, halve the spatial size.
    """

    def __init__(
        self,
        edge_ops: Sequence[Sequence[str]],
        steps: int,
        multiplier: int,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        affine: bool,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.multiplier = multiplier
        self.channels = channels
        self.reduction = reduction
        inputs = _edge_inputs(steps)
        used = _used_inputs(edge_ops, steps)
        self.preprocess0: nn.Module | None = None
        self.preprocess1: nn.Module | None = None
        if used[0]:
            self.preprocess0 = _preprocess0(c_prev_prev, channels, reduction_prev, affine)
        if used[1]:
            self.preprocess1 = _ReLUConvBN(c_prev, channels, 1, 1, 0, affine)
        self.edges = nn.ModuleList(
            _Edge(ops, channels, _edge_stride(reduction, i), affine)
            for ops, i in zip(edge_ops, inputs)
        )

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        height, width = s1.shape[-2:]
        if self.reduction:
            height, width = (height + 1) // 2, (width + 1) // 2
        shape = (s1.shape[0], self.channels, height, width)

        def zeros() -> torch.Tensor:
            return s1.new_zeros(shape)

        # ``None`` marks a node that is identically zero (all its edges 'none').
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if self.preprocess0 is not None else None,
            self.preprocess1(s1) if self.preprocess1 is not None else None,
        ]
        offset = 0
        for _ in range(self.steps):
            node: torch.Tensor | None = None
            for j, h in enumerate(states):
                edge = self.edges[offset + j]
                if edge.is_zero:
                    continue
                x = h if h is not None else zeros()
                out = edge(x) if weights is None else edge(x, weights[offset + j])
                node = out if node is None else node + out
            offset += len(states)
            states.append(node)
        return torch.cat(
            [h if h is not None else zeros() for h in states[-self.multiplier :]], dim=1
        )


class _DARTSNetwork(nn.Module):
    """Stem, cells, global average pooling and a linear classifier."""

    def __init__(
        self, stem: nn.Sequential, cells: nn.ModuleList, c_out: int, num_classes: int
    ) -> None:
        super().__init__()
        self.stem = stem
        self.cells = cells
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_out, num_classes)

    def forward(
        self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits; ``weights`` = {"normal": [edges, ops], "reduce": [edges, ops]} mixes
        every edge's operations (DARTS's ``MixedOp``; rows follow the ``operations``
        order, 'none' included); ``None``: the uniform mean (supernet) or the one
        chosen operation (subnet)."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w = None if weights is None else weights["reduce" if cell.reduction else "normal"]
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.pool(s1).flatten(1))


def _operation_list(values: Sequence[str]) -> list[str]:
    """Validate the ``operations`` knob: distinct DARTS operation names."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"operations must be a list of names, got {values!r}")
    if len(values) == 0:
        raise ValueError("operations must not be empty")
    out = []
    for name in values:
        if name not in DARTS_OPERATIONS:
            raise ValueError(
                f"operations: unknown operation {name!r}; "
                f"the DARTS operations are {list(DARTS_OPERATIONS)}"
            )
        if name in out:
            raise ValueError(f"operations: {name!r} repeated")
        out.append(str(name))
    return out


@register_supernet
class DARTSFamily(SupernetFamily):
    """The DARTS CNN search space (Liu et al., 2019) as a path-wise supernet.

    The network is a stem (3x3 conv to ``stem_multiplier * init_channels``
    channels, BatchNorm), ``num_cells`` cells and a classifier (global average
    pooling, linear). Cells ``num_cells // 3`` and ``2 * num_cells // 3`` are
    reduction cells: they double the channels and halve the spatial size; the
    others are normal cells. Each cell has two input nodes, the outputs of the
    previous two cells preprocessed to the cell's width (1x1 ReLUConvBN, or
    FactorizedReduce when the previous cell reduced, so that the older input
    is halved too), and ``steps`` intermediate nodes; node ``j`` sums one
    operation on each of its ``2 + j`` predecessors, and the cell's output
    concatenates the last ``multiplier`` nodes. On a reduction cell the edges
    from the input nodes have stride 2. With the defaults a cell has 14 edges
    (DARTS's edge order: the 2 edges of the first node, then the 3 of the
    second, ...).

    Search dimensions, one per edge and cell type: ``normal.edge{k}`` and
    ``reduce.edge{k}``, whose choices are the operation names. All normal
    cells share the normal choices and all reduction cells the reduce choices
    (DARTS's genotype), but every cell has its own weights.

    The space is path-wise. The supernet holds every operation of every edge;
    a subnet holds only the chosen operation of each edge, under the same key
    (``cells.{c}.edges.{k}.{operation}.…``), and every subnet tensor is the
    whole supernet tensor of its key, which the default
    :meth:`~SupernetFamily.tensor_slices` gives since the shapes are equal.
    'none' and parameter-free operations (``skip_connect`` on a stride-1
    edge) have no keys; a pooling operation is followed by a BatchNorm without
    affine parameters as in DARTS's ``MixedOp``, so its keys are that
    BatchNorm's running statistics. A subnet leaves out an input node's
    preprocessing when every edge reading that node is 'none' (the weights are
    unused, so the client neither gets nor returns them). Only this direct
    case is pruned: with many 'none' edges a cell's output may reach nothing
    downstream (all-'none' everywhere: the stem), and such weights stay in the
    subnet without gradients. An intermediate node whose edges are all 'none'
    is zero; operations reading it see zeros.

    The supernet's forward is DARTS's ``MixedOp`` at uniform architecture
    weights (the mean of all operations of an edge, 'none' a zero term); the
    server never runs it. Weights use PyTorch's default initialisation, as
    DARTS.

    Parameters
    ----------
    init_channels : int (default: 16)
        Channels of a first-stage node (DARTS search: 16).
    num_cells : int (default: 8)
        Number of cells, at least 3 so that both cell types occur (DARTS
        search: 8).
    steps : int (default: 4)
        Intermediate nodes per cell.
    multiplier : int (default: 4)
        How many of the last nodes the cell output concatenates (at most
        ``steps``).
    stem_multiplier : int (default: 3)
        Stem output channels = ``stem_multiplier * init_channels``.
    num_classes : int (default: 10)
        Classifier outputs.
    in_channels : int (default: 3)
        Input image channels.
    operations : list[str] (default: the 8 DARTS operations)
        The choices of every edge, a subset of :data:`DARTS_OPERATIONS`; the
        given order is the order of the choices.
    affine : bool (default: False)
        Learnable scale and shift in the BatchNorms of the operations and the
        preprocessing. DARTS's search network uses ``False`` (its final network
        ``True``); the BatchNorm after pooling never has them, the stem's
        always.
    """

    name = "darts"

    def __init__(
        self,
        init_channels: int = 16,
        num_cells: int = 8,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
        operations: Sequence[str] = DARTS_OPERATIONS,
        affine: bool = False,
    ) -> None:
        knobs = {
            knob: positive_int(knob, value)
            for knob, value in (
                ("init_channels", init_channels),
                ("num_cells", num_cells),
                ("steps", steps),
                ("multiplier", multiplier),
                ("stem_multiplier", stem_multiplier),
                ("num_classes", num_classes),
                ("in_channels", in_channels),
            )
        }
        if knobs["num_cells"] < 3:
            raise ValueError(
                f"num_cells must be at least 3 (one cell of each type), got {num_cells}"
            )
        if knobs["multiplier"] > knobs["steps"]:
            raise ValueError(f"multiplier ({multiplier}) must not exceed steps ({steps})")
        if not isinstance(affine, bool):
            raise ValueError(f"affine must be a bool, got {affine!r}")
        ops = _operation_list(operations)
        super().__init__(**knobs, operations=ops, affine=affine)
        self._space = SearchSpace(
            Dimension(f"{cell_type}.edge{k}", tuple(ops))
            for cell_type in _CELL_TYPES
            for k in range(_num_edges(knobs["steps"]))
        )
        self._op_sizes: dict[str, dict[str, tuple[int, int]]] | None = None

    # ------------------------------------------------------------------ layout
    @property
    def search_space(self) -> SearchSpace:
        """``normal.edge{k}`` then ``reduce.edge{k}``; choices: operation names."""
        return self._space

    @property
    def num_edges(self) -> int:
        """Edges per cell (14 for 4 steps)."""
        return _num_edges(self._config["steps"])

    def reduction_cells(self) -> list[int]:
        """Indices of the reduction cells (at 1/3 and 2/3 of the depth)."""
        n = self._config["num_cells"]
        return sorted({n // 3, 2 * n // 3})

    def cell_channels(self) -> list[int]:
        """Node channels of every cell (doubled at each reduction cell)."""
        channels, c = [], self._config["init_channels"]
        reductions = self.reduction_cells()
        for i in range(self._config["num_cells"]):
            if i in reductions:
                c *= 2
            channels.append(c)
        return channels

    def keepable_blocks(self) -> dict[str, tuple[str, ...]]:
        """``classifier`` and ``last-stage`` (the last cell)."""
        return {
            "classifier": ("classifier.",),
            "last-stage": (f"cells.{self._config['num_cells'] - 1}.",),
        }

    # ------------------------------------------------------------------ builders
    def build_supernet(self) -> nn.Module:
        """Every operation on every edge of every cell (forward: uniform ``MixedOp``)."""
        ops = self._config["operations"]
        every = {t: [list(ops)] * self.num_edges for t in _CELL_TYPES}
        return self._build(every)

    def build_subnet(self, arch: Architecture) -> nn.Module:
        """The chosen operation of each edge (built from ``arch`` alone)."""
        arch = self.search_space.validate(arch)
        chosen = {t: [[arch[f"{t}.edge{k}"]] for k in range(self.num_edges)] for t in _CELL_TYPES}
        return self._build(chosen)

    def derive_subnet_shapes(self, arch: Architecture) -> dict[str, tuple[int, ...]]:
        """``arch``'s subnet shapes from cached per-operation shapes (no subnet built).

        Exactly ``build_subnet(arch).state_dict()``'s keys, order and shapes: the
        cells of :meth:`_cell_layout`, each its preprocessing (where used) and
        its edges' chosen operations, as :class:`_Cell` registers them.
        """
        cfg = self._config
        affine = cfg["affine"]
        steps = cfg["steps"]
        inputs = _edge_inputs(steps)
        chosen = {t: [(arch[f"{t}.edge{k}"],) for k in range(self.num_edges)] for t in _CELL_TYPES}
        used = {t: _used_inputs(ops, steps) for t, ops in chosen.items()}
        c_stem, layout, c_out = self._cell_layout()
        items = list(block_shapes("stem.", _stem, cfg["in_channels"], c_stem))
        for c, (c_prev_prev, c_prev, channels, reduction, reduction_prev) in enumerate(layout):
            cell_type = "reduce" if reduction else "normal"
            prefix = f"cells.{c}."
            if used[cell_type][0]:
                items.extend(
                    block_shapes(
                        prefix + "preprocess0.",
                        _preprocess0,
                        c_prev_prev,
                        channels,
                        reduction_prev,
                        affine,
                    )
                )
            if used[cell_type][1]:
                items.extend(
                    block_shapes(
                        prefix + "preprocess1.", _ReLUConvBN, c_prev, channels, 1, 1, 0, affine
                    )
                )
            for k, (ops, i) in enumerate(zip(chosen[cell_type], inputs)):
                items.extend(
                    block_shapes(
                        f"{prefix}edges.{k}.",
                        _Edge,
                        ops,
                        channels,
                        _edge_stride(reduction, i),
                        affine,
                    )
                )
        items.extend(block_shapes("classifier.", nn.Linear, c_out, cfg["num_classes"]))
        return dict(items)

    def _cell_layout(self) -> tuple[int, list[tuple[int, int, int, bool, bool]], int]:
        """The stem width, per cell ``(c_prev_prev, c_prev, channels, reduction,
        reduction_prev)``, and the last cell's output channels (the classifier's input)."""
        cfg = self._config
        c_stem = cfg["stem_multiplier"] * cfg["init_channels"]
        reductions = self.reduction_cells()
        layout = []
        c_prev_prev, c_prev, reduction_prev = c_stem, c_stem, False
        for i, channels in enumerate(self.cell_channels()):
            reduction = i in reductions
            layout.append((c_prev_prev, c_prev, channels, reduction, reduction_prev))
            c_prev_prev, c_prev = c_prev, cfg["multiplier"] * channels
            reduction_prev = reduction
        return c_stem, layout, c_prev

    def _build(self, edge_ops: dict[str, list[list[str]]]) -> nn.Module:
        """Network whose edges hold ``edge_ops[cell_type][k]`` (one code path)."""
        cfg = self._config
        c_stem, layout, c_out = self._cell_layout()
        stem = _stem(cfg["in_channels"], c_stem)
        cells = nn.ModuleList(
            _Cell(
                edge_ops["reduce" if reduction else "normal"],
                cfg["steps"],
                cfg["multiplier"],
                c_prev_prev,
                c_prev,
                channels,
                reduction,
                reduction_prev,
                cfg["affine"],
            )
            for c_prev_prev, c_prev, channels, reduction, reduction_prev in layout
        )
        return _DARTSNetwork(stem, cells, c_out, cfg["num_classes"])

    # ------------------------------------------------------------------ extremes
    def operation_sizes(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per dimension and operation: (parameters, state entries) it adds.

        Summed over every cell of the dimension's type, counted on the meta
        device; the preprocessing is not included.
        """
        if self._op_sizes is None:
            reductions = self.reduction_cells()
            inputs = _edge_inputs(self._config["steps"])
            sizes: dict[str, dict[str, tuple[int, int]]] = {}
            with torch.device("meta"):
                for dim in self.search_space:
                    cell_type, edge = dim.name.split(".edge")
                    k = int(edge)
                    per_op = {}
                    for op_name in dim.choices:
                        n_params = n_state = 0
                        for i, c in enumerate(self.cell_channels()):
                            reduction = i in reductions
                            if reduction != (cell_type == "reduce"):
                                continue
                            stride = _edge_stride(reduction, inputs[k])
                            op = _make_op(str(op_name), c, stride, self._config["affine"])
                            if op is None:
                                continue
                            n_params += sum(p.numel() for p in op.parameters())
                            n_state += sum(v.numel() for v in op.state_dict().values())
                        per_op[str(op_name)] = (n_params, n_state)
                    sizes[dim.name] = per_op
            self._op_sizes = sizes
        return {d: dict(ops) for d, ops in self._op_sizes.items()}

    def largest_architecture(self) -> Architecture:
        """Per edge, the operation with the most weights (``sep_conv_5x5`` by default).

        In a path-wise space this is the subnet with the most parameters, not
        the supernet (which holds every operation). Ties go to the later
        operation in ``operations``.
        """
        return self._ranked_architecture(max)

    def smallest_architecture(self) -> Architecture:
        """Per edge, the operation with the fewest weights ('none' by default).

        In a path-wise space this is the subnet with the fewest parameters; with
        'none' everywhere it is the stem and the classifier, every cell output
        being zero. Ties go to the earlier operation in ``operations``.
        """
        return self._ranked_architecture(min)

    def _ranked_architecture(
        self, pick: Callable[[list[tuple[Any, int]]], tuple[Any, int]]
    ) -> Architecture:
        """Per edge, the choice ``pick`` (``max`` or ``min``) takes by (weights, position)."""
        sizes = self.operation_sizes()
        arch = {}
        for dim in self.search_space:
            ranked = [(sizes[dim.name][str(c)], i) for i, c in enumerate(dim.choices)]
            arch[dim.name] = dim.choices[pick(ranked)[1]]
        return arch

"""A user-defined supernet family: an MLP elastic in depth and hidden width.

Written only against the public contract of ``flwr_pfedrlnas``: a search space
and two builders that call one builder function. Import this module in both
the ServerApp and the ClientApp so that ``get_supernet("elastic-mlp")`` works
on every side.
"""

from __future__ import annotations

from torch import nn

from flwr_pfedrlnas import Dimension, SearchSpace, SupernetFamily, register_supernet


class _MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers.append(nn.Sequential(nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()))
            width = h
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@register_supernet
class ElasticMLPFamily(SupernetFamily):
    """Up to ``max_layers`` hidden layers, each with its own width choice."""

    name = "elastic-mlp"

    def __init__(
        self,
        in_features: int = 32 * 32,
        num_classes: int = 10,
        max_layers: int = 3,
        width_choices: list[int] | None = None,
    ) -> None:
        width_choices = list(width_choices or [32, 64, 128])
        super().__init__(
            in_features=in_features,
            num_classes=num_classes,
            max_layers=max_layers,
            width_choices=width_choices,
        )
        dims = [Dimension("depth", tuple(range(1, max_layers + 1)))]
        dims += [Dimension(f"layer{i}.width", tuple(width_choices)) for i in range(max_layers)]
        self._space = SearchSpace(dims)

    @property
    def search_space(self) -> SearchSpace:
        return self._space

    def _build(self, arch) -> nn.Module:
        c = self.config
        hidden = [arch[f"layer{i}.width"] for i in range(arch["depth"])]
        return _MLP(c["in_features"], hidden, c["num_classes"])

    def build_supernet(self) -> nn.Module:
        # The largest choice everywhere holds every weight any subnet can have.
        return self._build(self.largest_architecture())

    def build_subnet(self, arch) -> nn.Module:
        return self._build(self.search_space.validate(arch))

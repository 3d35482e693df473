"""Each client's deployed model as a file: arrays in .npz, the rest in JSON, no pickle.

Format and behaviour: docs/files.md, "Deployed models".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flwr_pfedrlnas.core.aggregation import extract_subnet
from flwr_pfedrlnas.core.checkpoint import atomic_write
from flwr_pfedrlnas.core.policy import ArchitecturePolicy
from flwr_pfedrlnas.core.search_space import (
    Architecture,
    architecture_from_json,
    architecture_to_json,
)
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.supernets.keep import personal_keys

__all__ = [
    "DEPLOYED_FORMAT",
    "DeployedModel",
    "DeployedModels",
    "load_deployed",
    "read_all_deployed",
    "read_deployed",
    "save_deployed",
]

DEPLOYED_FORMAT = "flwr-pfedrlnas-deployed"
DEPLOYED_VERSION = 1
BATCHNORM_SOURCES = ("client", "supernet")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class DeployedModel:
    """One client's deployed model: its argmax architecture and the subnet's weights.

    Parameters
    ----------
    client_id : str
        The client's stable id.
    family : SupernetFamily
        The supernet family the subnet belongs to.
    arch : Architecture
        The client's most probable architecture (argmax of its policy).
    state : dict[str, np.ndarray]
        The subnet's ``state_dict`` as numpy arrays (cut from the supernet).
    round : int
        The round after which the model was cut.
    batchnorm_statistics : str (default: "supernet")
        ``"client"`` or ``"supernet"``: where the running statistics come from.
    kept_on_client : list[str] (default: [])
        Subnet keys of the blocks the client keeps personal (share-or-keep):
        not in ``state``; the client holds them, :meth:`build` needs them.
    """

    client_id: str
    family: SupernetFamily
    arch: Architecture
    state: dict[str, np.ndarray]
    round: int
    batchnorm_statistics: str = "supernet"
    kept_on_client: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.batchnorm_statistics not in BATCHNORM_SOURCES:
            raise ValueError(
                f"batchnorm_statistics is {self.batchnorm_statistics!r}, "
                f"not one of {BATCHNORM_SOURCES}"
            )

    def build(self, personal: Mapping[str, np.ndarray] | None = None) -> nn.Module:
        """A plain ``nn.Module`` (the family's ``build_subnet``), these weights, eval mode.

        ``personal``: the tensors of :attr:`kept_on_client` (the client's own),
        required when there are any.
        """
        missing = [k for k in self.kept_on_client if k not in (personal or {})]
        if missing:
            raise ValueError(
                f"client {self.client_id!r} keeps {len(missing)} tensor(s) of its deployed "
                f"model personal (e.g. {missing[0]!r}): pass them as personal=..."
            )
        model = self.family.build_subnet(self.arch)
        both = {**self.state, **{k: (personal or {})[k] for k in self.kept_on_client}}
        state = {k: torch.from_numpy(np.array(v)) for k, v in both.items()}
        model.load_state_dict(state, strict=True)
        return model.eval()

    def metadata(self, weights_file: str) -> dict[str, Any]:
        """The JSON half of the saved model."""
        return {
            "format": DEPLOYED_FORMAT,
            "version": DEPLOYED_VERSION,
            "client-id": self.client_id,
            "supernet": self.family.name,
            "supernet-config": self.family.config,
            "arch": architecture_to_json(self.arch),
            "round": int(self.round),
            "batchnorm-statistics": self.batchnorm_statistics,
            "weights": weights_file,
            "keys": list(self.state),
            "kept-on-client": list(self.kept_on_client),
        }


def _stem(client_id: str) -> str:
    if _PLAIN_NAME.fullmatch(client_id) and client_id != "index":
        return f"client-{client_id}"
    return "client-" + hashlib.sha256(client_id.encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(data))


def save_deployed(directory: str | os.PathLike, models: Mapping[str, DeployedModel]) -> Path:
    """Write every model of ``models`` (client id -> model) into ``directory``.

    Clients saved earlier and absent from ``models`` stay listed. Returns the
    directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / "index.json"
    clients: dict[str, str] = {}
    if index_path.exists():
        clients = dict(json.loads(index_path.read_text()).get("clients", {}))
    for cid, model in models.items():
        stem = _stem(str(cid))
        weights = f"{stem}-r{int(model.round):06d}.npz"
        arrays = {k: np.asarray(v) for k, v in model.state.items()}
        atomic_write(directory / weights, lambda f, a=arrays: np.savez(f, **a))
        _write_json(directory / f"{stem}.json", model.metadata(weights))
        for old in directory.glob(f"{stem}-r*.npz"):
            if old.name != weights:
                old.unlink(missing_ok=True)
        clients[str(cid)] = f"{stem}.json"
    _write_json(
        index_path, {"format": DEPLOYED_FORMAT, "version": DEPLOYED_VERSION, "clients": clients}
    )
    return directory


def _index(directory: Path) -> dict[str, str]:
    index_path = directory / "index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path} does not exist: not a deployed-models directory")
    index = json.loads(index_path.read_text())
    if index.get("format") != DEPLOYED_FORMAT:
        raise ValueError(
            f"{index_path}: format is {index.get('format')!r}, not {DEPLOYED_FORMAT!r}"
        )
    if int(index.get("version", 0)) > DEPLOYED_VERSION:
        raise ValueError(f"{index_path}: version {index['version']} is newer than this package's")
    return dict(index["clients"])


def read_deployed(directory: str | os.PathLike, client_id: str) -> DeployedModel:
    """Read the deployed model of ``client_id``.

    The family is rebuilt with ``get_supernet(name, **config)``: a family of
    your own must be registered (``register_supernet``) before reading.
    Raises ``KeyError`` naming the client and the saved ones when it is absent.
    """
    directory = Path(directory)
    clients = _index(directory)
    if str(client_id) not in clients:
        raise KeyError(f"no deployed model of client {client_id!r}; saved: {sorted(clients)}")
    return _read_one(directory, str(client_id), clients[str(client_id)])


def read_all_deployed(directory: str | os.PathLike) -> dict[str, DeployedModel]:
    """Every client's deployed model in ``directory`` (client id -> model)."""
    directory = Path(directory)
    return {cid: _read_one(directory, cid, meta) for cid, meta in _index(directory).items()}


def _read_one(directory: Path, client_id: str, meta_file: str) -> DeployedModel:
    meta = json.loads((directory / meta_file).read_text())
    family = get_supernet(str(meta["supernet"]), **meta["supernet-config"])
    arch = architecture_from_json(str(meta["arch"]), family.search_space)
    with np.load(directory / meta["weights"], allow_pickle=False) as npz:
        state = {k: npz[k] for k in meta["keys"]}
    return DeployedModel(
        client_id=client_id,
        family=family,
        arch=arch,
        state=state,
        round=int(meta["round"]),
        batchnorm_statistics=str(meta["batchnorm-statistics"]),
        kept_on_client=list(meta.get("kept-on-client", [])),
    )


def load_deployed(
    directory: str | os.PathLike,
    client_id: str,
    personal: Mapping[str, np.ndarray] | None = None,
) -> nn.Module:
    """The deployed model of ``client_id`` as a plain ``nn.Module`` in eval mode.

    ``personal``: the tensors the client keeps (share-or-keep), when it keeps any.
    """
    return read_deployed(directory, client_id).build(personal)


_BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class DeployedModels:
    """The server's view of every client's deployed model during a search.

    A model is cut from the current supernet at the client's argmax
    architecture (:meth:`PerFedRLNASSearch.deploy`). A client that re-estimated
    its BatchNorm statistics before testing that very model may report them
    (:meth:`record_batchnorm`); they replace the supernet's merged statistics
    while the architecture and the supernet stay what they were then.

    Parameters
    ----------
    search : PerFedRLNASSearch
        The search core.
    """

    def __init__(self, search: Any) -> None:
        self.search = search
        # client id -> (arch JSON, completed rounds when reported, buffers)
        self._batchnorm: dict[str, tuple[str, int, dict[str, np.ndarray]]] = {}

    def record_batchnorm(
        self, client_id: str, arch: Architecture, buffers: Mapping[str, np.ndarray]
    ) -> str | None:
        """Keep a client's re-estimated BatchNorm buffers; the reason when they are unusable.

        Every key must be a BatchNorm buffer (``running_mean``, ``running_var``,
        ``num_batches_tracked``) of the subnet of ``arch``, with its shape and
        finite values; nothing is kept otherwise.
        """
        family = self.search.family
        shapes = family.subnet_shapes(arch)
        kept: dict[str, np.ndarray] = {}
        personal = personal_keys(family, arch)
        for key, value in buffers.items():
            if key not in shapes or not key.endswith(_BATCHNORM_BUFFERS):
                return f"{key!r} is not a BatchNorm buffer of the deployed subnet"
            if key in personal:
                return f"{key!r} belongs to a block the client keeps personal"
            array = np.asarray(value)
            if tuple(array.shape) != tuple(shapes[key]):
                return f"{key!r} has shape {tuple(array.shape)}, not {tuple(shapes[key])}"
            if array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
                return f"{key!r} is not finite numbers (dtype {array.dtype})"
            kept[key] = array.astype(self.search.supernet[key].dtype)
        self._batchnorm[str(client_id)] = (
            architecture_to_json(arch),
            int(self.search.completed_rounds),
            kept,
        )
        return None

    def model(self, client_id: str) -> DeployedModel:
        """The deployed model of ``client_id`` now."""
        cid = str(client_id)
        if cid in self.search.policies:
            arch, state = self.search.deploy(cid)
        else:  # never searched: a uniform policy's argmax, without adding one to the search
            arch = ArchitecturePolicy(self.search.family.search_space).argmax()
            state = extract_subnet(self.search.family, self.search.supernet, arch)
        source = "supernet"
        reported = self._batchnorm.get(cid)
        rounds = int(self.search.completed_rounds)
        if reported is not None and reported[:2] == (architecture_to_json(arch), rounds):
            state.update({k: v.copy() for k, v in reported[2].items()})
            source = "client" if reported[2] else "supernet"
        kept = [k for k in self.search.family.subnet_shapes(arch) if k not in state]
        return DeployedModel(cid, self.search.family, arch, state, rounds, source, kept)

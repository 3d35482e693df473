"""Every client's deployed model out of a running strategy: on request and at the end."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import Message
from flwr.common import log

from flwr_pfedrlnas.core.search_space import architecture_from_json
from flwr_pfedrlnas.deployed import DeployedModel, DeployedModels, save_deployed
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import natural_sorted

__all__ = ["ExportsDeployedModels", "record_batchnorm_replies"]


class ExportsDeployedModels:
    """Strategy mixin: :meth:`deployed_models` and :meth:`save_deployed`.

    The strategy sets ``search`` (the core), ``deployed`` (a
    :class:`~flwr_pfedrlnas.deployed.DeployedModels`) and ``deployed_dir``. A
    client never trained deploys the argmax of a uniform policy.
    """

    deployed: DeployedModels
    deployed_dir: str | None

    def known_clients(self) -> list[str]:
        """Every client id the strategy has seen (natural order), identified or searched."""
        known = set(self.search.policies)  # type: ignore[attr-defined]
        known.update(getattr(self, "client_to_node", {}))  # Message API: client -> node
        known.update(getattr(self, "proxy_to_client", {}).values())  # legacy: proxy -> client
        return natural_sorted(known)

    def deployed_models(self) -> dict[str, DeployedModel]:
        """Every known client's deployed model now (client id -> model).

        The subnet of the client's argmax architecture cut from the current
        supernet; BatchNorm statistics are the client's own when it reported
        them for that very model in its last evaluation (see
        :func:`~flwr_pfedrlnas.flower.client.evaluate_subnet`), else the
        supernet's. ``model.build()`` gives a plain ``nn.Module``.
        """
        return {cid: self.deployed.model(cid) for cid in self.known_clients()}

    def save_deployed(self, directory: str | None = None) -> Path:
        """Save :meth:`deployed_models` in ``directory`` (default: ``deployed_dir``).

        Format: :mod:`flwr_pfedrlnas.deployed` (``.npz`` + JSON, atomic
        writes); read back with :func:`flwr_pfedrlnas.deployed.load_deployed`.
        """
        target = directory or self.deployed_dir
        if not target:
            raise ValueError("save_deployed needs a directory: deployed_dir is not set")
        models = self.deployed_models()
        path = save_deployed(target, models)
        log(INFO, "Deployed models of %d clients saved in %s", len(models), path)
        return path


def record_batchnorm_replies(
    store: DeployedModels,
    replies: Iterable[Message],
    node_to_client: Mapping[int, str],
    arrayrecord_key: str = "arrays",
    configrecord_key: str = "config",
) -> None:
    """Keep the BatchNorm statistics that clients re-estimated for their deployed model.

    An evaluate reply's ``arrays`` (when present) holds them, its ``config``
    the architecture tested; unusable statistics are logged and ignored.
    """
    family = store.search.family
    for msg in replies:
        cid = node_to_client.get(msg.metadata.src_node_id)
        if cid is None or msg.has_error():
            continue
        arrays = msg.content.array_records.get(arrayrecord_key)
        config = msg.content.config_records.get(configrecord_key)
        if not arrays or config is None or m.ARCH not in config:
            continue
        try:
            arch = architecture_from_json(str(config[m.ARCH]), family.search_space)
            reason = store.record_batchnorm(cid, arch, m.record_to_arrays(arrays))
        except ValueError as err:
            reason = str(err)
        if reason is not None:
            log(WARNING, "BatchNorm statistics of client %s ignored: %s", cid, reason)

"""A PerFedRLNAS server run in its own process, for the SIGKILL-and-resume test.

``python tests/resume_driver.py CKPT_DIR NUM_ROUNDS [--resume]`` runs the
Message-API strategy through ``LocalGrid`` (real client handlers, real
training, in-process) and checkpoints after every round into ``CKPT_DIR``.
Training is deterministic: each client seeds torch from (client, round) and
uses deterministic algorithms; ``lambda-time=0`` keeps the measured wall time
out of the reward.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import LocalGrid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from flwr_pfedrlnas.core.search import SearchConfig  # noqa: E402
from flwr_pfedrlnas.data.datasets import load_client_data, make_loaders  # noqa: E402
from flwr_pfedrlnas.flower import messages as m  # noqa: E402
from flwr_pfedrlnas.flower.client import evaluate_subnet, identify, train_subnet  # noqa: E402
from flwr_pfedrlnas.flower.strategy import PerFedRLNAS  # noqa: E402
from flwr_pfedrlnas.supernets import get_supernet  # noqa: E402

NODES = {11: {"client-id": "0"}, 22: {"client-id": "1"}, 33: {"client-id": "2"}}
CLIENTS_PER_ROUND = 2


def _loaders(context):
    pid = int(context.node_config["client-id"])
    data = load_client_data("embedded", partition_id=pid, num_partitions=40, alpha=1.0, seed=0)
    return make_loaders(data, batch_size=32, seed=pid)


def _seed(msg, context):
    round_no = int(msg.content["config"].get(m.SERVER_ROUND, 0))
    torch.manual_seed(zlib.crc32(f"{context.node_config['client-id']}/{round_no}".encode()))


def _train(msg, context):
    _seed(msg, context)
    return train_subnet(msg, context, *_loaders(context), device="cpu")


def _evaluate(msg, context):
    _seed(msg, context)
    train_loader, test_loader = _loaders(context)
    return evaluate_subnet(msg, context, test_loader, device="cpu", train_loader=train_loader)


def main() -> None:
    ckpt, num_rounds = sys.argv[1], int(sys.argv[2])
    resume = "--resume" in sys.argv[3:]
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    strategy = PerFedRLNAS(
        get_supernet("elastic-cnn", num_stages=2, base_width=4),
        clients_per_round=CLIENTS_PER_ROUND,
        min_available_nodes=len(NODES),
        search_config=SearchConfig(seed=3, lambda_time=0.0),
        bn_recalibration_batches=2,
        checkpoint_dir=ckpt,
        resume=resume,
    )
    grid = LocalGrid(NODES, {"query": identify, "train": _train, "evaluate": _evaluate})
    strategy.start(grid, num_rounds=num_rounds)
    print(f"done: {strategy.search.completed_rounds} rounds", flush=True)


if __name__ == "__main__":
    main()

"""FedorAS's client step: score the candidate subnets of a message on local training batches.

It also defines the candidates message's keys; the server side is
:mod:`.fedoras` (the method is described in ``docs/baselines.md``).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.utils.data import DataLoader

from flwr_pfedrlnas.baselines.nas.client import register_step
from flwr_pfedrlnas.core.cost import ComputeCounter
from flwr_pfedrlnas.core.search_space import architecture_from_json
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.flower.identity import client_id_from_context
from flwr_pfedrlnas.supernets import SupernetFamily, get_supernet
from flwr_pfedrlnas.training import evaluate, recalibrate_batchnorm

__all__ = ["ACCURACIES", "CANDIDATES", "CANDIDATE_BATCHES", "candidate_key", "evaluate_candidates"]

# ConfigRecord keys of a candidates message and the MetricRecord key of its reply.
CANDIDATES = "candidates"
CANDIDATE_BATCHES = "candidate-batches"
ACCURACIES = "accuracies"


def candidate_key(index: int) -> str:
    """Name of the ArrayRecord holding candidate ``index``'s weights."""
    return f"cand-{int(index)}"


@lru_cache(maxsize=16)
def _family(name: str, config_json: str) -> SupernetFamily:
    return get_supernet(name, **json.loads(config_json))


@register_step("evaluate", "candidates")
def evaluate_candidates(
    msg: Message,
    context: Context,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device,
) -> Message:
    """Score every candidate subnet of the message on local training batches.

    The first ``candidate-batches`` batches of one pass over the training
    loader are the scoring batches; the following ones (all of them, or
    ``bn-recalibration-batches`` when that is positive; 0: no re-estimation)
    re-estimate each candidate's BatchNorm statistics first. When the loader
    has no batch beyond the scoring ones, the statistics are re-estimated on
    the scoring batches. Every candidate sees the same batches. The test
    split is never used. The reply's metrics: ``accuracies`` (one per
    candidate, in order), ``num-examples`` (scored examples) and
    ``compute-seconds``.
    """
    start = time.perf_counter()
    config = msg.content["config"]
    for key in (CANDIDATES, m.SUPERNET, m.SUPERNET_CONFIG):
        if key not in config:
            raise ValueError(f"config lacks {key!r}")
    family = _family(str(config[m.SUPERNET]), str(config[m.SUPERNET_CONFIG]))
    candidates = config[CANDIDATES]
    if isinstance(candidates, str):
        candidates = [candidates]
    archs = [architecture_from_json(str(a), family.search_space) for a in candidates]
    score_batches = max(1, int(config.get(CANDIDATE_BATCHES, 2)))
    bn_batches = int(config.get(m.BN_RECALIBRATION_BATCHES, -1))
    wanted = None if bn_batches < 0 else score_batches + bn_batches
    batches = []
    for i, batch in enumerate(train_loader):
        if wanted is not None and i >= wanted:
            break
        batches.append(batch)
    scoring, recalibration = batches[:score_batches], batches[score_batches:]
    if not recalibration:
        recalibration = scoring
    with ComputeCounter() as counted:  # MACs of the work timed (modelled latency)
        accuracies, num_examples = [], 0
        for i, arch in enumerate(archs):
            model = family.build_subnet(arch)
            model.load_state_dict(msg.content[candidate_key(i)].to_torch_state_dict(), strict=True)
            if bn_batches != 0:
                recalibrate_batchnorm(model, recalibration, None, device)
            _, accuracy, num_examples = evaluate(model, scoring, device=device)
            accuracies.append(float(accuracy))
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    ACCURACIES: accuracies,
                    m.NUM_EXAMPLES: int(num_examples),
                    m.COMPUTE_SECONDS: time.perf_counter() - start,
                    m.COMPUTE_MACS: int(counted.macs),
                }
            ),
            "config": ConfigRecord({m.CLIENT_ID: client_id_from_context(context)}),
        }
    )
    return Message(content=content, reply_to=msg)

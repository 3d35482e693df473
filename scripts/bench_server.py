"""Server-side cost of PerFedRLNAS against Flower's FedAvg aggregation, and bytes per round.

Measures, in one run and as ratios, the server time of one PerFedRLNAS round
(client sampling, per-client architecture sampling and subnet extraction, the
decoding of the replies' records, then reply validation, rewards, policy updates
and the count-normalised masked merge) against Flower's own FedAvg aggregation
(``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords``, which decodes
too) of the same number of full-size replies, for every supernet family at the
paper size (the family defaults) and at the CPU preset, at 5 to 100 clients per
round; and the peak memory the server allocates in one such round (tracemalloc)
against FedAvg's. Replies are synthetic (the sent subnet plus small seeded noise,
seeded metrics); building them is not timed. Also writes the bytes each method
moves per client and round, from the ``nbytes`` of the arrays sent each way::

    python scripts/bench_server.py                 # results/efficiency/
    python scripts/bench_server.py --quick --out /tmp/bench   # smoke run, seconds
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import datetime as dt
import gc
import math
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

import flwr_pfedrlnas.core.reply_checks as checks_mod
import flwr_pfedrlnas.core.search as search_mod
from flwr_pfedrlnas.core.aggregation import extract_subnet, state_num_bytes
from flwr_pfedrlnas.core.search import ClientReply, PerFedRLNASSearch, SearchConfig
from flwr_pfedrlnas.flower import messages as m
from flwr_pfedrlnas.supernets import SupernetFamily, cpu_preset, get_supernet
from flwr_pfedrlnas.supernets.base import clear_block_shapes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "efficiency"
FAMILIES = ("mobilenetv3", "nasvit", "darts", "elastic-cnn")
CLIENTS_PER_ROUND = (5, 10, 20, 50, 100)
NUM_CLIENTS = 100  # K: clients holding a policy
BYTES_CLIENTS_PER_ROUND = 5
SEED = 0
NOISE_STD = 1e-3
NOISE_SLACK = 4096  # random offsets into the shared noise pool
WEIGHT_KEY = m.NUM_EXAMPLES

SERVER_TIME_COLUMNS = [
    "family",
    "size",
    "clients_per_round",
    "num_clients",
    "rounds_timed",
    "sample_clients_s",
    "propose_s",
    "validate_s",
    "reward_policy_s",
    "merge_s",
    "shape_derivation_s",
    "pfedrlnas_s",
    "decode_s",
    "pfedrlnas_incl_decode_s",
    "encode_s",
    "fedavg_largest_s",
    "fedavg_supernet_s",
    "ratio_vs_fedavg_largest",
    "ratio_vs_fedavg_supernet",
    "ratio_incl_decode_vs_fedavg_largest",
    "ratio_incl_decode_cached_shapes_vs_fedavg_largest",
    "ratio_incl_decode_encode_vs_fedavg_largest",
    "pfedrlnas_wall_s",
    "fedavg_largest_wall_s",
    "ratio_wall_vs_fedavg_largest",
    "peak_memory_pfedrlnas_mb",
    "peak_memory_fedavg_largest_mb",
    "ratio_peak_memory_vs_fedavg_largest",
    "mean_subnet_mb",
    "largest_subnet_mb",
    "supernet_mb",
]
POSITIVE_COLUMNS = [
    "propose_s",
    "validate_s",
    "merge_s",
    "pfedrlnas_s",
    "decode_s",
    "pfedrlnas_incl_decode_s",
    "fedavg_largest_s",
    "fedavg_supernet_s",
    "ratio_vs_fedavg_largest",
    "ratio_vs_fedavg_supernet",
    "ratio_incl_decode_vs_fedavg_largest",
    "ratio_wall_vs_fedavg_largest",
    "peak_memory_pfedrlnas_mb",
    "peak_memory_fedavg_largest_mb",
]
SHAPE_COLUMNS = [
    "family",
    "size",
    "architectures",
    "subnet_keys",
    "meta_build_ms",
    "blocks_cold_ms",
    "blocks_warm_ms",
    "speedup_cold",
    "speedup_warm",
]
BYTES_COLUMNS = [
    "family",
    "size",
    "method",
    "down_bytes_per_client",
    "up_bytes_per_client",
    "bytes_per_client_round",
    "clients_per_round",
    "bytes_per_round",
    "ratio_vs_fedavg_largest",
]


# --------------------------------------------------------------------------- setup
@dataclass
class Setting:
    """One benchmark configuration."""

    sizes: tuple[str, ...]
    clients_per_round: tuple[int, ...]
    num_clients: int
    max_reps: int
    client_round_budget: int  # reps at a point = clamp(budget // N, 1, max_reps)
    warmup: bool = True
    quick: bool = False
    shape_archs: int = 30  # new architectures per shape-derivation measure


FULL = Setting(
    sizes=("paper", "cpu"),
    clients_per_round=CLIENTS_PER_ROUND,
    num_clients=NUM_CLIENTS,
    max_reps=3,
    client_round_budget=40,
)
QUICK = Setting(
    sizes=("cpu",),
    clients_per_round=(1, 2),
    num_clients=2,
    max_reps=1,
    client_round_budget=2,
    warmup=False,
    quick=True,
    shape_archs=3,
)


def family_knobs(name: str, size: str) -> dict[str, Any]:
    """Paper size = the family defaults; CPU = :func:`cpu_preset`."""
    return {} if size == "paper" else cpu_preset(name)


def reps_at(setting: Setting, n: int) -> int:
    return max(1, min(setting.max_reps, setting.client_round_budget // n))


# --------------------------------------------------------------------------- timers
@dataclass
class Clock:
    """Seconds accumulated per part while a round runs."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


# Server CPU seconds (this process): robust to other jobs sharing the machine, and the
# work timed here is single-threaded. Wall seconds of the totals are kept beside them.
cpu_now = time.process_time
wall_now = time.perf_counter


def _timed(fn: Callable, clock: Clock, part: str) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = cpu_now()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(part, cpu_now() - t0)

    return wrapper


@contextmanager
def instrumented(family: SupernetFamily, clock: Clock) -> Iterator[None]:
    """Time the validation and the merge inside ``incorporate``, and shape derivation.

    Wraps the names that :mod:`flwr_pfedrlnas.core.search` and
    :mod:`flwr_pfedrlnas.core.reply_checks` call (and the family's shape cache, whose
    misses derive the shapes of a new architecture) for the duration of the block;
    nothing else changes.
    """
    saved = [
        (checks_mod, "check_subnet_state", "validate"),
        (search_mod, "merge_subnets", "merge"),
    ]
    originals = [getattr(module, name) for module, name, _ in saved]
    for (module, name, label), fn in zip(saved, originals):
        setattr(module, name, _timed(fn, clock, label))
    family._cached_shapes = _timed(type(family)._cached_shapes.__get__(family), clock, "shapes")
    try:
        yield
    finally:
        for (module, name, _), fn in zip(saved, originals):
            setattr(module, name, fn)
        del family._cached_shapes


# --------------------------------------------------------------------------- replies
class ReplyMaker:
    """Seeded synthetic replies: the sent state plus small noise, seeded metrics."""

    def __init__(self, max_numel: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = (self.rng.standard_normal(max_numel + NOISE_SLACK) * NOISE_STD).astype(
            np.float32
        )

    def perturb(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key, value in state.items():
            if value.dtype.kind == "f":
                off = int(self.rng.integers(0, NOISE_SLACK))
                noise = self.pool[off : off + value.size].reshape(value.shape)
                out[key] = (value + noise.astype(value.dtype, copy=False)).astype(value.dtype)
            elif value.dtype.kind in "iu":
                out[key] = value + np.asarray(int(self.rng.integers(1, 50)), dtype=value.dtype)
            else:
                out[key] = value.copy()
        return out

    def metrics(self) -> dict[str, float | int]:
        return {
            m.NUM_EXAMPLES: int(self.rng.integers(50, 500)),
            m.ACCURACY: float(self.rng.uniform(0.1, 0.9)),
            m.COMPUTE_SECONDS: float(self.rng.uniform(5.0, 60.0)),
        }


def fedavg_records(state: dict[str, np.ndarray], n: int, maker: ReplyMaker) -> list[RecordDict]:
    """``n`` FedAvg replies as Flower sends them: an ArrayRecord and a MetricRecord."""
    records = []
    for _ in range(n):
        metrics = maker.metrics()
        records.append(
            RecordDict(
                {
                    "arrays": m.arrays_to_record(maker.perturb(state)),
                    "metrics": MetricRecord({WEIGHT_KEY: metrics[WEIGHT_KEY]}),
                }
            )
        )
    return records


# --------------------------------------------------------------------------- rounds
@dataclass
class RoundTiming:
    sample_clients: float
    propose: float
    decode: float
    encode: float
    incorporate: float
    validate: float
    merge: float
    shapes: float
    wall: float

    @property
    def total(self) -> float:
        return self.sample_clients + self.propose + self.incorporate

    @property
    def with_decode(self) -> float:
        """The headline: the whole server round, decoding the replies included."""
        return self.total + self.decode


def _wire_replies(
    proposals: Sequence[Any], maker: ReplyMaker
) -> list[tuple[str, ArrayRecord, MetricRecord]]:
    """What the clients send back, as Flower delivers it (records; built untimed)."""
    return [
        (p.client_id, m.arrays_to_record(maker.perturb(p.state)), MetricRecord(maker.metrics()))
        for p in proposals
    ]


def _decode(
    core: PerFedRLNASSearch, wire: list[tuple[str, ArrayRecord, MetricRecord]]
) -> list[ClientReply]:
    """The strategy's decoding of each reply (``reply_from_records``, as ``_parse`` calls it)."""
    return [m.reply_from_records(cid, rec, met, None, core.family) for cid, rec, met in wire]


def pfedrlnas_round(
    core: PerFedRLNASSearch,
    client_ids: Sequence[str],
    n: int,
    server_round: int,
    maker: ReplyMaker,
    subnet_bytes: list[int],
) -> RoundTiming:
    """One timed PerFedRLNAS round with synthetic replies (their construction untimed)."""
    clock = Clock()
    with instrumented(core.family, clock):
        gc.collect()
        w0, t0 = wall_now(), cpu_now()
        sampled = core.sample_clients(client_ids, n)
        t1 = cpu_now()
        proposals = [core.propose(cid) for cid in sampled]
        t2, w2 = cpu_now(), wall_now()
        shapes_propose = clock.parts.pop("shapes", 0.0)
        # Timed apart (not in the round's total): the strategy's encoding of what it sends.
        e0 = cpu_now()
        sent = [m.arrays_to_record(p.state) for p in proposals]
        encode_down = cpu_now() - e0
        del sent

        subnet_bytes.extend(p.bytes_down for p in proposals)
        wire = _wire_replies(proposals, maker)
        del proposals
        gc.collect()

        w3, t3 = wall_now(), cpu_now()
        replies = _decode(core, wire)
        t4 = cpu_now()
        outcome = core.incorporate(server_round, replies)
        t5, w5 = cpu_now(), wall_now()
        del replies, wire
        e0 = cpu_now()
        m.arrays_to_record(core.supernet)  # what aggregate_train returns to Flower
        encode = encode_down + cpu_now() - e0
    if outcome.rejected:
        raise RuntimeError(f"synthetic replies rejected: {outcome.rejected}")
    return RoundTiming(
        sample_clients=t1 - t0,
        propose=t2 - t1,
        decode=t4 - t3,
        encode=encode,
        incorporate=t5 - t4,
        validate=clock.parts.get("validate", 0.0),
        merge=clock.parts.get("merge", 0.0),
        shapes=shapes_propose + clock.parts.get("shapes", 0.0),
        wall=(w2 - w0) + (w5 - w3),
    )


def pfedrlnas_peak_memory(
    core: PerFedRLNASSearch,
    client_ids: Sequence[str],
    n: int,
    server_round: int,
    maker: ReplyMaker,
) -> int:
    """Peak bytes the server allocates in one (untimed) round, traced by tracemalloc.

    Two phases, as the round runs: propose (what stays alive, the pending
    proposals, is carried into the second phase), then decode + incorporate with
    the replies' records already received (they are the input, as FedAvg's are).
    """
    gc.collect()
    tracemalloc.start()
    try:
        sampled = core.sample_clients(client_ids, n)
        proposals = [core.propose(cid) for cid in sampled]
        kept, peak_propose = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        wire = _wire_replies(proposals, maker)
        del proposals
        gc.collect()
        tracemalloc.start()
        outcome = core.incorporate(server_round, _decode(core, wire))
        _, peak_incorporate = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if outcome.rejected:
        raise RuntimeError(f"synthetic replies rejected: {outcome.rejected}")
    return max(peak_propose, kept + peak_incorporate)


def profiled_round(
    core: PerFedRLNASSearch,
    client_ids: Sequence[str],
    n: int,
    server_round: int,
    maker: ReplyMaker,
    top: int = 8,
) -> list[tuple[str, float]]:
    """One round under cProfile (building the replies excluded): the functions with
    the most own time, each with its share of the profiled total."""
    profiler = cProfile.Profile()
    profiler.enable()
    sampled = core.sample_clients(client_ids, n)
    proposals = [core.propose(cid) for cid in sampled]
    profiler.disable()
    wire = _wire_replies(proposals, maker)
    del proposals
    profiler.enable()
    outcome = core.incorporate(server_round, _decode(core, wire))
    profiler.disable()
    if outcome.rejected:
        raise RuntimeError(f"synthetic replies rejected: {outcome.rejected}")
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in stats.values()) or 1.0
    ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    out = []
    for (path, line, func), values in ranked:
        where = func if path == "~" else f"{Path(path).name}:{line} {func}"
        out.append((where, values[2] / total))
    return out


def fedavg_peak_memory(records: list[RecordDict]) -> int:
    """Peak bytes Flower's FedAvg aggregation allocates (tracemalloc), result included."""
    gc.collect()
    tracemalloc.start()
    try:
        aggregate_arrayrecords(records, WEIGHT_KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def fedavg_time(records: list[RecordDict], reps: int) -> tuple[float, float]:
    """Median CPU and wall seconds of Flower's FedAvg aggregation (after a warm-up)."""
    aggregate_arrayrecords(records[:1], WEIGHT_KEY)
    cpu, wall = [], []
    for _ in range(reps):
        gc.collect()
        w0, t0 = wall_now(), cpu_now()
        aggregate_arrayrecords(records, WEIGHT_KEY)
        cpu.append(cpu_now() - t0)
        wall.append(wall_now() - w0)
    return statistics.median(cpu), statistics.median(wall)


# --------------------------------------------------------------------------- benchmark
def _same_shapes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape for k in a)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No automatic garbage collection (as ``timeit``); explicit ones between timings.

    Everything alive on entry (torch, the modules, the supernet) is frozen out of
    the collector, so the explicit ``gc.collect()`` between timed sections is cheap.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


Profile = list[tuple[str, float]]


def bench_family(
    name: str, size: str, setting: Setting, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Profile]:
    """Time every clients-per-round point of one family and size; bytes per method."""
    clear_block_shapes()  # each family starts as a fresh server would: no block seen
    family = get_supernet(name, **family_knobs(name, size))
    core = PerFedRLNASSearch(family, SearchConfig(seed=SEED))
    client_ids = [f"client-{i:03d}" for i in range(setting.num_clients)]
    for cid in client_ids:
        core.policy(cid)  # steady state: every client of the federation has a policy
    largest = extract_subnet(family, core.supernet, family.largest_architecture())
    supernet = core.supernet

    with quiet_gc():
        return _bench_points(name, size, setting, log, family, core, largest, supernet)


def _bench_points(
    name: str,
    size: str,
    setting: Setting,
    log: Callable[[str], None],
    family: SupernetFamily,
    core: PerFedRLNASSearch,
    largest: dict[str, np.ndarray],
    supernet: dict[str, np.ndarray],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Profile]:
    client_ids = [f"client-{i:03d}" for i in range(setting.num_clients)]
    supernet_differs = not _same_shapes(largest, supernet)
    maker = ReplyMaker(max(v.size for v in supernet.values()), SEED + 1)
    subnet_bytes: list[int] = []
    server_round = 1
    if setting.warmup:
        t_warm = time.perf_counter()
        pfedrlnas_round(core, client_ids, min(setting.clients_per_round), server_round, maker, [])
        log(f"{name:12s} {size:5s} warm-up round done ({time.perf_counter() - t_warm:.1f} s)")

    rows = []
    for n in setting.clients_per_round:
        if n > setting.num_clients:
            raise ValueError(f"{n} clients per round > {setting.num_clients} clients")
        t_point = time.perf_counter()
        reps = reps_at(setting, n)
        timings = []
        for _ in range(reps):
            server_round += 1
            timings.append(pfedrlnas_round(core, client_ids, n, server_round, maker, subnet_bytes))
        med = sorted(timings, key=lambda t: t.with_decode)[(len(timings) - 1) // 2]
        decode = med.decode
        server_round += 1
        peak = pfedrlnas_peak_memory(core, client_ids, n, server_round, maker)

        records = fedavg_records(largest, n, maker)
        fedavg_largest, fedavg_largest_wall = fedavg_time(records, reps)
        fedavg_peak = fedavg_peak_memory(records)
        del records
        if supernet_differs:
            records = fedavg_records(supernet, n, maker)
            fedavg_supernet, _ = fedavg_time(records, reps)
            del records
        else:  # the whole supernet is the largest subnet: the same computation
            fedavg_supernet = fedavg_largest
        gc.collect()

        row = {
            "family": name,
            "size": size,
            "clients_per_round": n,
            "num_clients": setting.num_clients,
            "rounds_timed": reps,
            "sample_clients_s": med.sample_clients,
            "propose_s": med.propose,
            "validate_s": med.validate,
            "reward_policy_s": max(med.incorporate - med.validate - med.merge, 0.0),
            "merge_s": med.merge,
            "shape_derivation_s": med.shapes,
            "pfedrlnas_s": med.total,
            "decode_s": decode,
            "pfedrlnas_incl_decode_s": med.with_decode,
            "encode_s": med.encode,
            "fedavg_largest_s": fedavg_largest,
            "fedavg_supernet_s": fedavg_supernet,
            "ratio_vs_fedavg_largest": med.total / fedavg_largest,
            "ratio_vs_fedavg_supernet": med.total / fedavg_supernet,
            "ratio_incl_decode_vs_fedavg_largest": med.with_decode / fedavg_largest,
            "ratio_incl_decode_cached_shapes_vs_fedavg_largest": (
                (med.with_decode - med.shapes) / fedavg_largest
            ),
            "ratio_incl_decode_encode_vs_fedavg_largest": (
                (med.with_decode + med.encode) / fedavg_largest
            ),
            "pfedrlnas_wall_s": med.wall,
            "fedavg_largest_wall_s": fedavg_largest_wall,
            "ratio_wall_vs_fedavg_largest": med.wall / fedavg_largest_wall,
            "peak_memory_pfedrlnas_mb": peak / 1e6,
            "peak_memory_fedavg_largest_mb": fedavg_peak / 1e6,
            "ratio_peak_memory_vs_fedavg_largest": peak / fedavg_peak,
            "mean_subnet_mb": float(np.mean(subnet_bytes)) / 1e6,
            "largest_subnet_mb": state_num_bytes(largest) / 1e6,
            "supernet_mb": state_num_bytes(supernet) / 1e6,
        }
        rows.append(row)
        log(
            f"{name:12s} {size:5s} N={n:3d} reps={reps} "
            f"pfedrlnas incl. decode {med.with_decode:7.3f} s (propose {med.propose:.3f}, "
            f"shapes {med.shapes:.3f}, decode {med.decode:.3f}, validate {med.validate:.3f}, "
            f"merge {med.merge:.3f}) | fedavg {fedavg_largest:.3f} s | "
            f"ratio {row['ratio_incl_decode_vs_fedavg_largest']:.2f} | "
            f"peak {peak / 1e6:.1f} vs {fedavg_peak / 1e6:.1f} MB "
            f"[{time.perf_counter() - t_point:.1f} s]"
        )
    # Where the time goes, at the largest N: one more round under cProfile.
    n_max = max(setting.clients_per_round)
    profile = profiled_round(core, client_ids, n_max, server_round + 1, maker)
    return rows, bytes_rows(name, size, family, subnet_bytes, largest, supernet), profile


def bytes_rows(
    name: str,
    size: str,
    family: SupernetFamily,
    subnet_bytes: Sequence[int],
    largest: dict[str, np.ndarray],
    supernet: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Bytes each method sends each way per client (array ``nbytes``), and per round."""
    # FedNAS also exchanges its architecture weights: one float32 logit per choice of
    # every dimension (for DARTS: 2 cell types x edges x operations).
    num_logits = sum(len(d.choices) for d in family.search_space.dimensions)
    alpha_bytes = num_logits * np.dtype(np.float32).itemsize
    sub = float(np.mean(subnet_bytes))
    methods = [
        ("PerFedRLNAS (sampled subnet)", sub, sub),
        ("FedAvg (largest subnet)", state_num_bytes(largest), state_num_bytes(largest)),
        ("SPIDER (whole supernet)", state_num_bytes(supernet), state_num_bytes(supernet)),
        (
            "FedNAS (whole supernet + architecture weights)",
            state_num_bytes(supernet) + alpha_bytes,
            state_num_bytes(supernet) + alpha_bytes,
        ),
    ]
    ref = 2 * state_num_bytes(largest)
    n = BYTES_CLIENTS_PER_ROUND
    return [
        {
            "family": name,
            "size": size,
            "method": method,
            "down_bytes_per_client": down,
            "up_bytes_per_client": up,
            "bytes_per_client_round": down + up,
            "clients_per_round": n,
            "bytes_per_round": n * (down + up),
            "ratio_vs_fedavg_largest": (down + up) / ref,
        }
        for method, down, up in methods
    ]


def shape_derivation_row(name: str, size: str, num_archs: int, seed: int = SEED) -> dict[str, Any]:
    """CPU milliseconds per new architecture to derive its shapes, three ways, one run.

    ``meta_build``: the generic path (``SupernetFamily.derive_subnet_shapes``, the
    whole subnet built on the meta device); ``blocks_cold``: the family's own
    derivation with no block's shapes kept yet (each new block built once on the
    meta device); ``blocks_warm``: the family's own derivation on ``num_archs``
    further new architectures, the blocks seen so far kept (a server some rounds
    in). Every result is checked against the generic one. Fresh family instances,
    so that no architecture is cached.
    """
    knobs = family_knobs(name, size)
    rng = np.random.default_rng(seed + 7)
    probe = get_supernet(name, **knobs)
    space = probe.search_space
    first = [space.validate(space.sample(rng)) for _ in range(num_archs)]
    second = [space.validate(space.sample(rng)) for _ in range(num_archs)]

    def per_arch(derive: Callable[[Any], dict], archs: list[Any]) -> tuple[float, list[dict]]:
        gc.collect()
        t0 = cpu_now()
        out = [derive(a) for a in archs]
        return (cpu_now() - t0) / len(archs) * 1e3, out

    generic_family = get_supernet(name, **knobs)
    meta_ms, reference = per_arch(
        lambda a: SupernetFamily.derive_subnet_shapes(generic_family, a), first
    )
    clear_block_shapes()
    fast_family = get_supernet(name, **knobs)
    cold_ms, fast = per_arch(fast_family.derive_subnet_shapes, first)
    warm_ms, fast_second = per_arch(fast_family.derive_subnet_shapes, second)
    for ref, got in zip(reference, fast):
        assert list(ref.items()) == list(got.items()), (name, size)
    for arch, got in zip(second, fast_second):
        ref = SupernetFamily.derive_subnet_shapes(generic_family, arch)
        assert list(ref.items()) == list(got.items()), (name, size)
    return {
        "family": name,
        "size": size,
        "architectures": num_archs,
        "subnet_keys": float(np.mean([len(r) for r in reference])),
        "meta_build_ms": meta_ms,
        "blocks_cold_ms": cold_ms,
        "blocks_warm_ms": warm_ms,
        "speedup_cold": meta_ms / cold_ms,
        "speedup_warm": meta_ms / warm_ms,
    }


def shape_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`shape_derivation_row` results."""
    lines = [
        "| Family | Size | New architectures | Keys (mean) | Meta-device build, ms | "
        "Blocks, none kept, ms | Blocks, kept, ms | Speed-up (none kept) | "
        "Speed-up (kept) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['family']}` | {r['size']} | {r['architectures']} | {r['subnet_keys']:.0f} "
            f"| {r['meta_build_ms']:.2f} | {r['blocks_cold_ms']:.2f} | "
            f"{r['blocks_warm_ms']:.3f} | {r['speedup_cold']:.0f}x | {r['speedup_warm']:.0f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- outputs
def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (f"{v:.6g}" if isinstance(v, float) else v)
                    for k, v in row.items()
                    if k in columns
                }
            )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {
        "mobilenetv3": "tab:blue",
        "nasvit": "tab:orange",
        "darts": "tab:green",
        "elastic-cnn": "tab:purple",
    }
    styles = {"paper": "-", "cpu": "--"}
    for (name, size), group in _groups(rows).items():
        xs = [r["clients_per_round"] for r in group]
        ax.plot(
            xs,
            [r["ratio_incl_decode_vs_fedavg_largest"] for r in group],
            styles.get(size, "-"),
            marker="o",
            color=colors.get(name),
            label=f"{name} ({size}) vs FedAvg, largest subnet",
        )
        if any(r["fedavg_supernet_s"] != r["fedavg_largest_s"] for r in group):
            ax.plot(
                xs,
                [r["pfedrlnas_incl_decode_s"] / r["fedavg_supernet_s"] for r in group],
                styles.get(size, "-"),
                marker="x",
                alpha=0.5,
                color=colors.get(name),
                label=f"{name} ({size}) vs FedAvg, whole supernet",
            )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = sorted({r["clients_per_round"] for r in rows})
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("clients per round")
    ax.set_ylabel("server time per round incl. decoding: PerFedRLNAS / FedAvg")
    ax.set_title("PerFedRLNAS server time relative to Flower's FedAvg aggregation")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["family"], r["size"]), []).append(r)
    return out


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def time_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| Family | Size | N | Rounds | Propose (sample+extract) | Decode | Validate "
        "| Reward+policy | Merge | Of which shapes | **PerFedRLNAS incl. decode** "
        "| FedAvg largest | **Ratio incl. decode** | Ratio, shapes cached | Ratio w/o decode "
        "| Ratio incl. encode | Ratio vs supernet | Wall-clock ratio | Peak MB | FedAvg peak MB "
        "| Peak ratio |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        same = r["fedavg_supernet_s"] == r["fedavg_largest_s"]
        vs_super = "—" if same else f"{r['pfedrlnas_incl_decode_s'] / r['fedavg_supernet_s']:.2f}x"
        lines.append(
            f"| `{r['family']}` | {r['size']} | {r['clients_per_round']} | {r['rounds_timed']} "
            f"| {_ms(r['sample_clients_s'] + r['propose_s'])} | {_ms(r['decode_s'])} "
            f"| {_ms(r['validate_s'])} | {_ms(r['reward_policy_s'])} | {_ms(r['merge_s'])} "
            f"| {_ms(r['shape_derivation_s'])} | **{_ms(r['pfedrlnas_incl_decode_s'])}** "
            f"| {_ms(r['fedavg_largest_s'])} "
            f"| **{r['ratio_incl_decode_vs_fedavg_largest']:.2f}x** "
            f"| {r['ratio_incl_decode_cached_shapes_vs_fedavg_largest']:.2f}x "
            f"| {r['ratio_vs_fedavg_largest']:.2f}x "
            f"| {r['ratio_incl_decode_encode_vs_fedavg_largest']:.2f}x "
            f"| {vs_super} "
            f"| {r['ratio_wall_vs_fedavg_largest']:.2f}x "
            f"| {r['peak_memory_pfedrlnas_mb']:.1f} | {r['peak_memory_fedavg_largest_mb']:.1f} "
            f"| {r['ratio_peak_memory_vs_fedavg_largest']:.2f}x |"
        )
    return "\n".join(lines)


def bytes_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Family | Size | Method | Down / client | Up / client | Per client-round "
        f"| Per round ({BYTES_CLIENTS_PER_ROUND} clients) | vs FedAvg largest |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['family']}` | {r['size']} | {r['method']} "
            f"| {_fmt_bytes(r['down_bytes_per_client'])} | {_fmt_bytes(r['up_bytes_per_client'])} "
            f"| {_fmt_bytes(r['bytes_per_client_round'])} | {_fmt_bytes(r['bytes_per_round'])} "
            f"| {r['ratio_vs_fedavg_largest']:.2f} |"
        )
    return "\n".join(lines)


_PARTS = {
    "propose (without shapes)": lambda r: max(
        r["sample_clients_s"] + r["propose_s"] - r["shape_derivation_s"], 0.0
    ),
    "deriving shapes of new architectures": lambda r: r["shape_derivation_s"],
    "decode": lambda r: r["decode_s"],
    "validate": lambda r: r["validate_s"],
    "reward+policy": lambda r: r["reward_policy_s"],
    "merge": lambda r: r["merge_s"],
}


def _profile(r: dict[str, Any]) -> str:
    """The round's parts, largest first, as shares of the round incl. decoding."""
    total = r["pfedrlnas_incl_decode_s"]
    parts = sorted(((f(r), name) for name, f in _PARTS.items()), reverse=True)
    return ", ".join(f"{name} {value / total:.0%}" for value, name in parts[:3])


def reading(rows: list[dict[str, Any]], byte_rows: list[dict[str, Any]]) -> str:
    """Figures-driven reading of the tables (regenerated with every run)."""
    out = []
    for (name, size), group in _groups(rows).items():
        ratios = [r["ratio_incl_decode_vs_fedavg_largest"] for r in group]
        above = [r for r in group if r["ratio_incl_decode_vs_fedavg_largest"] > 1.0]
        points = ", ".join(
            f"{r['ratio_incl_decode_vs_fedavg_largest']:.2f}x at N = {r['clients_per_round']}"
            for r in group
        )
        text = (
            f"- `{name}` ({size}): the PerFedRLNAS round incl. decoding takes {points} "
            f"of FedAvg's aggregation of the largest subnet ({min(ratios):.2f}x to "
            f"{max(ratios):.2f}x); "
        )
        if not above:
            text += "at most 1.0x at every point."
        else:
            text += (
                f"{len(above)} of {len(group)} points above 1.0x. Where the time goes there: "
                + "; ".join(
                    f"N = {r['clients_per_round']}: {_profile(r)} (with the shapes cached, as "
                    f"for architectures seen before: "
                    f"{r['ratio_incl_decode_cached_shapes_vs_fedavg_largest']:.2f}x)"
                    for r in above
                )
                + "."
            )
        peak = [r["ratio_peak_memory_vs_fedavg_largest"] for r in group]
        text += (
            f" Peak memory of the round {min(peak):.2f}x to {max(peak):.2f}x FedAvg's "
            f"({group[-1]['peak_memory_pfedrlnas_mb']:.1f} MB against "
            f"{group[-1]['peak_memory_fedavg_largest_mb']:.1f} MB at "
            f"N = {group[-1]['clients_per_round']})."
        )
        out.append(text)
    for (name, size), group in _groups(byte_rows).items():
        by = {r["method"].split(" ")[0]: r for r in group}
        p, f, s = by["PerFedRLNAS"], by["FedAvg"], by["SPIDER"]
        out.append(
            f"- Bytes, `{name}` ({size}): PerFedRLNAS moves "
            f"{_fmt_bytes(p['bytes_per_client_round'])} per client and round, "
            f"{p['ratio_vs_fedavg_largest']:.2f}x FedAvg on the largest "
            f"subnet ({_fmt_bytes(f['bytes_per_client_round'])}) and "
            f"{p['bytes_per_client_round'] / s['bytes_per_client_round']:.2f}x a whole-supernet "
            f"method ({_fmt_bytes(s['bytes_per_client_round'])})."
        )
    return "\n".join(out)


def profile_section(profiles: dict[tuple[str, str], Profile]) -> str:
    """The cProfile of one round per family and size (own time, largest first)."""
    lines = [
        "One more round per family and size at the largest N, under cProfile (the "
        "replies' construction excluded): the functions with the most own time, as "
        "shares of the profiled round. numpy's ufuncs do not appear as functions of "
        "their own: their time is the own time of the function that calls them "
        "(`_add_part`, `_merge_small` and `_finish` are the merge's arithmetic, "
        "`_all_finite` the finiteness check; `torch.nn` module constructors, "
        "`__setattr__` and `state_dict` are the meta-device builds of blocks not seen "
        "before, from which the shapes of new architectures are derived). cProfile "
        "slows Python calls, so the Python-heavy parts (meta-device builds: `torch.nn` "
        "module constructors) weigh more here than in the timed rounds.",
        "",
    ]
    for (name, size), profile in profiles.items():
        parts = "; ".join(f"`{where}` {share:.0%}" for where, share in profile)
        lines.append(f"- `{name}` ({size}): {parts}.")
    return "\n".join(lines)


SHAPES_HOW = (
    "CPU milliseconds per architecture not seen before to derive its subnet's tensor "
    'shapes (what "of which shapes" times inside the round), measured apart on '
    "fresh family instances: the generic path (`SupernetFamily.derive_subnet_shapes`, "
    "the whole subnet built on PyTorch's meta device, still what a family without "
    "its own derivation gets) against the family's own `derive_subnet_shapes`, "
    "which concatenates the cached shapes of its blocks (`block_shapes`: each "
    "distinct block configuration built once on the meta device), first with no "
    'block kept ("none kept": the first architectures of a run), then on as many '
    'further new architectures with the blocks seen so far kept ("kept"). Each '
    "result is checked against the generic one (same keys, order and shapes)."
)


README_TEMPLATE = """# Server efficiency: PerFedRLNAS against Flower's FedAvg

What the PerFedRLNAS server costs per round compared with Flower's own FedAvg
aggregation, how much memory it takes, and how many bytes each method moves per
round.

Generated on {date} with

```
{command}
```

(seed {seed}; {machine}; Python {python}, numpy {numpy}, flwr {flwr}; whole run
{wall:.0f} s). Files: [`server_time.csv`](server_time.csv),
[`bytes.csv`](bytes.csv), [`server_time.png`](server_time.png); the stages
before and after the issue-16 changes: [`before-after.md`](before-after.md).

## What is measured

- **PerFedRLNAS, one server round** (`PerFedRLNASSearch`, the code the Flower
  strategy runs, plus the strategy's decoding of the replies), everything the
  server computes in a round: client sampling (`sample_clients`, K = {num_clients}
  clients, every one of them with a policy), per sampled client architecture
  sampling from its policy and subnet extraction (`propose`); the decoding of each
  reply's records (`reply_from_records`, what the strategy's `_parse` calls); then
  `incorporate`: validation of every reply (`check_subnet_state`: keys, shapes,
  dtypes, finiteness), rewards, REINFORCE/Adam policy updates and the
  count-normalised masked merge into the supernet (`merge_subnets`). The parts are
  timed by wrapping the functions `incorporate` calls; "reward+policy" is the rest
  of `incorporate` (metric checks, rewards, policy updates, the copies that make
  the state change atomic). "Of which shapes" is the time spent deriving the tensor
  shapes of architectures not seen before (`SupernetFamily.derive_subnet_shapes`:
  the built-in families concatenate cached per-block shapes, building on PyTorch's
  meta device only blocks not seen before; see "Shape derivation" below); it is
  part of propose.
- **FedAvg**: Flower's own `flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords`
  (what `FedAvg.aggregate_train` calls) on `RecordDict` replies holding an
  `ArrayRecord` and a `MetricRecord` with `num-examples`, for the same number of
  clients. It decodes every `Array` and encodes its result. "Largest" = every client
  returns the family's largest subnet (FedAvg on the largest model); "supernet" =
  every client returns the whole supernet state (what FedNAS/SPIDER-style methods
  average). For `mobilenetv3`, `nasvit` and `elastic-cnn` the supernet *is* the
  largest subnet, so only DARTS has a separate supernet column.
- **The headline ratio** ("Ratio incl. decode") is the PerFedRLNAS round including
  the decoding of the replies over FedAvg's aggregation of the largest subnet,
  measured in the same run, point by point. Beside it: the same with the shapes of
  every sampled architecture already cached ("shapes cached": the round minus the
  meta-device builds, as for architectures seen before, when the policies have
  converged); without decoding (the core alone); and "incl. encode", which adds
  what the strategy also encodes per round: one `ArrayRecord` per sampled client's
  subnet (FedAvg sends one record to all) and the merged supernet's record that
  `aggregate_train` returns (FedAvg's figure includes encoding its result).
- **Peak memory** is measured with `tracemalloc` (Python and numpy allocations of
  the server process), in one extra, untimed round per point: the most memory
  allocated at once during the round (propose, then decode + incorporate, with what
  propose keeps alive carried over), against the peak of one FedAvg aggregation of
  the largest subnet (its result included). The replies' records are the input of
  both and are not counted. Tracing slows Python down, so no timing is taken then.
- **Replies** are synthetic: each client's state is what it was sent plus seeded
  Gaussian noise (std {noise}), `num-examples` in 50..499, `accuracy` in 0.1..0.9,
  `compute-seconds` in 5..60, all seeded. Building them is not timed.
- **Repetitions**: one untimed warm-up round per family and size (none with
  `--quick`), then at each point the median (by the headline time) of
  `clamp({budget} // N, 1, {max_reps})` rounds ({reps_list}), fewer at large N
  to keep the whole run short on the 2-core machine; the "Rounds" column gives
  the count. FedAvg: the median of as many calls, after a warm-up call on one
  reply. The machine is shared with other jobs, so single figures carry noise of
  some tens of percent; the ratios are taken in one run, point by point.
- **Sizes**: paper = the family defaults (`mobilenetv3`: OFA MobileNetV3-Large
  space, 5 stages, 224x224; `nasvit`: the full NASViT table; `darts`: 16 initial
  channels, 8 cells, the 8 DARTS operations; `elastic-cnn`: the small example
  family's defaults); CPU = `flwr_pfedrlnas.supernets.cpu_preset`.
- **Bytes** are array `nbytes` per transfer: PerFedRLNAS sends the sampled subnet
  down and the client sends the same subnet up (mean over all
  {num_sampled} architectures sampled in the timing runs of each family and size,
  from uniform policies); FedAvg sends the largest subnet each way; SPIDER the
  whole supernet each way; FedNAS the whole supernet plus its architecture weights
  each way (one float32 per choice of every search dimension; for DARTS
  2 x 14 edges x 8 operations). Per round = {bytes_n} clients x (down + up).

Times are CPU milliseconds of the server process per round (median), measured
with `time.process_time`: the timed work is single-threaded, and CPU time is not
inflated when other jobs on the shared machine take the cores, as wall time is.
The wall-clock column gives the headline ratio from wall-clock times
(`time.perf_counter`) for comparison; it moves with the machine's load.

## Server time and memory per round

{time_table}

![ratio](server_time.png)

## Where the time goes

{profile}

## Shape derivation per new architecture

{shapes_how}

{shape_table}

## Bytes per round

{bytes_table}

## Reading

{reading}

Caveats:

- The ratio compares *all* the server work of a PerFedRLNAS round with the
  *aggregation* of FedAvg, the only part of FedAvg's server round that grows with
  the model and the clients (its sampling is a list draw). It answers "how much
  more does the server compute per round", not "how much longer does a round
  take": a round's wall clock is dominated by the clients' training and the
  transfers, seconds to minutes per round, against the server times above.
- Deriving the shapes of a new architecture concatenates its blocks' shapes,
  each distinct block built once on PyTorch's meta device and kept (a family
  without its own derivation builds the whole subnet there); the slices are then
  kept for the last 512 architectures (keyed by the architecture's JSON) and
  reused by extraction, validation and the merge.
  With uniform policies, as here, almost every sampled architecture is new, so the
  cache seldom hits; as the policies converge the same architectures recur and the
  "shapes cached" column is the round's cost.
- Extraction hands out read-only views of the supernet (the strategy serialises
  them and drops them; the merge never writes the supernet in place but returns new
  arrays), and the decoded replies are read-only views of the received bytes, so
  neither the N pending subnets nor the N replies are copied. The merge accumulates
  in float64 one tensor at a time, in reused buffers; FedAvg accumulates in the
  arrays' dtype.

## Simulation round time

{round_time}
"""


ROUND_TIME_TABLE = REPO / "results" / "round-time-cpu" / "table.csv"


def round_time_section(table_csv: Path = ROUND_TIME_TABLE) -> str:
    """The simulation round time of PerFedRLNAS against FedAvg on the largest subnet.

    Measured by ``python -m flwr_pfedrlnas.experiments.reproduce round-time-cpu`` (both
    methods through ``flwr run``, one after the other, training rounds only);
    this script only reads that run's ``table.csv``.
    """
    how = (
        "Whole rounds through Flower's simulation engine (sampling, the clients' "
        "training, transfers, the server's work), PerFedRLNAS against FedAvg on the "
        "largest subnet of the same supernet, both run back to back by "
        "`python -m flwr_pfedrlnas.experiments.reproduce round-time-cpu` "
        "(settings and commands in [its table](../round-time-cpu/table.md))."
    )
    if not table_csv.is_file():
        return how + f" Not measured yet: `{table_csv}` is missing."
    import pandas as pd

    table = pd.read_csv(table_csv).set_index("method")
    if not {"pfedrlnas", "fedavg-largest"} <= set(table.index):
        return how + " Its table lacks one of the two methods."
    p, f = table.loc["pfedrlnas"], table.loc["fedavg-largest"]
    ratio = p["round-wall-seconds"] / f["round-wall-seconds"]
    lines = [
        how,
        "",
        "| Method | Wall s / round (median) | Simulated latency / round (s) | MB moved / round |",
        "|---|---:|---:|---:|",
    ]
    for row in (p, f):
        lines.append(
            f"| {row['label']} | {row['round-wall-seconds']:.1f} "
            f"| {row['latency-total-s'] / row['rounds']:.2f} "
            f"| {row['bytes-per-round'] / 1e6:.2f} |"
        )
    lines += [
        "",
        f"A PerFedRLNAS round takes {ratio:.2f}x the wall time of a FedAvg round on the "
        f"largest subnet ({p['round-wall-seconds']:.1f} s against "
        f"{f['round-wall-seconds']:.1f} s, medians over {int(p['rounds'])} rounds): "
        "its clients train and move sampled subnets, most smaller than the largest.",
    ]
    return "\n".join(lines)


def write_readme(
    out: Path,
    rows: list[dict[str, Any]],
    byte_rows: list[dict[str, Any]],
    shape_rows: list[dict[str, Any]],
    setting: Setting,
    wall: float,
    num_sampled: dict[tuple[str, str], int],
    profiles: dict[tuple[str, str], Profile],
    argv: Sequence[str],
) -> None:
    import flwr

    args = " ".join(shlex.quote(a) for a in argv)
    command = f"python scripts/bench_server.py{(' ' + args) if args else ''}"
    text = README_TEMPLATE.format(
        date=dt.date.today().isoformat(),
        command=command,
        seed=SEED,
        machine=f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.system()})",
        python=platform.python_version(),
        numpy=np.__version__,
        flwr=getattr(flwr, "__version__", "?"),
        wall=wall,
        num_clients=setting.num_clients,
        noise=NOISE_STD,
        max_reps=setting.max_reps,
        budget=setting.client_round_budget,
        reps_list=", ".join(f"{reps_at(setting, n)} at N = {n}" for n in setting.clients_per_round),
        num_sampled=" / ".join(f"{v}" for v in num_sampled.values()),
        bytes_n=BYTES_CLIENTS_PER_ROUND,
        time_table=time_table(rows),
        bytes_table=bytes_table(byte_rows),
        reading=reading(rows, byte_rows),
        profile=profile_section(profiles),
        shapes_how=SHAPES_HOW,
        shape_table=shape_table(shape_rows),
        round_time=round_time_section(),
    )
    (out / "README.md").write_text(text)


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, help="families"
    )
    parser.add_argument("--sizes", nargs="+", default=None, choices=("paper", "cpu"), help="sizes")
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="only the shape derivation per new architecture (shape_derivation.csv/.md)",
    )
    return parser.parse_args(argv)


def write_shapes_only(out: Path, rows: list[dict[str, Any]], argv: Sequence[str]) -> Path:
    """``shape_derivation.md``: the shape-derivation table alone, with its command."""
    args = " ".join(shlex.quote(a) for a in argv)
    path = out / "shape_derivation.md"
    path.write_text(
        "# Shape derivation per new architecture\n\n"
        f"Generated on {dt.date.today().isoformat()} with\n\n```\n"
        f"python scripts/bench_server.py {args}\n```\n\n"
        f"({os.cpu_count()}-core CPU, {platform.machine()}, {platform.system()}; Python "
        f"{platform.python_version()}, torch {torch_version()}.)\n\n"
        f"{SHAPES_HOW}\n\n{shape_table(rows)}\n"
    )
    return path


def torch_version() -> str:
    import torch

    return torch.__version__


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    setting = QUICK if args.quick else FULL
    sizes = tuple(args.sizes) if args.sizes else setting.sizes
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    if args.shapes_only:
        shape_rows = []
        for size in sizes:
            for name in args.families:
                shape_rows.append(shape_derivation_row(name, size, setting.shape_archs))
                log(f"{name:12s} {size:5s} shapes {shape_rows[-1]}")
        paths = {"shapes": out / "shape_derivation.csv"}
        write_csv(paths["shapes"], shape_rows, SHAPE_COLUMNS)
        paths["shapes_md"] = write_shapes_only(out, shape_rows, argv)
        log(f"wrote {', '.join(str(p) for p in paths.values())}")
        return paths

    rows: list[dict[str, Any]] = []
    byte_rows: list[dict[str, Any]] = []
    shape_rows: list[dict[str, Any]] = []
    num_sampled: dict[tuple[str, str], int] = {}
    profiles: dict[tuple[str, str], Profile] = {}
    for size in sizes:
        for name in args.families:
            family_rows, family_bytes, profiles[(name, size)] = bench_family(
                name, size, setting, log
            )
            rows.extend(family_rows)
            byte_rows.extend(family_bytes)
            num_sampled[(name, size)] = sum(
                r["clients_per_round"] * r["rounds_timed"] for r in family_rows
            )
            shape_rows.append(shape_derivation_row(name, size, setting.shape_archs))
    wall = time.perf_counter() - start

    paths = {
        "server_time": out / "server_time.csv",
        "bytes": out / "bytes.csv",
        "shapes": out / "shape_derivation.csv",
        "plot": out / "server_time.png",
        "readme": out / "README.md",
    }
    write_csv(paths["server_time"], rows, SERVER_TIME_COLUMNS)
    write_csv(paths["bytes"], byte_rows, BYTES_COLUMNS)
    write_csv(paths["shapes"], shape_rows, SHAPE_COLUMNS)
    plot(rows, paths["plot"])
    write_readme(out, rows, byte_rows, shape_rows, setting, wall, num_sampled, profiles, argv)
    log(f"wrote {', '.join(str(p) for p in paths.values())} (total {wall:.0f} s)")
    for r in rows:
        assert all(math.isfinite(r[c]) and r[c] > 0 for c in POSITIVE_COLUMNS), r
    return paths


if __name__ == "__main__":
    main()

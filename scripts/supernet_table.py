"""Size table of the built-in supernet families, at a CPU size and at the paper size.

For every family and size: the number of architectures in the search space, the
parameters and multiply-accumulates (MACs) of the smallest and the largest subnet
for one image, and the bytes a client moves per round for each of them against the
whole supernet's bytes. Writes a markdown table and a CSV of the raw numbers::

    python scripts/supernet_table.py --out results/supernets.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from flwr_pfedrlnas.core.aggregation import extract_subnet, state_num_bytes
from flwr_pfedrlnas.core.search_space import Architecture
from flwr_pfedrlnas.supernets import (
    CPU_PRESETS,
    SupernetFamily,
    available_supernets,
    cpu_preset,
    get_supernet,
)

REPO = Path(__file__).resolve().parents[1]
APP_PYPROJECT = REPO / "apps" / "pfedrlnas" / "pyproject.toml"

# Default supernet-config of the app run (apps/pfedrlnas/pyproject.toml); used when
# that file cannot be read (no tomllib before Python 3.11, or the file is missing).
APP_MOBILENETV3_CONFIG: dict[str, Any] = {
    "width_mult": 0.35,
    "num_stages": 4,
    "input_resolution": 32,
    "depth_choices": [1, 2],
    "expand_choices": [3, 4, 6],
}

# Paper-sized knobs: the family defaults with 3 input channels.
PAPER_KNOBS: dict[str, dict[str, Any] | None] = {
    "mobilenetv3": {"in_channels": 3, "input_resolution": 224},
    "nasvit": {"in_channels": 3},
    "darts": {"in_channels": 3, "init_channels": 16, "num_cells": 8},
    "elastic-cnn": None,  # no paper-sized instance
}

FAMILIES = ("mobilenetv3", "nasvit", "darts", "elastic-cnn")
CPU_INPUT = 32  # embedded Fashion-MNIST, padded to 32x32, grayscale
# Paper rows feed a 32x32 CIFAR image: mobilenetv3 resizes it to 224 itself (resize_input,
# as the authors), nasvit to the architecture's resolution, darts runs at 32.
PAPER_INPUT = {"mobilenetv3": 32, "nasvit": 32, "darts": 32}


@dataclass
class Instance:
    """One family at one size, and what the script measured on it."""

    family: str
    size: str  # "CPU" or "paper"
    knobs: dict[str, Any] | None
    input_size: int | None = None  # None: the architecture's own "resolution"
    row: dict[str, Any] = field(default_factory=dict)


def app_mobilenetv3_config() -> dict[str, Any]:
    """The app's default supernet-config, read from its pyproject when possible."""
    try:
        import tomllib

        app = tomllib.loads(APP_PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    except (ImportError, OSError, KeyError):
        return dict(APP_MOBILENETV3_CONFIG)
    if app.get("supernet") != "mobilenetv3":
        raise SystemExit(f"{APP_PYPROJECT}: default supernet is not mobilenetv3")
    return json.loads(app["supernet-config"])


def instances() -> list[Instance]:
    """Every family x size, in table order."""
    cpu = {name: cpu_preset(name) for name in CPU_PRESETS}
    # mobilenetv3's CPU row is the app's run, not the preset.
    cpu["mobilenetv3"] = {**app_mobilenetv3_config(), "in_channels": 1, "num_classes": 10}
    out = []
    for name in FAMILIES:
        out.append(Instance(name, "CPU", cpu[name], CPU_INPUT))
        out.append(Instance(name, "paper", PAPER_KNOBS[name], PAPER_INPUT.get(name)))
    return out


# ---------------------------------------------------------------------- measuring
def count_params(model: torch.nn.Module) -> int:
    """Parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward (FLOPs / 2 as counted by FlopCounterMode)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def input_for(family: SupernetFamily, inst: Instance, arch: Architecture) -> torch.Tensor:
    """One image at the instance's input size (or the architecture's resolution)."""
    size = inst.input_size if inst.input_size is not None else int(arch["resolution"])
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, family.config["in_channels"], size, size, generator=generator)


def measure(inst: Instance) -> None:
    """Fill ``inst.row`` with the raw numbers of one family at one size."""
    family = get_supernet(inst.family, **inst.knobs)
    space = family.search_space
    supernet = family.init_supernet_state(seed=0)
    supernet_bytes = state_num_bytes(supernet)
    row: dict[str, Any] = {
        "family": inst.family,
        "size": inst.size,
        "knobs": json.dumps(family.config, sort_keys=True),
        "num_dimensions": len(space),
        "num_architectures": space.num_architectures(),
        "supernet_params": count_params(family.build_supernet()),
        "supernet_bytes": supernet_bytes,
    }
    for which, arch in (
        ("smallest", family.smallest_architecture()),
        ("largest", family.largest_architecture()),
    ):
        model = family.build_subnet(arch)
        x = input_for(family, inst, arch)
        state = extract_subnet(family, supernet, arch)
        one_way = state_num_bytes(state)
        own = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        if own != one_way:  # the subnet's own state is exactly what is sent
            raise RuntimeError(f"{inst.family}: extracted {one_way} B, subnet has {own} B")
        row[f"{which}_input"] = "x".join(str(d) for d in x.shape)
        row[f"{which}_params"] = count_params(model)
        row[f"{which}_macs"] = count_macs(model, x)
        row[f"{which}_bytes_one_way"] = one_way
        row[f"{which}_bytes_round"] = 2 * one_way
    row["largest_over_supernet"] = row["largest_bytes_one_way"] / supernet_bytes
    inst.row = row


# ---------------------------------------------------------------------- formatting
def _sig(value: float) -> str:
    """Three significant digits, no exponent."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def human_count(n: int) -> str:
    """1234 -> '1.23 K', 5_600_000 -> '5.60 M' (powers of 1000)."""
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= factor:
            return f"{_sig(n / factor)} {unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """Bytes in KB / MB (powers of 1000)."""
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= factor:
            return f"{_sig(n / factor)} {unit}"
    return f"{n} B"


def _sci(value: float) -> str:
    """1.9e25 rather than 1.9e+25."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def human_architectures(family: SupernetFamily, n: int) -> str:
    """Exact below 10^10; otherwise scientific (as k^d when all dimensions have k choices)."""
    if n < 10**10:
        return f"{n:,}"
    counts = {len(d) for d in family.search_space}
    if len(counts) == 1:
        return f"{counts.pop()}^{len(family.search_space)} ≈ {_sci(n)}"
    return f"≈ {_sci(n)}"


COLUMNS = (
    "Family",
    "Size",
    "Architectures",
    "Smallest params",
    "Smallest MACs",
    "Largest params",
    "Largest MACs",
    "Bytes/round smallest",
    "Bytes/round largest",
    "Supernet bytes",
    "Largest/supernet",
)


def table_row(inst: Instance) -> list[str]:
    """One markdown row ("—" everywhere for an instance that does not exist)."""
    if not inst.row:
        return [f"`{inst.family}`", inst.size] + ["—"] * (len(COLUMNS) - 2)
    r = inst.row
    family = get_supernet(inst.family, **inst.knobs)
    return [
        f"`{inst.family}`",
        inst.size,
        human_architectures(family, r["num_architectures"]),
        human_count(r["smallest_params"]),
        human_count(r["smallest_macs"]),
        human_count(r["largest_params"]),
        human_count(r["largest_macs"]),
        human_bytes(r["smallest_bytes_round"]),
        human_bytes(r["largest_bytes_round"]),
        human_bytes(r["supernet_bytes"]),
        f"{r['largest_over_supernet']:.2f}",
    ]


def markdown(rows: list[Instance], command: str, runtime_s: float) -> str:
    """The whole results file."""
    lines = [
        "# Supernet families: search space, subnet cost and communication",
        "",
        "Size of every built-in supernet family at a CPU size (the instances the app and "
        "the tests run) and at the paper size: how many architectures the search space "
        "holds, what the smallest and the largest subnet cost for one image, and how many "
        "bytes a client moves per round for each compared with the whole supernet.",
        "",
        f"Generated on {dt.date.today().isoformat()} with `{command}` "
        f"(torch {torch.__version__}, CPU, {runtime_s:.0f} s).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(table_row(inst)) + " |" for inst in rows]
    lines += [
        "",
        "## Notes",
        "",
        "- **Instances.** CPU: 1 input channel, 32x32 images (the embedded Fashion-MNIST "
        "data), 10 classes; `mobilenetv3` uses the default `supernet-config` of "
        "`apps/pfedrlnas/pyproject.toml`, the others their "
        "CPU presets (`flwr_pfedrlnas.supernets.CPU_PRESETS`). Paper: the family defaults "
        "with 3 input channels and 10 classes — `mobilenetv3` at 224x224 (OFA's "
        "MobileNetV3-Large space, 5 stages), "
        "`nasvit` with NASViT's own search space and blocks (resolutions 192-288; its "
        "supernet config: conv kernels 3/5, 3/5, 3; transformer depths up to 5, 8, 7, 5 "
        "blocks after the downsampling MBConv, whose expand ratio is searched; MLP ratio 1, "
        "4x values with a depthwise conv, relative position bias, layer scale; see "
        "`flwr_pfedrlnas.supernets.nasvit`), `darts` on 32x32 CIFAR with "
        "`init_channels` 16 and 8 cells. `elastic-cnn` has no paper size (—). The knobs of "
        "every instance are in the CSV.",
        "- **Smallest / largest** are the family's `smallest_architecture()` and "
        "`largest_architecture()`: the first / last choice of every dimension for the "
        "elastic families, for which the supernet is the largest architecture (so "
        "largest/supernet is 1). DARTS is path-wise: the largest subnet is `sep_conv_5x5` "
        "on every edge and the smallest is `none` everywhere (only the stem and the "
        "classifier remain); the supernet holds all 8 operations of every edge, so even "
        "the largest subnet is a fraction of it.",
        "- **Architectures** is the product of the choice counts of the dimensions "
        "(for DARTS: 8 operations on each of 14 normal and 14 reduction edges).",
        "- **Params** count parameters only (no buffers). **MACs** are FLOPs / 2 from "
        "`torch.utils.flop_counter.FlopCounterMode` on one real forward of one image, in "
        "eval mode under `torch.no_grad()`. It counts convolutions (depthwise and "
        "squeeze-excitation included), linear layers and matrix products — for NASViT that "
        "includes the attention matmuls (QK^T, attention x V) and the talking-heads mixers; "
        "BatchNorm, LayerNorm, activations, softmax, pooling, residual additions, the "
        "relative position bias lookup and the resize are not counted.",
        "- **Input.** CPU rows feed a 1x1x32x32 image; the smallest CPU `nasvit` subnet "
        "resizes it to its resolution 24 itself. Paper rows feed a 1x3x32x32 CIFAR image, "
        "as the paper-scale runs do: `mobilenetv3` resizes it to 224x224 itself "
        "(`resize_input`, bilinear, as the authors feed CIFAR to MobileNetV3), `nasvit` to "
        "the architecture's resolution (bicubic, as NASViT): 192x192 for the smallest, "
        "288x288 for the largest; `darts` runs at 32x32.",
        "- **Bytes** are the `nbytes` of the extracted subnet state "
        "(`flwr_pfedrlnas.core.aggregation.extract_subnet` / `state_num_bytes`): float32 "
        "weights plus BatchNorm buffers (running mean/var float32, `num_batches_tracked` "
        "int64), i.e. the payload of one transfer. A round sends the subnet down and back "
        "up, so bytes/round = 2 x one way. **Supernet bytes** is the state of "
        "`build_supernet()` (one copy, one way); largest/supernet compares one-way "
        "sizes. Units are powers of 1000 (KB = 10^3 B, MB = 10^6 B; K/M/G likewise).",
        "",
    ]
    return "\n".join(lines)


CSV_FIELDS = (
    "family",
    "size",
    "num_architectures",
    "num_dimensions",
    "smallest_input",
    "smallest_params",
    "smallest_macs",
    "largest_input",
    "largest_params",
    "largest_macs",
    "smallest_bytes_one_way",
    "smallest_bytes_round",
    "largest_bytes_one_way",
    "largest_bytes_round",
    "supernet_params",
    "supernet_bytes",
    "largest_over_supernet",
    "knobs",
)


def write_csv(rows: list[Instance], path: Path) -> None:
    """Raw numbers, one line per family x size (empty fields where none exists)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for inst in rows:
            writer.writerow(inst.row or {"family": inst.family, "size": inst.size})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/supernets.md"))
    parser.add_argument("--csv", type=Path, default=None, help="default: --out with .csv")
    args = parser.parse_args(argv)
    csv_path = args.csv or args.out.with_suffix(".csv")
    command = "python " + shlex.join(sys.argv if argv is None else ["supernet_table.py", *argv])

    missing = set(FAMILIES) - set(available_supernets())
    if missing:
        raise SystemExit(f"families not registered: {sorted(missing)}")
    start = time.perf_counter()
    rows = instances()
    for inst in rows:
        if inst.knobs is None:
            continue
        t0 = time.perf_counter()
        measure(inst)
        print(f"{inst.family:12s} {inst.size:5s} {time.perf_counter() - t0:6.1f} s", flush=True)
    runtime = time.perf_counter() - start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, command, runtime)
    args.out.write_text(text)
    write_csv(rows, csv_path)
    print(text)
    print(f"wrote {args.out} and {csv_path} in {runtime:.1f} s")


if __name__ == "__main__":
    main()

"""Smoke test of the server efficiency benchmark (``scripts/bench_server.py --quick``)."""

from __future__ import annotations

import csv
import math

from script_loader import load_script


def _load_script():
    return load_script("bench_server")


def test_quick_run_writes_positive_finite_figures(tmp_path):
    bench = _load_script()
    paths = bench.main(["--quick", "--out", str(tmp_path)])

    with paths["server_time"].open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.SERVER_TIME_COLUMNS
        rows = list(reader)
    families = {r["family"] for r in rows}
    assert families == set(bench.FAMILIES)
    assert len(rows) == len(bench.FAMILIES) * len(bench.QUICK.clients_per_round)
    for row in rows:
        for column in bench.POSITIVE_COLUMNS:
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)
        # The headline: the round with its decoding, over FedAvg's aggregation.
        with_decode = float(row["pfedrlnas_incl_decode_s"])
        assert math.isclose(
            with_decode, float(row["pfedrlnas_s"]) + float(row["decode_s"]), rel_tol=1e-4
        )
        assert math.isclose(
            float(row["ratio_incl_decode_vs_fedavg_largest"]),
            with_decode / float(row["fedavg_largest_s"]),
            rel_tol=1e-4,
        )
        assert math.isclose(
            float(row["ratio_peak_memory_vs_fedavg_largest"]),
            float(row["peak_memory_pfedrlnas_mb"]) / float(row["peak_memory_fedavg_largest_mb"]),
            rel_tol=1e-4,
        )
        # Shapes are derived inside the round, so they cannot exceed it.
        assert float(row["shape_derivation_s"]) <= float(row["pfedrlnas_s"])

    with paths["bytes"].open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.BYTES_COLUMNS
        byte_rows = list(reader)
    assert {r["family"] for r in byte_rows} == families
    for row in byte_rows:
        for column in ("down_bytes_per_client", "up_bytes_per_client", "bytes_per_round"):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)

    assert paths["plot"].stat().st_size > 0
    readme = paths["readme"].read_text()
    assert "python scripts/bench_server.py" in readme
    assert "**Ratio incl. decode**" in readme and "tracemalloc" in readme
    for family in bench.FAMILIES:  # one profile line per family and size
        assert f"- `{family}` (cpu): `" in readme


def test_round_time_section_reads_the_ratio_from_the_round_time_table(tmp_path):
    bench = _load_script()
    table = tmp_path / "table.csv"
    table.write_text(
        "method,label,rounds,latency-total-s,bytes-per-round,round-wall-seconds\n"
        "pfedrlnas,PerFedRLNAS,10,65.0,5760000,8.0\n"
        "fedavg-largest,FedAvg largest,10,99.0,9530000,20.0\n"
    )
    text = bench.round_time_section(table)
    assert "0.40x" in text  # 8.0 / 20.0
    assert "| PerFedRLNAS | 8.0 | 6.50 | 5.76 |" in text
    assert "| FedAvg largest | 20.0 | 9.90 | 9.53 |" in text
    assert "Not measured yet" in bench.round_time_section(tmp_path / "none.csv")

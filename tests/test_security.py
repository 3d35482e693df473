"""Secure deployment with Flower's own mechanisms: TLS and SuperNode authentication.

A SuperLink with a TLS certificate (signed by a CA generated here) and
``--enable-supernode-auth``; two SuperNodes whose public keys were registered
with ``flwr supernode register`` connect over TLS with ``--root-certificates``
and ``--auth-supernode-private-key`` (and, with ``PFEDRLNAS_TLS_RUN=1``, run
one round of the pfedrlnas app); a SuperNode with an unregistered key and one
without TLS are refused.
Every process started is stopped by pid (``flwr_processes.stop_processes``).
See docs/security.md.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr_processes import APP, BIN, SUPERNET_CONFIG, Processes, flwr_env, free_port, run_status

pytestmark = pytest.mark.slow

NUM_PARTITIONS = 10


# ---------------------------------------------------------------------- key material
def _cert(subject, issuer_key, public_key, issuer, *, ca: bool, san=None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_tls_material(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost (PEM)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pfedrlnas test CA")])
    ca = _cert(ca_name, ca_key, ca_key.public_key(), ca_name, ca=True)
    key = ec.generate_private_key(ec.SECP384R1())
    server = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        ca_key,
        key.public_key(),
        ca_name,
        ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    paths = {n: directory / n for n in ("ca.crt", "server.pem", "server.key")}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def write_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode key pair in OpenSSH format (ECDSA P-384), as ``ssh-keygen`` makes."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    private.chmod(0o600)
    return private, public


def _wait_https(port: int, ca: Path, proc: subprocess.Popen, log: Path, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited ({proc.returncode}):\n{log.read_text()}")
        try:
            ctx = ssl.create_default_context(cafile=str(ca))
            if httpx.get(f"https://127.0.0.1:{port}/health", verify=ctx, timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"SuperLink not healthy over TLS after {timeout} s:\n{log.read_text()}")


def _flwr(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _nodes(env) -> list[dict]:
    out = _flwr(env, "supernode", "list", "secure", "--format", "json")
    return json.loads(out.stdout).get("nodes", [])


# ---------------------------------------------------------------------- test
def test_tls_and_supernode_authentication(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    tls = write_tls_material(keys)
    node_keys = [write_node_key(keys, f"node{i}") for i in range(2)]
    intruder_key, _ = write_node_key(keys, "intruder")

    flwr_home, logs, results = tmp_path / "flwr-home", tmp_path / "logs", tmp_path / "results"
    flwr_home.mkdir()
    logs.mkdir()
    env = flwr_env(flwr_home)
    port = free_port()
    # The CLI (flwr run / ls / supernode) talks to the SuperLink over TLS too.
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "secure"\n\n[superlink.secure]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{tls["ca.crt"]}"\n'
    )
    procs = Processes(env, tmp_path, logs)

    def supernode(name, *extra, node_config):
        return procs.start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                node_config,
                *extra,
            ],
        )

    try:
        link = procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(tls["ca.crt"]),
                "--ssl-certfile",
                str(tls["server.pem"]),
                "--ssl-keyfile",
                str(tls["server.key"]),
                "--enable-supernode-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(tmp_path / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_https(port, tls["ca.crt"], link, logs / "superlink.log")
        # Plain HTTP to the TLS port gets nowhere.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()

        registered = []
        for _, public in node_keys:
            out = _flwr(env, "supernode", "register", str(public), "secure")
            assert out.returncode == 0 and "registered successfully" in out.stdout, out
            registered.append(out)
        assert len(_nodes(env)) == 2

        for i, (private, _) in enumerate(node_keys):
            supernode(
                f"supernode-{i}",
                "--root-certificates",
                str(tls["ca.crt"]),
                "--auth-supernode-private-key",
                str(private),
                node_config=f"client-id={i} partition-id={i} num-partitions={NUM_PARTITIONS}",
            )
        intruder = supernode(
            "intruder",
            "--root-certificates",
            str(tls["ca.crt"]),
            "--auth-supernode-private-key",
            str(intruder_key),
            "--max-retries",
            "2",
            node_config=f"client-id=0 partition-id=2 num-partitions={NUM_PARTITIONS}",
        )
        plaintext = supernode(
            "plaintext",
            "--insecure",
            "--max-retries",
            "2",
            node_config=f"client-id=1 partition-id=3 num-partitions={NUM_PARTITIONS}",
        )
        # The unregistered key and the plaintext node are refused and give up.
        for proc, name in ((intruder, "intruder"), (plaintext, "plaintext")):
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} SuperNode was not refused:\n{procs.tails(3000)}")
            assert proc.returncode != 0
        assert "Failed to activate SuperNode" in (logs / "intruder.log").read_text()

        deadline = time.monotonic() + 60
        while sum(n["status"] == "online" for n in _nodes(env)) < 2:
            assert time.monotonic() < deadline, procs.tails(3000)
            time.sleep(0.5)
        assert len(_nodes(env)) == 2  # the intruder never became a node
        assert _flwr(env, "ls", "secure").returncode == 0  # the CLI works over TLS

        if os.environ.get("PFEDRLNAS_TLS_RUN") != "1":
            return  # the full run below takes ~5 min on a shared 2-core box
        procs.flwr_run(
            str(APP),
            "secure",
            "--stream",
            "--run-config",
            f"num-server-rounds=1 num-clients=2 clients-per-round=2 results-dir='{results}'",
            "--run-config",
            f"supernet-config='{SUPERNET_CONFIG}'",
            chars=3000,
        )
        runs = run_status(env, "secure")
        assert [r["status"] for r in runs] == ["finished:completed"], (procs.tails(3000), runs)
        rounds = pd.read_csv(results / "rounds.csv")
        assert list(rounds["num-accepted"]) == [2] and list(rounds["num-evaluated"]) == [2]
    finally:
        leftovers = procs.stop()
    assert not leftovers, f"processes left running: {leftovers}"

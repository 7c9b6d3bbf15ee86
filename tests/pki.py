"""Throwaway certificates for TLS and mTLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def certificate(directory: Path, name: str, cn: str, ca: Path | None, ext: str = "") -> None:
    """`name.key` and `name.crt` for `cn`: self-signed when `ca` is None, else signed by it."""
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    if ca is None:
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            crt,
            "-days",
            "1",
            "-subj",
            f"/CN={cn}",
        )
        return
    csr, extfile = directory / f"{name}.csr", directory / f"{name}.ext"
    extfile.write_text(ext)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca.with_suffix(".crt"),
        "-CAkey",
        ca.with_suffix(".key"),
        "-CAcreateserial",
        "-out",
        crt,
        "-days",
        "1",
        "-extfile",
        extfile,
    )


def make_pki(directory: Path) -> Path:
    """A CA (`ca`), a server certificate for localhost (`server`) and two client certificates,
    `ops` (CN ops-console) and `grafana` (CN grafana), as .key/.crt files in `directory`."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates (apt-get install openssl)")
    certificate(directory, "ca", "conveyor test CA", None)
    ca = directory / "ca"
    certificate(directory, "server", "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    certificate(directory, "ops", "ops-console", ca)
    certificate(directory, "grafana", "grafana", ca)
    return directory

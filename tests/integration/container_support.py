"""Podman for tests/integration/test_container.py: whether it can run here (and why not), a
Python base image made without a registry (debootstrap, kept by a content-derived tag so later
runs reuse it), the image of the project's Dockerfile built on it, and containers on the host
network."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE = "localhost/conveyor-test:latest"
BASE_DOCKERFILE = """\
FROM {debian}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca.crt
"""
"""The official slim Python image's stand-in: Debian's python3 (3.11) and venv. The host's CA
bundle goes in so pip trusts the same certificates as the host (a proxy's, say)."""
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
"""
"""crun fails on this kernel's hybrid cgroups; runc with explicit limits works."""


class PodmanUnavailable(Exception):
    """Podman cannot build or run containers here; the message says why."""


def _environ(conf: Path) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


class Podman:
    """Rootful podman with runc and explicit ulimits (a containers.conf of its own)."""

    def __init__(self, workdir: Path) -> None:
        self.conf = workdir / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        self.workdir = workdir
        self.timings: dict[str, float] = {}

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS`; raise with its output when `check` and it fails."""
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=_environ(self.conf),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def check_usable(self) -> None:
        """Raise PodmanUnavailable saying why podman cannot work here."""
        missing = [b for b in ("podman", "runc", "debootstrap") if shutil.which(b) is None]
        if missing:
            raise PodmanUnavailable(
                f"{', '.join(missing)} not installed: apt-get install podman runc debootstrap "
                "(bash .ci/install does so when run as root)"
            )
        if os.geteuid() != 0:
            raise PodmanUnavailable("the container test needs rootful podman: run it as root")
        result = self("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
        if result.returncode != 0:
            raise PodmanUnavailable(f"`podman info` failed: {result.stderr.strip()[-500:]}")
        probe = self("run", "--rm", "--network", "host", self.base(), "true", check=False)
        if probe.returncode != 0:
            raise PodmanUnavailable(f"podman cannot run a container: {probe.stderr[-500:]}")

    def base(self) -> str:
        """The Python base image, made once (debootstrap, import, apt-get) and then reused: its
        tag is a hash of everything that goes into it."""
        recipe = f"{SUITE} {MIRROR}\n{BASE_DOCKERFILE}".encode() + HOST_CA.read_bytes()
        tag = f"localhost/conveyor-test-python:{hashlib.sha256(recipe).hexdigest()[:16]}"
        if self("image", "exists", tag, check=False).returncode == 0:
            return tag
        started = time.monotonic()
        debian = tag.replace("conveyor-test-python", "conveyor-test-debian")
        with tempfile.TemporaryDirectory(prefix="conveyor-rootfs-", dir=self.workdir) as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], 600)
            for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["podman", "import", "-", debian],
                stdin=tar.stdout,
                capture_output=True,
                env=_environ(self.conf),
                timeout=300,
                check=False,
            )
            tar.wait()
            if imported.returncode != 0:
                raise AssertionError(f"podman import failed: {imported.stderr[-2000:]!r}")
            context = Path(tmp) / "context"
            context.mkdir()
            (context / "Dockerfile").write_text(BASE_DOCKERFILE.format(debian=debian))
            shutil.copy(HOST_CA, context / "host-ca.crt")
            self("build", "--format", "docker", "--network", "host", "-t", tag, str(context),
                 timeout=600)  # fmt: skip
        self.timings["base image (debootstrap, import, python3)"] = time.monotonic() - started
        return tag

    def build(self) -> str:
        """Build the project's Dockerfile on the base (layers cached between runs)."""
        started = time.monotonic()
        self("build", "--format", "docker", "--network", "host", "--layers",
             "--build-arg", f"BASE_IMAGE={self.base()}", "-t", IMAGE, str(ROOT),
             timeout=900)  # fmt: skip
        self.timings["image build"] = time.monotonic() - started
        # Each change of the sources leaves the previous build's layers behind, untagged: drop
        # those older than a day, so a machine that keeps its images does not fill up.
        self("image", "prune", "--force", "--filter", "until=24h", check=False)
        return IMAGE

    def size(self, image: str) -> int:
        """The image's size in bytes."""
        return int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def state(self, name: str) -> tuple[str, int]:
        """A container's status (running, exited, ...) and exit code."""
        out = self("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout
        status, code = out.split()
        return status, int(code)

    def logs(self, name: str) -> str:
        """Everything a container wrote to stdout and stderr."""
        result = self("logs", name, check=False)
        return result.stdout + result.stderr


def _run(args: list[str], timeout: float) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{args[0]} exited {result.returncode}: {result.stderr[-2000:]}")

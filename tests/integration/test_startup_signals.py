"""SIGTERM while a relay starts, after its checks passed, stops it (exit 0) without waiting out a
server that stopped answering."""

from __future__ import annotations

import signal

from sqlalchemy.engine import make_url

from tests.integration.conftest import Case
from tests.integration.proxies import Proxy
from tests.integration.startup_support import args_of, env_of
from tests.processes import start_conveyor, stop


def test_sigterm_while_the_relay_connects_after_its_checks_exits_0(
    case: Case, catalog_cleanup: None
) -> None:
    # docs/operations.md: SIGTERM and SIGINT stop the process, exit 0, from the first check on.
    # Here PostgreSQL answers the start-up check, then stops answering: the relay's next
    # connection hangs (asyncpg's connect timeout is 60 s), and SIGTERM still ends it promptly.
    url = make_url(case.database_url)
    proxy = Proxy(url.port or 5432, connections=1, hold=True)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = env_of(case.env, case.schema) | {"CONVEYOR_DATABASE_URL": proxied}
    proc = start_conveyor(args_of("relay", case.schema), env)
    try:
        assert proxy.held.wait(30), "the relay never connected after its check"
        out = stop(proc, signal.SIGTERM, timeout=20)
        assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}"
        assert "stopped by" in out and "while starting" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()

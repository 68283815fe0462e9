"""PostgreSQL for tests: a fresh database per test on the server scripts/test started.

scripts/test installs Debian's postgresql if needed, starts a private cluster on a loopback port
and exports GATEWAY_TEST_POSTGRES_URL. Without it (e.g. pytest run by hand on a machine where the
server could not start) PostgreSQL tests are skipped with the reason, never silently passed.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

URL_ENV = "GATEWAY_TEST_POSTGRES_URL"


@contextlib.asynccontextmanager
async def fresh_database():
    base = os.environ.get(URL_ENV)
    if not base:
        reason = os.environ.get("GATEWAY_TEST_POSTGRES_SKIP", f"{URL_ENV} is not set (scripts/test starts PostgreSQL)")
        pytest.skip(f"PostgreSQL not available: {reason}")
    import asyncpg

    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

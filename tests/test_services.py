"""The services CI brings up are reachable and usable without disturbing anything."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


async def test_mariadb_fresh_database_per_run(mysql_url: str) -> None:
    name = f"fleet_test_{uuid.uuid4().hex[:10]}"
    server = create_async_engine(mysql_url)
    try:
        async with server.begin() as conn:
            await conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
        db = create_async_engine(f"{mysql_url.rstrip('/')}/{name}")
        async with db.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE t (id INT PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
            assert (await conn.execute(sa.text("SELECT COUNT(*) FROM t"))).scalar() == 2
        await db.dispose()
    finally:
        async with server.begin() as conn:
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        await server.dispose()

"""A FastAPI service: pydantic models cached on Redis, invalidated after commit.

- ``GET /products/{product_id}`` returns a pydantic model. The generic
  ``@cache.cached`` decorator caches it on Redis: the key holds the product id
  only (the ``AsyncSession`` dependency is not data and is left out), and the
  model comes back as a model, rebuilt by the function's return annotation.
- ``GET /search?q=red shoes`` caches free-text queries (the key template quotes
  them).
- ``PUT /products/{product_id}`` writes through SQLAlchemy's ``AsyncSession``;
  ``@cache.invalidates(..., after_commit="sqlalchemy")`` deletes the cached
  product when the transaction commits, never before it (and not on rollback).

Needs ``pip install -e '.[redis,sqlalchemy-async]' fastapi aiosqlite``. Run it
with ``REDIS_URL=redis://127.0.0.1:6379/0 python examples/fastapi_service.py``: it
drives the app with FastAPI's test client and prints what happened.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import pydantic
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import Numeric, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cachewise import AsyncCache

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite://")

# -- the source of truth ----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class ProductRow(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))


engine = create_async_engine(DATABASE_URL)
Session = async_sessionmaker(engine, expire_on_commit=False)
db_reads = 0  # how often the database was asked (the demo prints it)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


DB = Annotated[AsyncSession, Depends(get_db)]

# -- what the API returns ------------------------------------------------------------------


class Product(pydantic.BaseModel):
    id: int
    name: str
    price: decimal.Decimal
    fetched_at: dt.datetime


class SearchResult(pydantic.BaseModel):
    query: str
    ids: list[int]


class PriceChange(pydantic.BaseModel):
    price: decimal.Decimal


# -- the cache ----------------------------------------------------------------------------

cache = AsyncCache.from_url(REDIS_URL, namespace="shop", ttl=300, stale_ttl=60)


@cache.cached("product:{product_id}")
async def load_product(product_id: int, db: AsyncSession) -> Product | None:
    global db_reads
    db_reads += 1
    row = await db.get(ProductRow, product_id)
    if row is None:
        return None  # cached for negative_ttl: unknown ids do not hammer the database
    return Product(
        id=row.id, name=row.name, price=row.price, fetched_at=dt.datetime.now(dt.timezone.utc)
    )


@cache.cached()  # a default key: the query text (any text) and nothing else
async def search_products(q: str, db: AsyncSession) -> SearchResult:
    global db_reads
    db_reads += 1
    rows = await db.scalars(select(ProductRow.id).where(ProductRow.name.contains(q)))
    return SearchResult(query=q, ids=sorted(rows))


@cache.invalidates("product:{product_id}", after_commit="sqlalchemy")
async def set_price(product_id: int, price: decimal.Decimal, db: AsyncSession) -> None:
    row = await db.get(ProductRow, product_id)
    if row is None:
        raise HTTPException(404)
    row.price = price
    await db.commit()  # the cached product is deleted when this commits


# -- the app ------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as session:
        session.add_all(
            [
                ProductRow(id=1, name="red shoes", price=decimal.Decimal("59.90")),
                ProductRow(id=2, name="blue shoes", price=decimal.Decimal("64.00")),
            ]
        )
        await session.commit()
    await cache.clear()  # a fresh demo: nothing left from an earlier run
    yield
    await cache.aclose()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/products/{product_id}")
async def read_product(product_id: int, db: DB) -> Product:
    product = await load_product(product_id, db)
    if product is None:
        raise HTTPException(404)
    return product


@app.get("/search")
async def search(q: str, db: DB) -> SearchResult:
    return await search_products(q, db)


@app.put("/products/{product_id}")
async def update_price(product_id: int, change: PriceChange, db: DB) -> dict[str, str]:
    await set_price(product_id, change.price, db)
    return {"status": "ok"}


def main() -> None:
    with TestClient(app) as client:
        first = client.get("/products/1").json()
        second = client.get("/products/1").json()
        print("same cached product:", first == second, "| database reads:", db_reads)
        print("price:", first["price"])
        client.put("/products/1", json={"price": "49.90"})
        print("after the write:", client.get("/products/1").json()["price"])
        for _ in range(3):
            result = client.get("/search", params={"q": "shoes"}).json()
        print("search:", result["ids"], "| database reads:", db_reads)
        print("unknown product:", client.get("/products/99").status_code)
        stats = cache.stats()
        print(f"hits={stats.hits} loads={stats.loads} encode_errors={stats.encode_errors}")


if __name__ == "__main__":
    main()

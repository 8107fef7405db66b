"""The same with asyncio: AsyncCache has Cache's methods, as coroutines."""

import asyncio

from cachewise import AsyncCache

calls = 0


async def fetch_price(sku: str) -> float:
    global calls
    calls += 1
    await asyncio.sleep(0.05)  # a slow service
    return 9.99


async def main() -> None:
    async with AsyncCache(ttl=30) as cache:

        @cache.cached("price:{sku}")
        async def price(sku: str) -> float:
            return await fetch_price(sku)

        # 1,000 concurrent requests for a cold key: one call to the service.
        prices = await asyncio.gather(*(price("A-1") for _ in range(1000)))
        print(len(prices), "answers from", calls, "service call")
        await price.invalidate("A-1")  # after the write that changed the price
        print(cache.stats())


asyncio.run(main())

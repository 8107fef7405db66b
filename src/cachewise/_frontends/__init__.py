"""The front ends: ``Cache`` (threads) and ``AsyncCache`` (asyncio).

Both carry out what ``cachewise._core`` decides; what they share that is not I/O
lives in ``_base``; held invalidations in ``_held``, and the state caches of one
process share (``CacheGroup``) in ``_group``.
"""

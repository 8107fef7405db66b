"""The pure decision core.

Nothing in here reads a clock, takes a lock, draws a random number or does I/O: the
sync and async front ends pass the current time and the random draws in, and carry
out what these functions decide. That keeps ``Cache`` and ``AsyncCache`` thin and
makes every freshness rule testable with plain arithmetic.
"""

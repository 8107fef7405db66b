"""The history checker (issue 9, section 3): a seeded stress harness that records
every operation on one clock, checks one rule over the history, and fails any call
that overruns its deadline.

- ``recorder``: the records, the recorder and the watchdog (deadlines, stack dumps);
- ``checker``: the rule, in O(n log n);
- ``stores``: the source of truth (a dict, or a WAL-mode SQLite file);
- ``configs``: the configurations (backend x front end x invalidation x options);
- ``workloads``: the actors and one process's run (forks and peers included);
- ``runner``: a configuration in a worker process of its own, faults injected;
- ``python -m tests.history``: the long run.

``tests/system/test_history.py`` is the short run in ``make test``.
"""

"""ccmb_bench: the CCMB benchmark harness (model adapters, tasks, metrics, results, leaderboard).

Entry points: ``ccmb-bench`` (:mod:`ccmb_bench.cli`), :func:`ccmb_bench.runner.run`,
:func:`ccmb_bench.adapters.load_adapter`, :mod:`ccmb_bench.metrics`, :mod:`ccmb_bench.caption_metrics`,
:func:`ccmb_bench.leaderboard.export`. See ``docs/bench.md``.
"""

"""Per-family benchmarks behind ``scripts/benchmark.py``: every number is a ratio against a reference measured in the
same run. A family names its benchmark module in its registry record (``Family.benchmark``); each module defines
``NAME`` (the command-line name), ``DESCRIPTION``, ``run(args, device, meta) -> (result, markdown)`` and optionally
``add_arguments(group)`` for its own command-line options (the entry point refuses them with another benchmark)."""

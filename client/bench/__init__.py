"""`kairos bench`: an asyncio load generator for any Open Inference Protocol (V2) gRPC server.

    from kairos.client.bench import BenchConfig, run
    result = run(BenchConfig(url="127.0.0.1:8001", model="mlp256", rates=[1000.0]))

`kairos.client.bench.cli.register(subparsers)` adds the `bench` subcommand to a CLI;
`python -m kairos.client.bench` runs it alone.
"""

from .runner import BenchConfig, run, run_bench, run_point
from .schedule import BurstSpec, arrival_times, parse_burst

__all__ = ["BenchConfig", "BurstSpec", "arrival_times", "parse_burst", "run", "run_bench", "run_point"]

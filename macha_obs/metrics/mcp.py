"""`macha_mcp_requests_total{tool,result}`: the MCP server's requests, read on each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

McpCounts = Callable[[], Mapping[tuple[str, str], int]]


class McpCollector(Collector):
    def __init__(self, counts: McpCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        # tool: the server's fixed tool set plus "other" and "none" (15); result: a fixed
        # set of 7 (macha_obs/mcp/stats.py); only pairs that happened: at most 105 series
        fam = CounterMetricFamily(
            "macha_mcp_requests", "MCP requests by tool and result", labels=["tool", "result"]
        )
        for (tool, result), n in sorted(self.counts().items()):
            fam.add_metric([tool, result], n)
        yield fam

"""The Prometheus text format (0.0.4), rendered faster than prometheus_client does it.

Private to the metrics room: the listener asks for `scrape_text(registry)` and never
sees how it is rendered.

prometheus_client's `generate_latest` validates and escapes every label name of every
sample; with a few hundred units that was most of a scrape's time. Here names are checked
once per family and label keys sorted once per key set. Gauges, counters and untyped
families take this path; anything else (histograms, summaries, `_created`, timestamps,
exemplars, non-legacy names) is rendered by prometheus_client itself, one metric at a
time, so the output stays byte-for-byte what `generate_latest` would give (a test holds
the two side by side).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_TYPES = {"gauge": "gauge", "counter": "counter", "unknown": "untyped", "untyped": "untyped"}


class _One:
    """A single metric as a collector, for prometheus_client's own renderer."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def _value(value: float) -> str:
    # Most samples are 0/1 state flags: skip the general float formatting for those
    # (but not for -0.0, which Go and prometheus_client print as "-0.0").
    if value == 1.0:
        return "1.0"
    if value == 0.0 and math.copysign(1.0, value) > 0:
        return "0.0"
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _fast_lines(metric: Metric) -> list[str] | None:
    """The family's lines, or None when it needs prometheus_client's general renderer."""
    kind = _TYPES.get(metric.type)
    if kind is None or not _NAME.match(metric.name):
        return None
    name = metric.name + "_total" if kind == "counter" else metric.name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"]
    order: dict[frozenset[str], list[str]] = {}
    for sample in metric.samples:
        if sample.name != name or sample.timestamp is not None or sample.exemplar is not None:
            return None
        labels = sample.labels
        if not labels:
            lines.append(f"{name} {_value(sample.value)}\n")
            continue
        keys = frozenset(labels)
        ordered = order.get(keys)
        if ordered is None:
            if not all(_LABEL.match(k) for k in keys):
                return None
            ordered = order[keys] = sorted(keys)
        text = ",".join(f'{k}="{_escape_value(labels[k])}"' for k in ordered)
        lines.append(f"{name}{{{text}}} {_value(sample.value)}\n")
    return lines


def render(metrics: Iterable[Metric]) -> bytes:
    """The text exposition of `metrics` (e.g. `registry.collect()`)."""
    out: list[str] = []
    for metric in metrics:
        lines = _fast_lines(metric)
        if lines is None:
            out.append(generate_latest(_One(metric)).decode())
        else:
            out.extend(lines)
    return "".join(out).encode()


def scrape_text(registry: Collector) -> bytes:
    """What one scrape of `registry` answers: every family it collects now, as text."""
    return render(registry.collect())

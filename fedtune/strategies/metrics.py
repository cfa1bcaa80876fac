"""The round's mean of the clients' metrics, each over the replies that report it.

Flower's ``aggregate_metricrecords`` divides every key by the weight of all replies, so a metric
one client leaves out (a FedKSeed client that skipped every step has no ``train-loss``) counts
as 0 there and drags the mean down. Here each key's mean is weighted over the replies that carry
it; when every reply has every key the result is Flower's, bit for bit (same operations, same
order).
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict


def mean_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Per key, the ``weight_key``-weighted mean over the records whose metrics have that key
    (the weight key itself is left out, as Flower does)."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k != weight_key and k not in keys]
    out = MetricRecord()
    for key in keys:
        having = [row for row in rows if key in row]
        total = sum(float(row[weight_key]) for row in having)
        for row in having:
            factor = float(row[weight_key]) / total
            value = row[key]
            if isinstance(value, list):
                term = [v * factor for v in value]
                out[key] = (term if key not in out else
                            [a + b for a, b in zip(out[key], term, strict=True)])  # type: ignore
            else:
                out[key] = value * factor if key not in out else out[key] + value * factor
    return out

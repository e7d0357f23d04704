#!/usr/bin/env python3
"""Writes ferry.json, the Grafana dashboard, next to this script.

The dashboard is generated so that its layout stays regular and its queries
share one data-set selector; edit this file and run it, not the JSON.
The test proxy/tests/dashboards.rs checks that every metric the dashboard
references is exported by a running proxy or control plane.
"""

import json
import pathlib

RATE = "$__rate_interval"


def sel(*extra):
    """A label selector limited to the data sets picked in the dashboard."""
    return "{" + ",".join(('dataset=~"$dataset"',) + extra) + "}"


class Layout:
    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0

    def row(self, title):
        if self.x > 0:
            self.x, self.y = 0, self.y + 8
        self.panels.append({"type": "row", "title": title, "collapsed": False,
                            "id": len(self.panels) + 1, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def panel(self, title, queries, unit, width=8, description=None):
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        panel = {
            "type": "timeseries", "title": title, "id": len(self.panels) + 1,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                        for i, (expr, legend) in enumerate(queries)],
        }
        if description:
            panel["description"] = description
        self.panels.append(panel)
        self.x += width


def ratio(hits, misses, by):
    h = f"sum by ({by}) (rate({hits}{sel()}[{RATE}]))"
    m = f"sum by ({by}) (rate({misses}{sel()}[{RATE}]))"
    return f"{h} / ({h} + {m})"


def main():
    d = Layout()
    d.row("Golden signals (by data set)")
    success = sel('classification="success"')
    d.panel("Success rate", [(
        f'sum by (dataset, direction) (rate(response_total{success}[{RATE}]))'
        f" / sum by (dataset, direction) (rate(response_total{sel()}[{RATE}]))",
        "{{dataset}} {{direction}}")], "percentunit",
        description="Responses that were not server failures (5xx), over all responses.")
    d.panel("Requests per second", [(
        f"sum by (dataset, direction) (rate(request_total{sel()}[{RATE}]))",
        "{{dataset}} {{direction}}")], "reqps")
    d.panel("Bytes served per second", [(
        f"sum by (dataset, direction) (rate(response_bytes_total{sel()}[{RATE}]))",
        "{{dataset}} {{direction}}")], "Bps")
    outbound = sel('direction="outbound"')
    d.panel("Latency to response headers (app-facing)", [(
        f"histogram_quantile({q}, sum by (le, dataset) (rate(response_latency_seconds_bucket{outbound}[{RATE}])))",
        f"p{label} {{{{dataset}}}}") for q, label in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))],
        "s", width=12)
    d.panel("Responses by status", [(
        f"sum by (dataset, status_code) (rate(response_total{sel()}[{RATE}]))",
        "{{dataset}} {{status_code}}")], "reqps", width=12)

    d.row("Cache")
    d.panel("Hit ratio per tier", [(ratio("cache_hits_total", "cache_misses_total", "dataset, tier"),
                                    "{{dataset}} {{tier}}")], "percentunit",
            description="Chunk lookups each tier answered; the disk tier's are of the memory tier's misses.")
    d.panel("Cache fill", [(
        f"sum by (dataset, tier) (cache_bytes{sel()}) / sum by (dataset, tier) (cache_capacity_bytes{sel()})",
        "{{dataset}} {{tier}}")], "percentunit")
    d.panel("Evictions, refused admissions, corrupt chunks", [
        (f"sum by (dataset, tier) (rate(cache_evictions_total{sel()}[{RATE}]))", "evicted {{dataset}} {{tier}}"),
        (f"sum by (dataset, tier) (rate(cache_admission_rejections_total{sel()}[{RATE}]))", "refused {{dataset}} {{tier}}"),
        (f"sum by (dataset, tier) (rate(cache_checksum_failures_total{sel()}[{RATE}]))", "corrupt {{dataset}} {{tier}}"),
    ], "ops")
    d.panel("Origin bytes per second", [(
        f"sum by (dataset) (rate(origin_bytes_total{sel()}[{RATE}]))", "{{dataset}}")], "Bps",
        description="What the mesh reads from the origin: near zero after the first epoch when the pool holds the data set.")
    d.panel("Origin requests and errors per second", [
        (f"sum by (dataset, op) (rate(origin_requests_total{sel()}[{RATE}]))", "{{dataset}} {{op}}"),
        (f"sum by (dataset) (rate(origin_errors_total{sel()}[{RATE}]))", "errors {{dataset}}"),
    ], "reqps")
    d.panel("Origin latency p99", [(
        f"histogram_quantile(0.99, sum by (le, dataset) (rate(origin_latency_seconds_bucket{sel()}[{RATE}])))",
        "{{dataset}}")], "s")
    d.panel("Metadata cache hit ratio", [(ratio("metadata_hits_total", "metadata_misses_total", "dataset"),
                                          "{{dataset}}")], "percentunit")
    d.panel("Chunk fetches in flight (bytes)", [("sum by (instance) (inflight_fetch_bytes)", "{{instance}}")], "bytes")
    d.panel("Read-ahead chunks per second", [(
        f"sum by (dataset) (rate(readahead_chunks_total{sel()}[{RATE}]))", "{{dataset}}")], "ops")

    d.row("Warm-up (workers)")
    d.panel("Warm-up bytes per second from the origin", [(
        f"sum by (dataset) (rate(warm_bytes_total{sel()}[{RATE}]))", "{{dataset}}")], "Bps",
        description="ferryctl warm, or a policy's warm: on_start: each worker loads the chunks it owns.")
    d.panel("Objects warmed", [(
        f"sum by (dataset) (warm_objects_total{sel()})", "{{dataset}}")], "short",
        description="Objects whose chunks their owners hold after a warm-up reached them (fetched or already cached).")
    d.panel("Workers warming", [(
        f"sum by (dataset) (warm_in_progress{sel()})", "{{dataset}}")], "short")

    d.row("Worker pool (sidecars' view)")
    d.panel("Requests per worker", [(
        f"sum by (pool, member) (rate(upstream_requests_total[{RATE}]))", "{{pool}} {{member}}")], "reqps",
        description="Chunk-affine balancing spreads chunks evenly: the lines should sit together.")
    d.panel("Worker latency p99", [(
        f"histogram_quantile(0.99, sum by (le, pool, member) (rate(upstream_response_latency_seconds_bucket[{RATE}])))",
        "{{pool}} {{member}}")], "s")
    d.panel("Failovers, hedges, hedges won", [
        (f"sum by (pool) (rate(upstream_failovers_total[{RATE}]))", "failovers {{pool}}"),
        (f"sum by (pool) (rate(upstream_hedges_total[{RATE}]))", "hedges {{pool}}"),
        (f"sum by (pool) (rate(upstream_hedges_won_total[{RATE}]))", "hedges won {{pool}}"),
    ], "ops")
    d.panel("Workers in the pool, ejected", [
        ("max by (pool) (pool_members)", "members {{pool}}"),
        ("sum by (pool) (max by (pool, member) (upstream_member_ejected))", "ejected {{pool}}"),
    ], "short")
    d.panel("Ejections", [(
        f"sum by (pool, member) (increase(upstream_ejections_total[{RATE}]))", "{{pool}} {{member}}")], "short")
    d.panel("In flight per worker", [("sum by (pool, member) (upstream_inflight)", "{{pool}} {{member}}")], "short")

    d.row("Connections, identity, configuration")
    d.panel("Connections open", [("sum by (direction) (connections_open)", "{{direction}}")], "short")
    d.panel("TLS handshake failures and denied reads", [
        (f"sum (rate(inbound_tls_handshake_failures_total[{RATE}]))", "handshake failures"),
        (f"sum by (dataset) (rate(inbound_authz_denied_total[{RATE}]))", "denied {{dataset}}"),
    ], "ops")
    d.panel("Certificate time left (least per proxy)", [(
        "min by (instance) (identity_cert_expiry_timestamp_seconds > 0) - time()", "{{instance}}")], "s")
    d.panel("Configuration version", [("max by (instance) (config_version)", "{{instance}}")], "none")
    d.panel("Connected to the control plane", [("min by (instance) (control_plane_connected)", "{{instance}}")], "bool")
    d.panel("Control plane: refused documents, proxies watching", [
        ("max (policy_documents_refused)", "refused documents"),
        ("max (watch_streams)", "proxies watching"),
    ], "short")
    d.panel("Trace spans exported and dropped", [
        (f"sum (rate(trace_spans_exported_total[{RATE}]))", "exported"),
        (f"sum (rate(trace_spans_dropped_total[{RATE}]))", "dropped"),
    ], "ops")
    d.panel("Control plane API latency p99", [(
        f'histogram_quantile(0.99, sum by (le, route) (rate(response_latency_seconds_bucket{{route!=""}}[{RATE}])))',
        "{{route}}")], "s")

    dashboard = {
        "title": "Ferry: golden signals and cache",
        "uid": "ferry-golden",
        "description": "Is data flowing, is it fast, is the cache doing its job. From the admin "
                       "ports of ferry-proxy (sidecars and workers) and ferry-control-plane.",
        "tags": ["ferry"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Data source", "current": {}},
            {"name": "dataset", "type": "query", "label": "Data set",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(request_total, dataset)", "refId": "datasets"},
             "definition": "label_values(request_total, dataset)",
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"text": "All", "value": ["$__all"]}, "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": d.panels,
    }
    out = pathlib.Path(__file__).with_name("ferry.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()

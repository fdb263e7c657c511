"""Medians over rounds, ratios within a round, the targets of issue 6, and markdown.

A ratio is always taken between two servers of the same round (same minutes of the
same machine), then the median over rounds is reported; absolute figures drift with
whatever else runs on the machine, ratios much less. "The better peer" is the peer
with the higher median req/s for that model and scenario (lower cold start for the
cold-start target).
"""

from __future__ import annotations

from collections import defaultdict
from statistics import median
from typing import Any

PEERS = ("mlserver", "kserve")
RUNTIME = "modelship"
PROTOCOLS = ("modelship-v1", "modelship-v2")
"""The runtime's other protocols, compared with its `/predict` (RUNTIME) in each round."""
PROTOCOL_LABELS = {"modelship-v1": "KServe V1", "modelship-v2": "V2 (OIP) HTTP"}
PROTOCOL_NEED = 0.8
SCENARIOS = ("single-c1", "single-c8", "single-c32", "batch100-c8")

Record = dict[str, Any]


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def summarise(runs: list[Record], starts: list[Record]) -> dict[str, Any]:
    """Medians per (model, server, scenario) and per-round ratios of modelship to each peer."""
    by_key: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for r in runs:
        by_key[(r["model"], r["server"], r["scenario"])].append(r)
    rows: list[Record] = []
    for (model, server, scenario), rs in sorted(by_key.items()):
        rows.append(
            {
                "model": model,
                "server": server,
                "scenario": scenario,
                "rounds": len(rs),
                "rps": _med([r["rps"] for r in rs]),
                "p50_ms": _med([r["p50_ms"] for r in rs]),
                "p99_ms": _med([r["p99_ms"] for r in rs]),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "socket_errors": sum(r["socket_errors"] for r in rs),
            }
        )
    for row in rows:
        if row["server"] in PROTOCOLS:
            row["rps_x_predict"] = _within(runs, row, row["server"], RUNTIME, "rps")
            row["p99_x_predict"] = _within(runs, row, row["server"], RUNTIME, "p99_ms")
        if row["server"] != RUNTIME:
            continue
        for peer in PEERS:
            row[f"rps_x_{peer}"] = _ratio(runs, row, peer, "rps")
            row[f"p99_x_{peer}"] = _ratio(runs, row, peer, "p99_ms")
    start_rows: list[Record] = []
    by_start: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for s in starts:
        by_start[(s["model"], s["server"])].append(s)
    for (model, server), ss in sorted(by_start.items()):
        start_rows.append(
            {
                "model": model,
                "server": server,
                "rounds": len(ss),
                "cold_start_s": _med([s["cold_start_s"] for s in ss]),
                "peak_rss_mib": _med([s["peak_rss_mib"] for s in ss if s.get("peak_rss_mib")]),
            }
        )
    for row in start_rows:
        if row["server"] != RUNTIME:
            continue
        for peer in PEERS:
            mine = {
                s["round"]: s["cold_start_s"]
                for s in starts
                if (s["model"], s["server"]) == (row["model"], RUNTIME)
            }
            theirs = {
                s["round"]: s["cold_start_s"]
                for s in starts
                if (s["model"], s["server"]) == (row["model"], peer)
            }
            row[f"cold_x_{peer}"] = _med([mine[k] / theirs[k] for k in mine if theirs.get(k)])
    return {"rows": rows, "starts": start_rows}


def _ratio(runs: list[Record], row: Record, peer: str, metric: str) -> float | None:
    """Median over rounds of modelship's metric divided by the peer's in the same round."""
    return _within(runs, row, RUNTIME, peer, metric)


def _within(runs: list[Record], row: Record, a: str, b: str, metric: str) -> float | None:
    """Median over rounds of server a's metric divided by server b's in the same round
    (same model and scenario as ``row``)."""
    mine = {
        r["round"]: r[metric]
        for r in runs
        if (r["model"], r["server"], r["scenario"]) == (row["model"], a, row["scenario"])
    }
    theirs = {
        r["round"]: r[metric]
        for r in runs
        if (r["model"], r["server"], r["scenario"]) == (row["model"], b, row["scenario"])
    }
    ratios: list[float | None] = [
        mine[k] / theirs[k] for k in mine if mine[k] is not None and theirs.get(k)
    ]
    return _med(ratios)


def _find(rows: list[Record], **match: str) -> Record | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def better_peer(summary: dict[str, Any], model: str, scenario: str) -> str | None:
    """The peer with the higher median req/s for this model and scenario."""
    cands = [_find(summary["rows"], model=model, server=p, scenario=scenario) for p in PEERS]
    best = max(
        (c for c in cands if c and c["rps"] is not None), key=lambda c: c["rps"], default=None
    )
    return best["server"] if best else None


def targets(summary: dict[str, Any], sizes: dict[str, float]) -> list[Record]:
    """Each target of issue 6 with what this run reached (None: not measured)."""
    out: list[Record] = []
    rows = summary["rows"]

    def rps_target(model: str, scenario: str, need: float, label: str) -> None:
        peer = better_peer(summary, model, scenario)
        me = _find(rows, model=model, server=RUNTIME, scenario=scenario)
        got = me.get(f"rps_x_{peer}") if me and peer else None
        out.append(
            {
                "target": label,
                "peer": peer,
                "need": f">= {need:g}x",
                "got": got,
                "met": None if got is None else got >= need,
            }
        )

    rps_target("light", "single-c8", 2.0, "light, single row, c8: req/s")
    rps_target("heavy", "single-c32", 10.0, "heavy, single row, c32: req/s")
    rps_target("light", "single-c1", 1.0, "light, single row, c1: req/s")
    rps_target("heavy", "single-c1", 1.0, "heavy, single row, c1: req/s")
    for model in ("light", "heavy"):
        for scenario in SCENARIOS:
            peer = better_peer(summary, model, scenario)
            me = _find(rows, model=model, server=RUNTIME, scenario=scenario)
            got = me.get(f"p99_x_{peer}") if me and peer else None
            out.append(
                {
                    "target": f"{model}, {scenario}: p99",
                    "peer": peer,
                    "need": "<= 1x",
                    "got": got,
                    "met": None if got is None else got <= 1.0,
                }
            )
    starts = summary["starts"]
    for model in ("light", "heavy"):
        peers = [_find(starts, model=model, server=p) for p in PEERS]
        peers_ok = [p for p in peers if p and p["cold_start_s"] is not None]
        best = min(peers_ok, key=lambda p: p["cold_start_s"], default=None)
        me = _find(starts, model=model, server=RUNTIME)
        got = me.get(f"cold_x_{best['server']}") if me and best else None
        out.append(
            {
                "target": f"{model}: cold start",
                "peer": best["server"] if best else None,
                "need": "<= 0.5x",
                "got": got,
                "met": None if got is None else got <= 0.5,
            }
        )
    for server in PROTOCOLS:
        for model in ("light", "heavy"):
            for scenario in ("single-c1", "single-c8", "single-c32"):
                me = _find(rows, model=model, server=server, scenario=scenario)
                got = me.get("rps_x_predict") if me else None
                out.append(
                    {
                        "target": f"{PROTOCOL_LABELS[server]}, {model}, {scenario}: req/s",
                        "peer": "/predict",
                        "need": f">= {PROTOCOL_NEED:g}x",
                        "got": got,
                        "met": None if got is None else got >= PROTOCOL_NEED,
                    }
                )
    rt, bare = sizes.get("modelship-runtime-deps"), sizes.get("fastapi+uvicorn+scikit-learn")
    got = rt / bare if rt and bare else None
    out.append(
        {
            "target": "installed runtime deps vs bare FastAPI+scikit-learn",
            "peer": "bare",
            "need": "<= 1.15x",
            "got": got,
            "met": None if got is None else got <= 1.15,
        }
    )
    return out


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(
    summary: dict[str, Any], sizes: dict[str, float], targets_: list[Record], meta: dict[str, Any]
) -> str:
    """The results as markdown tables."""
    lines = [
        f"Run {meta.get('started', '?')} (runtime at {meta.get('git', '?')}) · "
        f"{meta.get('rounds_done', '?')} rounds · "
        f"{meta.get('duration_s', '?')} s per wrk run after a {meta.get('warmup_s', '?')} s "
        "warm-up · servers on core 0, wrk on core 1 · medians of rounds",
        "",
        "| model | scenario | server | req/s | p50 ms | p99 ms | non-2xx | sock err "
        "| req/s x MLServer | req/s x KServe | p99 x MLServer | p99 x KServe "
        "| req/s x /predict | p99 x /predict |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = {s: i for i, s in enumerate(SCENARIOS)}
    srv_order = {
        s: i
        for i, s in enumerate(
            (
                "modelship",
                "modelship-v1",
                "modelship-v2",
                "mlserver",
                "kserve",
                "fastapi-bare",
                "fastapi-constant",
            )
        )
    }
    rows = sorted(
        summary["rows"],
        key=lambda r: (
            r["model"] != "light",
            order.get(r["scenario"], 9),
            srv_order.get(r["server"], 9),
        ),
    )
    for r in rows:
        ratios = [
            _f(r.get(k), ".2f")
            for k in (
                "rps_x_mlserver",
                "rps_x_kserve",
                "p99_x_mlserver",
                "p99_x_kserve",
                "rps_x_predict",
                "p99_x_predict",
            )
        ]
        lines.append(
            f"| {r['model']} | {r['scenario']} | {r['server']} | {_f(r['rps'], '.0f')} "
            f"| {_f(r['p50_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} | {r['non_2xx']} "
            f"| {r['socket_errors']} | " + " | ".join(ratios) + " |"
        )
    lines += [
        "",
        "| model | server | cold start to first 200 (s) | peak RSS (MiB) "
        "| cold start x MLServer | cold start x KServe |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for s in sorted(
        summary["starts"], key=lambda s: (s["model"] != "light", srv_order.get(s["server"], 9))
    ):
        lines.append(
            f"| {s['model']} | {s['server']} | {_f(s['cold_start_s'], '.2f')} "
            f"| {_f(s['peak_rss_mib'], '.0f')} | {_f(s.get('cold_x_mlserver'), '.2f')} "
            f"| {_f(s.get('cold_x_kserve'), '.2f')} |"
        )
    if sizes:
        lines += [
            "",
            "| installed (site-packages, no pip/setuptools/__pycache__) | MB |",
            "|---|--:|",
        ]
        for name, mb in sizes.items():
            lines.append(f"| {name} | {mb:.0f} |")
    lines += [
        "",
        "| target (vs the better peer, same run) | peer | need | got | met |",
        "|---|---|---|--:|---|",
    ]
    for t in targets_:
        met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(
            f"| {t['target']} | {t['peer'] or '—'} | {t['need']} | {_f(t['got'], '.2f')} | {met} |"
        )
    return "\n".join(lines) + "\n"

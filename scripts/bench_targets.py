"""The project's targets (docs/performance.md, "Targets"), checked by `bench.py --compare`.

Pure functions over the figures a run measured: each target's measured value and
whether it is met ("-" and "not met" when it was not measured).
"""

from __future__ import annotations

# The project's targets (docs/performance.md, "Targets") that one ``--compare`` run measures:
# (workload, door, what, bound). "ratio": MB/s over the best peer's, at least the bound; "limit":
# MB/s over the limit's (the bare aiohttp handler), at least; "cpu" (CPU-s/GiB) and "rss" (MiB): at most.
TARGETS = (
    ("W1", "native", "ratio", 1.6), ("W1", "tus", "ratio", 1.6),
    ("W1", "native", "rss", 128), ("W1", "tus", "rss", 128),
    ("W2", "native", "ratio", 1.3), ("W2", "tus", "ratio", 1.3),
    ("W2", "native", "cpu", 5.0), ("W2", "tus", "cpu", 5.0),
    ("W2", "native", "rss", 150), ("W2", "tus", "rss", 150),
    ("W3", "native", "ratio", 1.5), ("W3", "tus", "ratio", 1.5),
    ("W3", "native", "limit", 0.6), ("W3", "tus", "limit", 0.6),
)
#: The aim for Redis's work: commands a node sends per native chunk and per tus PATCH (bench_scale.redis_steps).
REDIS_AIM = 3
_MEASURE = {"ratio": ("x the best peer's MB/s", ">="), "limit": ("x the limit's MB/s", ">="),
            "cpu": (" CPU-s/GiB", "<="), "rss": (" MiB peak RSS", "<=")}


def target_rows(medians: dict[str, dict[str, dict]], best_peer: dict[str, float | None],
                limit: dict[str, float | None] | None = None) -> list[tuple[str, ...]]:
    """(target, measured, verdict) for each of TARGETS whose workload was run.

    ``medians[workload][door]`` holds vezastream's medians (MB_per_s, cpu_s_per_GiB,
    peak_rss_MiB); ``best_peer[workload]`` the best peer's MB/s, None without peers;
    ``limit[workload]`` the limit's MB/s, None (or missing) without it.
    """
    rows = []
    for wl, door, what, bound in TARGETS:
        out = medians.get(wl, {}).get(door)
        if out is None:
            continue
        unit, sense = _MEASURE[what]
        if what in ("ratio", "limit"):
            other = (best_peer if what == "ratio" else limit or {}).get(wl)
            value = out["MB_per_s"] / other if other and out["MB_per_s"] else None
        else:
            value = out["cpu_s_per_GiB" if what == "cpu" else "peak_rss_MiB"]
        rows.append(_verdict(f"{wl} {door}: {sense} {bound}{unit}", value, bound, sense))
    return rows


def disk_rows(medians: dict[str, dict[str, dict]], best_peer: dict[str, float | None],
              disk: dict[str, tuple[float | None, ...]]) -> list[tuple[str, ...]]:
    """Per workload: the disk's durable MB/s (median, lowest, highest of the rounds), vezastream's MB/s
    through each door as a share of it, the MB/s its ratio target asks (the bound times the best
    peer's), and whether that is past the disk's median ("yes": no server that syncs before it
    answers meets it on this disk). "-" for what was not measured."""
    rows = []
    for wl, doors in medians.items():
        rate, low, high = disk.get(wl, (None, None, None))
        shares = [f"{doors[door]['MB_per_s'] / rate:.2f}" if rate and door in doors else "-"
                  for door in ("native", "tus")]
        bound = next((b for w, _, what, b in TARGETS if w == wl and what == "ratio"), None)
        needs = bound * best_peer[wl] if bound and best_peer.get(wl) else None
        rows.append((wl, "-" if rate is None else f"{rate:.0f} ({low:.0f}-{high:.0f})", *shares,
                     "-" if needs is None else f"{needs:.0f}",
                     "-" if needs is None or rate is None else ("yes" if needs > rate else "no")))
    return rows


def _verdict(target: str, value: float | None, bound: float, sense: str) -> tuple[str, str, str]:
    met = value is not None and (value >= bound if sense == ">=" else value <= bound)
    return target, "-" if value is None else f"{value:.2f}", "met" if met else "not met"


def extra_target_rows(m: dict[str, float | None]) -> list[tuple[str, str, str]]:
    """The targets beyond W1-W3's table, from :func:`measure_extras`' figures (None: not measured)."""
    def ratio(a: str, b: str) -> float | None:
        return m[a] / m[b] if m.get(a) is not None and m.get(b) else None

    return [
        _verdict("P8 (one client, 1 GiB, 8 chunks at a time): >= 1.0x W1 native's MB/s", ratio("P8", "W1"),
                 1.0, ">="),
        _verdict("W2 native with --workers 2: >= 1.6x one worker's MB/s", ratio("W2x2", "W2x1"), 1.6, ">="),
        _verdict("2,000 slow clients: <= 300 MiB peak RSS", m.get("slow_rss"), 300, "<="),
        _verdict("2,000 slow clients: /v1/health p99 <= 50 ms", m.get("slow_p99"), 50, "<="),
        _verdict("completing 1 GiB (P8): <= 1.3x sha256sum's time", ratio("complete", "sha256sum"), 1.3, "<="),
    ]


def redis_aim_rows(steps: dict[str, dict]) -> list[tuple[str, str, str]]:
    """The aim of at most :data:`REDIS_AIM` Redis commands sent per native chunk and per tus PATCH (one
    that does not complete its upload: the completing one is a step of its own, as native complete is)."""
    return [_verdict(f"{step}: <= {REDIS_AIM} Redis commands sent (the aim)",
                     steps.get(step, {}).get("sent_per_request"), REDIS_AIM, "<=")
            for step in ("native chunk", "tus PATCH")]

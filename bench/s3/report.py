"""Results JSON -> markdown tables and the issue-3 PASS/MISS targets.

    .venv/bin/python bench/s3/report.py bench/s3/results.json [more.json ...]

Later files replace whole workloads ("small", "large", "list") of earlier ones.
Cells are ``median (min-max)`` over repetitions; ratios are computed per
repetition against the fastest raw client (aioboto3 / obstore) of the same
repetition, and the median of those ratios is shown.
"""

# ruff: noqa: RUF001  (the multiplication sign and en dash in the tables are intended)
from __future__ import annotations

import json
import statistics
import sys
from typing import Any

RAW = ("aioboto3", "obstore")
UNI = ("unistore-s3", "unistore-s3-nocsum")
SVC = "svc-infra-s3"


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v: float | None, nd: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def cell(xs: list[float], nd: int = 0) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], nd)
    return f"{fmt(med(xs), nd)} ({fmt(min(xs), nd)}–{fmt(max(xs), nd)})"


def ratio_cell(rs: list[float]) -> str:
    rs = [r for r in rs if r is not None]
    if not rs:
        return "–"
    m = med(rs)
    return f"{m:.2f}×" if len(rs) == 1 else f"{m:.2f}× ({min(rs):.2f}–{max(rs):.2f})"


def ok_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    return [r if r and r.get("ok") else None for r in runs]


def per_rep_best(table: dict[str, list[dict[str, Any] | None]], get, best=min) -> list[float | None]:
    """For each repetition, the best value among the raw clients."""
    n = max((len(v) for k, v in table.items() if k in RAW), default=0)
    out: list[float | None] = []
    for i in range(n):
        vals = [get(table[k][i]) for k in RAW if k in table and i < len(table[k]) and table[k][i]]
        vals = [v for v in vals if v is not None]
        out.append(best(vals) if vals else None)
    return out


def per_rep_ratio(runs: list[dict[str, Any] | None], ref: list[float | None], get) -> list[float]:
    out = []
    for i, r in enumerate(runs):
        if r and i < len(ref) and ref[i]:
            v = get(r)
            if v is not None:
                out.append(v / ref[i])
    return out


def order(names: list[str], R: dict[str, Any]) -> list[str]:
    rank = {"raw": 0, "unistore": 1, "peer": 2}
    return sorted(names, key=lambda n: (rank.get(R.get("groups", {}).get(n, "peer"), 3), n))


def render(R: dict[str, Any]) -> str:
    m, p = R.get("meta", {}), R.get("params", {})
    L: list[str] = []
    T: list[tuple[str, str, str, str]] = []  # targets: (target, measured, requirement, verdict)
    add = L.append
    add("# unistore S3 benchmark (issue 3)\n")
    add(
        f"Run {m.get('started', '?')}, git {m.get('git', '?')}, measured code: {m.get('snapshot', '?')}; "
        f"{m.get('cpus')} CPUs, Python {m.get('python')}, kernel {m.get('kernel')}; "
        f"server: {m.get('server', '?')} in its own process (pids {m.get('server_pids')}); "
        f"{m.get('reps')} repetitions ({m.get('large_reps')} for the large object), interleaved, "
        f"every measurement in a fresh worker process; {m.get('elapsed_s', 0) / 60:.0f} min"
        f"{' (--quick: tiny sizes)' if m.get('quick') else ''}.\n"
    )
    add("Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + "\n")
    add(
        "Legend: cells are `median (min–max)` over repetitions. `×raw` = this row ÷ the fastest raw "
        "client (aioboto3 / obstore) **of the same repetition**, median of those ratios. "
        "**Checksums differ by default**: `unistore-s3` sends a Content-MD5 per request "
        '(`checksum="md5"`, its default) and `unistore-s3-nocsum` none; obstore sends none; '
        "botocore (aioboto3, s3fs, svc-infra) sends its default CRC32 request checksum "
        "(x-amz-checksum-crc32, computed in C). `others` = CPU used by every other process on the "
        "(2-core, shared) machine during the measurement, in cores: rows well above 0.1 were "
        "disturbed.\n"
    )
    labels = R.get("labels", {})
    add("Clients: " + "; ".join(f"`{n}` = {labels[n]}" for n in order(list(labels), R)) + ".\n")

    # ---------------------------------------------------------------- small
    S = R.get("small", {})
    if S:
        concs = [str(c) for c in p.get("concurrency", [1, 32])]
        add(f"## 4 KiB objects: {p.get('small_n')} PUTs then {p.get('small_n')} GETs\n")
        caps = {n: c for n, c in R.get("caps", {}).items() if c}
        if caps:
            add("Capped (too slow for the full count): " + ", ".join(f"`{n}` {c} ops" for n, c in caps.items()) + ".\n")
        for conc in concs:
            tab = {n: ok_runs(v.get(conc, [])) for n, v in S.items()}
            add(f"### concurrency {conc}\n")
            add(
                "| client | PUT ops/s | PUT client CPU µs/op | ×raw | GET ops/s | GET client CPU µs/op | ×raw "
                "| server CPU µs/op (PUT / GET) | others (cores) |"
            )
            add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            refs = {op: per_rep_best(tab, lambda r, op=op: r[op]["cpu_us_per_op"]) for op in ("put", "get")}
            for n in order(list(tab), R):
                runs = tab[n]
                good = [r for r in runs if r]
                if not good:
                    add(f"| `{n}` | failed | | | | | | | |")
                    continue
                c = {}
                for op in ("put", "get"):
                    c[op] = (
                        cell([r[op]["ops_per_s"] for r in good]),
                        cell([r[op]["cpu_us_per_op"] for r in good]),
                        ratio_cell(per_rep_ratio(runs, refs[op], lambda r, op=op: r[op]["cpu_us_per_op"])),
                    )
                srv = (
                    f"{fmt(med([r['put']['server_cpu_us_per_op'] for r in good]))} / "
                    f"{fmt(med([r['get']['server_cpu_us_per_op'] for r in good]))}"
                )
                oth = fmt(max(max(r["put"]["other_cores"], r["get"]["other_cores"]) for r in good), 2)
                add(f"| `{n}` | {' | '.join(c['put'])} | {' | '.join(c['get'])} | {srv} | {oth} (max) |")
            add("")
            # targets (1)
            for u in UNI:
                if u not in tab:
                    continue
                for op in ("put", "get"):
                    rs = per_rep_ratio(tab[u], refs[op], lambda r, op=op: r[op]["cpu_us_per_op"])
                    if rs:
                        v = med(rs)
                        T.append(
                            (
                                f"(1) `{u}` {op.upper()} c={conc}: client CPU/op vs fastest raw",
                                f"{v:.2f}×",
                                "≤ 1.30×",
                                "PASS" if v <= 1.3 else "MISS",
                            )
                        )
                    if SVC in tab and any(tab[SVC]) and any(tab[u]):
                        s = med([r[op]["cpu_us_per_op"] for r in tab[SVC] if r])
                        uu = med([r[op]["cpu_us_per_op"] for r in tab[u] if r])
                        f = s / uu
                        T.append(
                            (
                                f"(1) `{u}` {op.upper()} c={conc}: svc-infra CPU/op ÷ unistore CPU/op",
                                f"{f:,.0f}×",
                                "≥ 50×",
                                "PASS" if f >= 50 else "MISS",
                            )
                        )

    # ---------------------------------------------------------------- large
    Lg = R.get("large", {})
    if Lg:
        add(f"## {p.get('large_mib')} MiB object: file → S3 (upload), S3 → file (download), fresh process each\n")
        add(
            "`peak Δ` = peak RSS during the transfer (VmHWM, reset just before it) minus the RSS just "
            "before it (the process baseline).\n"
        )
        add(
            "| client | how | upload MiB/s | ×raw | CPU s/GiB | peak Δ MiB | download MiB/s | ×raw | CPU s/GiB "
            "| peak Δ MiB | server CPU s/GiB (up / down) | others (cores) |"
        )
        add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        tabs = {mode: {n: ok_runs(v.get(mode, [])) for n, v in Lg.items()} for mode in ("put", "get")}
        refs = {mode: per_rep_best(tabs[mode], lambda r: r["mib_per_s"], best=max) for mode in ("put", "get")}
        for n in order(list(Lg), R):
            cells = []
            for mode in ("put", "get"):
                good = [r for r in tabs[mode][n] if r]
                if not good:
                    cells += ["failed", "", "", ""]
                    continue
                cells += [
                    cell([r["mib_per_s"] for r in good]),
                    ratio_cell(per_rep_ratio(tabs[mode][n], refs[mode], lambda r: r["mib_per_s"])),
                    cell([r["cpu_s_per_gib"] for r in good], 2),
                    cell([r["peak_delta_mib"] for r in good]),
                ]
            allg = [r for mode in ("put", "get") for r in tabs[mode][n] if r]
            srv = " / ".join(
                fmt(med([r["server_cpu_s_per_gib"] for r in tabs[mode][n] if r]), 2) for mode in ("put", "get")
            )
            oth = fmt(max((r["other_cores"] for r in allg), default=None), 2)
            add(f"| `{n}` | {R.get('transfer', {}).get(n, '')} | {' | '.join(cells)} | {srv} | {oth} (max) |")
        add("")
        for u in UNI:
            for mode, word in (("put", "upload"), ("get", "download")):
                runs = tabs[mode].get(u)
                if not runs or not any(runs):
                    continue
                pk = max(r["peak_delta_mib"] for r in runs if r)
                T.append(
                    (
                        f"(2) `{u}` {word}: peak RSS above baseline (worst rep)",
                        f"{pk:.0f} MiB",
                        "< 64 MiB",
                        "PASS" if pk < 64 else "MISS",
                    )
                )
                rs = per_rep_ratio(runs, refs[mode], lambda r: r["mib_per_s"])
                if rs:
                    v = med(rs)
                    T.append(
                        (
                            f"(2) `{u}` {word}: throughput vs fastest raw",
                            f"{v:.2f}×",
                            "≥ 0.90×",
                            "PASS" if v >= 0.9 else "MISS",
                        )
                    )

    # ---------------------------------------------------------------- list
    Ls = R.get("list", {})
    if Ls:
        n_keys = p.get("list_n")
        add(f"## Listing {n_keys:,} keys under one prefix\n")
        add("| client | seconds | ×raw | client CPU s | server CPU s | keys returned | others (cores) |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        tab = {n: ok_runs(v) for n, v in Ls.items()}
        ref = per_rep_best(tab, lambda r: r["wall_s"])
        for n in order(list(tab), R):
            good = [r for r in tab[n] if r]
            if not good:
                add(f"| `{n}` | failed | | | | | |")
                continue
            keys = min(r["keys"] for r in good)
            comp = "" if all(r["complete"] for r in good) else " **INCOMPLETE**"
            if n == SVC and not comp:
                comp = " (1 request, no pagination: **INCOMPLETE** on AWS S3 / moto, 1,000-key pages)"
            add(
                f"| `{n}` | {cell([r['wall_s'] for r in good], 3)} | "
                f"{ratio_cell(per_rep_ratio(tab[n], ref, lambda r: r['wall_s']))} | "
                f"{cell([r['cpu_s'] for r in good], 3)} | {fmt(med([r['server_cpu_s'] for r in good]), 3)} | "
                f"{keys:,}{comp} | {fmt(max(r['other_cores'] for r in good), 2)} (max) |"
            )
        add("")
        if SVC in tab and any(tab[SVC]):
            add(
                f"`{SVC}`: `list_keys(prefix, limit={n_keys})` sends ONE ListObjectsV2 with MaxKeys={n_keys} "
                "and never paginates (its default limit is 100). SeaweedFS honours MaxKeys above 1000, so "
                "here it can get every key in one response; AWS S3 (and moto) cap a page at 1000 keys, "
                "where it returns only the first 1000: counted as INCOMPLETE in the targets either way.\n"
            )
        for u in UNI:
            runs = tab.get(u)
            if not runs or not any(runs):
                continue
            complete = all(r["complete"] for r in runs if r)
            T.append(
                (
                    f"(3) `{u}` list: all {n_keys:,} keys returned",
                    "yes" if complete else "no",
                    "all keys",
                    "PASS" if complete else "MISS",
                )
            )
            rs = per_rep_ratio(runs, ref, lambda r: r["wall_s"])
            if rs:
                v = med(rs)
                T.append(
                    (f"(3) `{u}` list: time vs fastest raw", f"{v:.2f}×", "≤ 1.20×", "PASS" if v <= 1.2 else "MISS")
                )
        if SVC in tab and any(tab[SVC]):
            keys = min(r["keys"] for r in tab[SVC] if r)
            T.append(
                (
                    f"(3) `{SVC}` list (for reference)",
                    f"{keys:,} keys, 1 request, no pagination",
                    "all keys, paginated",
                    "INCOMPLETE",
                )
            )

    if T:
        add("## Targets (issue 3)\n")
        add("| target | measured | required | verdict |")
        add("|---|---:|---:|---|")
        for t in T:
            add(f"| {t[0]} | {t[1]} | {t[2]} | **{t[3]}** |")
        add("")
    if R.get("failures"):
        add("## Failures\n")
        for f in R["failures"]:
            add(f"- {f[:300]}")
        add("")
    return "\n".join(L)


def merge(files: list[str]) -> dict[str, Any]:
    R: dict[str, Any] = {}
    for f in files:
        with open(f) as fh:
            new = json.load(fh)
        if not R:
            R = new
            continue
        for k in ("small", "large", "list"):
            if k in new:
                R[k] = new[k]
        for k in ("labels", "groups", "transfer", "caps"):
            R.setdefault(k, {}).update(new.get(k, {}))
        R.setdefault("failures", []).extend(new.get("failures", []))
    return R


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(render(merge(sys.argv[1:])))

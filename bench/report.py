"""Results JSON (written by run.py) -> markdown tables and the target check.

    python bench/report.py results.json

Cells are ``median (min-max)`` over the repetitions. Ratios (``x ref``) are
computed per repetition against the reference measured in the same repetition
(the baseline of equal durability), and the median of those ratios is shown.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

DASH = "\u2013"
REF = {"nosync": "base", "fsync": "base-fsync", "mem": "base"}
Runs = list[dict[str, Any]]


def num(v: float | None) -> str:
    if v is None:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2g}"


def vals(runs: Runs, f: Callable[[dict[str, Any]], float]) -> list[float | None]:
    out: list[float | None] = []
    for r in runs:
        try:
            out.append(f(r) if r.get("ok") else None)
        except (KeyError, TypeError, ZeroDivisionError):
            out.append(None)
    return out


def cell(v: list[float | None], scale: float = 1.0) -> str:
    x = [a * scale for a in v if a is not None]
    if not x:
        return "n/a"
    m = statistics.median(x)
    return num(m) if len(x) == 1 else f"{num(m)} ({num(min(x))}{DASH}{num(max(x))})"


def ratios(a: list[float | None], b: list[float | None]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


def ratio_str(r: list[float], spread: bool = False) -> str:
    if not r:
        return "n/a"
    m = statistics.median(r)
    s = f"{m:.2f}x"
    if spread and len(r) > 1:
        s += f" ({min(r):.2f}{DASH}{max(r):.2f})"
    return s


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fail_note(runs: Runs) -> str:
    errs = [str(r.get("error", "")) for r in runs if not r.get("ok")]
    return f" **{len(errs)} failed**: {errs[0][:100]}" if errs else ""


class Report:
    def __init__(self, R: dict[str, Any]) -> None:
        self.R = R
        self.labels: dict[str, str] = R["labels"]
        self.groups: dict[str, str] = R["groups"]

    def ref(self, name: str) -> str:
        return REF[self.groups[name]]

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    # ------------------------------------------------------------ tables
    def small(self) -> str:
        S = self.R.get("small") or {}
        parts = []
        concs = sorted({int(c) for per in S.values() for c in per})
        for conc in concs:
            rows = []
            for name, per in S.items():
                runs = per.get(str(conc))
                if not runs:
                    continue
                ref = (S.get(self.ref(name)) or {}).get(str(conc)) or []
                row = [self.label(name) + fail_note(runs), self.ref(name)]
                for op in ("put", "get"):
                    v = vals(runs, lambda r, op=op: r[op]["ops_per_s"])
                    row += [
                        cell(v),
                        ratio_str(ratios(v, vals(ref, lambda r, op=op: r[op]["ops_per_s"]))),
                    ]
                for op in ("put", "get"):
                    row.append(cell(vals(runs, lambda r, op=op: r[op]["cpu_us_per_op"])))
                row.append(
                    cell(
                        vals(runs, lambda r: max(r["put"]["other_cores"], r["get"]["other_cores"]))
                    )
                )
                rows.append(row)
            n = self.R["params"]["small_n"]
            parts.append(
                f"#### 4 KiB objects, concurrency {conc}: {n:,} PUTs then {n:,} GETs\n\n"
                + table(
                    [
                        "client",
                        "ref",
                        "PUT ops/s",
                        "x ref",
                        "GET ops/s",
                        "x ref",
                        "PUT CPU µs/op",
                        "GET CPU µs/op",
                        "other processes (cores)",
                    ],
                    rows,
                )
            )
        return "\n\n".join(parts)

    def versus_old(self) -> str:
        """Each client measured on this tree against the same client on ``--old-src`` (``NAME@old``)."""
        S, L = self.R.get("small") or {}, self.R.get("large") or {}
        names = [n for n in self.labels if not n.endswith("@old") and f"{n}@old" in self.labels]
        rows = []
        for name in names:
            cases: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], Callable[[dict[str, Any]], float]]] = []
            for conc in sorted({int(c) for c in (S.get(name) or {})}):
                for op in ("put", "get"):
                    new = (S.get(name) or {}).get(str(conc)) or []
                    old = (S.get(f"{name}@old") or {}).get(str(conc)) or []
                    what = f"4 KiB {op.upper()} c={conc} (ops/s)"
                    cases.append((what, new, old, lambda r, op=op: r[op]["ops_per_s"]))
                    what = f"4 KiB {op.upper()} c={conc} (client CPU µs/op, lower is better)"
                    cases.append((what, new, old, lambda r, op=op: r[op]["cpu_us_per_op"]))
            for mode in ("put", "get"):
                new, old = (L.get(name) or {}).get(mode) or [], (L.get(f"{name}@old") or {}).get(mode) or []
                if new or old:
                    mib = self.R["params"]["large_mib"]
                    cases.append((f"{mib:,} MiB {mode} (MiB/s)", new, old, lambda r: r["mib_per_s"]))
            for what, new, old, f in cases:
                a, b = vals(new, f), vals(old, f)
                r = ratios(a, b)
                spread = f" ({min(r):.3f}{DASH}{max(r):.3f})" if len(r) > 1 else ""
                x = f"{statistics.median(r):.3f}x{spread}" if r else "n/a"
                rows.append([self.label(name), what, cell(a), cell(b), x])
        if not rows:
            return ""
        return "#### This tree vs the old tree (`--old-src`), side by side\n\n" + table(
            ["client", "case", "this tree", "old tree", "x old (per-rep median, range)"], rows
        )

    def large(self) -> str:
        L = self.R.get("large") or {}
        if not L:
            return ""
        mib = self.R["params"]["large_mib"]
        parts = []
        for mode, title in (
            ("put", "Upload: file on disk -> store"),
            ("get", "Download: store -> file on disk"),
        ):
            rows = []
            for name, per in L.items():
                runs = per.get(mode) or []
                ref = (L.get(self.ref(name)) or {}).get(mode) or []
                v = vals(runs, lambda r: r["mib_per_s"])
                rows.append(
                    [
                        self.label(name) + fail_note(runs),
                        self.ref(name),
                        cell(vals(runs, lambda r: r["wall_s"])),
                        cell(v),
                        ratio_str(ratios(v, vals(ref, lambda r: r["mib_per_s"]))),
                        cell(vals(runs, lambda r: r["cpu_s_per_gib"])),
                        cell(vals(runs, lambda r: r["user_s_per_gib"])),
                        cell(vals(runs, lambda r: r["peak_rss_mib"])),
                        cell(vals(runs, lambda r: r["peak_delta_mib"])),
                        cell(vals(runs, lambda r: r["other_cores"])),
                    ]
                )
            parts.append(
                f"**{title}**\n\n"
                + table(
                    [
                        "client",
                        "ref",
                        "seconds",
                        "MiB/s",
                        "x ref",
                        "client CPU s/GiB",
                        "of which user s/GiB",
                        "peak RSS MiB",
                        "peak above pre-op RSS MiB",
                        "other processes (cores)",
                    ],
                    rows,
                )
            )
        rows = [[self.label(n), self.R["transfer"].get(n, "")] for n in L]
        parts.append(table(["client", "how the object is moved"], rows))
        reps = self.R["params"].get("large_reps")
        return (
            f"#### One {mib:,} MiB object, {reps} repetition(s), fresh process per case\n\n"
            + "\n\n".join(parts)
        )

    def listing(self) -> str:
        Ls = self.R.get("list") or {}
        if not Ls:
            return ""
        base = Ls.get("base") or []
        rows = []
        for name, runs in Ls.items():
            w = vals(runs, lambda r: r["wall_s"])
            rows.append(
                [
                    self.label(name) + fail_note(runs),
                    cell(w),
                    ratio_str(ratios(w, vals(base, lambda r: r["wall_s"]))),
                    cell(vals(runs, lambda r: r["cpu_s"])),
                    cell(vals(runs, lambda r: r["keys"])),
                    cell(vals(runs, lambda r: r["other_cores"])),
                ]
            )
        n = self.R["params"]["list_n"]
        return (
            f"#### List {n:,} keys under one prefix (each store lists what it wrote itself)\n\n"
            + table(
                [
                    "client",
                    "seconds",
                    "x base (time, lower is better)",
                    "client CPU s",
                    "keys",
                    "other processes (cores)",
                ],
                rows,
            )
        )

    # ------------------------------------------------------------ targets
    def _small_runs(self, name: str, conc: int) -> Runs:
        return ((self.R.get("small") or {}).get(name) or {}).get(str(conc)) or []

    def _large_runs(self, name: str, mode: str) -> Runs:
        return ((self.R.get("large") or {}).get(name) or {}).get(mode) or []

    def targets(self) -> tuple[str, list[dict[str, Any]]]:
        rows: list[list[str]] = []
        checks: list[dict[str, Any]] = []

        def add(what: str, r: list[float], need: str, ok: bool | None) -> None:
            res = "n/a" if ok is None else ("PASS" if ok else "MISS")
            rows.append([what, ratio_str(r, spread=True), need, res])
            checks.append({"target": what, "ratios": r, "need": need, "result": res})

        def ratio_check(
            what: str, a: Runs, b: Runs, f: Callable[[dict[str, Any]], float], need: float
        ) -> None:
            r = ratios(vals(a, f), vals(b, f))
            add(what, r, f">= {need:g}x", statistics.median(r) >= need if r else None)

        ops = lambda op: lambda r: r[op]["ops_per_s"]  # noqa: E731
        concs = sorted({int(c) for per in (self.R.get("small") or {}).values() for c in per})
        for conc in concs:
            ratio_check(
                f"local 4 KiB PUT c={conc}, fsync off: unistore-local / base",
                self._small_runs("unistore-local", conc),
                self._small_runs("base", conc),
                ops("put"),
                0.8,
            )
            ratio_check(
                f"local 4 KiB PUT c={conc}, fsync on: unistore-local-fsync / base-fsync",
                self._small_runs("unistore-local-fsync", conc),
                self._small_runs("base-fsync", conc),
                ops("put"),
                0.8,
            )
            ratio_check(
                f"local 4 KiB PUT c={conc}: unistore-local / svc-infra-local",
                self._small_runs("unistore-local", conc),
                self._small_runs("svc-infra-local", conc),
                ops("put"),
                2.0,
            )
            ratio_check(
                f"local 4 KiB GET c={conc}: unistore-local / base",
                self._small_runs("unistore-local", conc),
                self._small_runs("base", conc),
                ops("get"),
                0.9,
            )
        for name, ref in (("unistore-local", "base"), ("unistore-local-fsync", "base-fsync")):
            for mode in ("put", "get"):
                if name.endswith("fsync") and mode == "get":
                    continue  # same read path as fsync=False
                runs = self._large_runs(name, mode)
                ratio_check(
                    f"1 GiB streamed {mode.upper()} MiB/s: {name} / {ref}",
                    runs,
                    self._large_runs(ref, mode),
                    lambda r: r["mib_per_s"],
                    0.7,
                )
                peaks = [v for v in vals(runs, lambda r: r["peak_rss_mib"]) if v is not None]
                if peaks:
                    ok = max(peaks) < 64
                    rows.append(
                        [
                            f"1 GiB streamed {mode.upper()} peak RSS: {name}",
                            f"{num(statistics.median(peaks))} MiB (max {num(max(peaks))})",
                            "< 64 MiB",
                            "PASS" if ok else "MISS",
                        ]
                    )
                    checks.append(
                        {
                            "target": rows[-1][0],
                            "values": peaks,
                            "need": "< 64 MiB",
                            "result": rows[-1][3],
                        }
                    )
        for conc in concs:
            a, b = self._small_runs("unistore-mem", conc), self._small_runs("svc-infra-mem", conc)
            both = lambda r: 1.0 / (r["put"]["wall_s"] + r["get"]["wall_s"])  # noqa: E731
            ratio_check(
                f"memory 4 KiB PUT+GET c={conc} (ops/s over both): unistore-mem / svc-infra-mem",
                a,
                b,
                both,
                1.0,
            )
        text = (
            "#### Targets (issue 2)\n\nRatios are medians of per-repetition ratios (min"
            f"{DASH}max); peak RSS uses the worst repetition.\n\n"
            + table(["target", "measured", "needed", "result"], rows)
        )
        return text, checks

    # ------------------------------------------------------------ all
    def render(self) -> str:
        m = self.R.get("meta", {})
        v = m.get("versions", {})
        head = [
            "### unistore benchmark",
            "",
            f"Run {m.get('started', '?')}, {m.get('elapsed_s', 0) / 60:.1f} min "
            f"(of which {m.get('waited_for_quiet_s', 0):.0f} s waiting for a quiet machine); "
            f"{m.get('cpus')} CPUs, Python {m.get('python')}, kernel {m.get('kernel')}; "
            f"reps {m.get('reps')}, large reps {m.get('large_reps')}; "
            + ", ".join(f"{k} {x}" for k, x in v.items())
            + f"; unistore tree {m.get('git', '?')}, measured from a copy: "
            + f"{m.get('snapshot', '?')}.",
            "",
            "`ref` is the baseline of equal durability each row is compared with (`base`: "
            "plain open/write + rename in `asyncio.to_thread`, no fsync; `base-fsync`: "
            "fsync file + rename + fsync dir). Rows whose 'other processes' is well above "
            "0.1 core were disturbed by other jobs on the machine.",
        ]
        targets, _ = self.targets()
        parts = ["\n".join(head), self.versus_old(), targets, self.small(), self.large(), self.listing()]
        if self.R.get("failures"):
            parts.append("**Failures**\n\n" + "\n".join(f"* {f}" for f in self.R["failures"]))
        return "\n\n".join(p for p in parts if p) + "\n"


def render(R: dict[str, Any]) -> str:
    return Report(R).render()


def main() -> None:
    R: dict[str, Any] = {}
    for p in sys.argv[1:]:
        with open(p) as f:
            R.update(json.load(f))
    print(render(R))


if __name__ == "__main__":
    main()

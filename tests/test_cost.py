"""Cost: projections from a real store's listing and a real Observe scrape, the recommendation,
the price table and its override, ``unistore cost``, the alerting rules (promtool) and the dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from unistore import ConfigurationError, InvalidArgumentError, LocalBackend, NotFoundError
from unistore.cli import app
from unistore.cost import (
    GB,
    Usage,
    load_prices,
    month_seconds,
    project,
    project_all,
    recommend,
    scan_usage,
    usage_from_metrics,
)
from unistore.cost._calc import OPERATION_KIND
from unistore.layers import Observe
from unistore.testing import free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "unistore-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "unistore-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "unistore-dashboard.json"
SIZES = {"a/big.bin": 3 * 2**20, "a/mid.bin": 2**20, "c/small.txt": 1000}
STORED = sum(SIZES.values())
runner = CliRunner()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "store"

    async def fill() -> None:
        async with LocalBackend(base_path=str(root)) as store:
            for key, size in SIZES.items():
                await store.put_object(key, os.urandom(size))

    asyncio.run(fill())
    return root


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


# --- projection from a real listing -----------------------------------------------------------


async def test_scan_of_a_local_store_and_the_bill_per_provider(store_dir: Path) -> None:
    async with LocalBackend(base_path=str(store_dir)) as store:
        scanned = await scan_usage(store)
    assert (scanned.stored_bytes, scanned.objects) == (STORED, 3)
    assert (scanned.small_objects, scanned.small_bytes) == (1, 1000)
    usage = Usage(**{**scanned.__dict__, "puts": 200_000, "lists": 10_000, "gets": 1_000_000, "egress_bytes": 500 * GB})
    prices = load_prices()
    by = {p.key: p for p in project_all(usage, prices)}
    gb = STORED / GB
    s3 = by["s3-standard"]
    assert s3.storage == pytest.approx(gb * 0.023)
    assert s3.requests == pytest.approx((200_000 * 0.005 + 10_000 * 0.005 + 1_000_000 * 0.0004) / 1000)
    assert s3.egress == pytest.approx((500 - 100) * 0.09)  # the first 100 GB a month are free
    assert s3.total == pytest.approx(s3.storage + 1.45 + 36.0)
    ia = by["s3-ia"]  # the 1,000-byte object is billed as 128 KiB; reads pay retrieval
    assert ia.storage == pytest.approx((STORED - 1000 + 128 * 1024) / GB * 0.0125)
    assert ia.other == pytest.approx(500 * 0.01)
    b2 = by["b2"]  # egress free up to three times the stored volume; puts free
    assert b2.egress == pytest.approx((500 - 3 * gb) * 0.01)
    assert b2.requests == pytest.approx((10_000 * 0.004 + (1_000_000 - 75_000) * 0.0004) / 1000)  # 2,500 free a day
    assert by["r2"].total == 0.0  # inside R2's free tier: 10 GB, 1M class A, 10M class B
    wasabi = by["wasabi"]  # the 1 TB monthly minimum; 500 GB sent of 4 MiB stored breaks its egress policy
    assert wasabi.storage == pytest.approx(1024 * 0.006826)
    assert not wasabi.fits
    spaces = by["spaces"]
    assert (spaces.total, spaces.fits) == (5.0, True)
    assert by["cloudinary"].total == 249.0  # 500 credits: over Plus (225), within Advanced (600)
    totals = [p.total for p in project_all(usage, prices) if p.total is not None and p.fits]
    assert totals == sorted(totals)


def test_cloudinary_takes_the_smallest_plan_that_holds_the_credits() -> None:
    price = load_prices().providers["cloudinary"]
    assert project(Usage(stored_bytes=10 * GB, egress_bytes=10 * GB), price).total == 0.0
    assert project(Usage(stored_bytes=100 * GB, egress_bytes=100 * GB), price).total == 99.0
    assert project(Usage(stored_bytes=400 * GB, egress_bytes=100 * GB), price).total == 249.0
    over = project(Usage(stored_bytes=700 * GB), price)
    assert over.total is None and not over.fits


def test_minimum_storage_duration_charges_early_deletes() -> None:
    prices = load_prices()
    usage = Usage(stored_bytes=2048 * GB, objects=10_000, deleted_bytes=300 * GB, deleted_age_days=30)
    by = {p.key: p for p in project_all(usage, prices)}
    assert prices.providers["wasabi"].min_days == 90
    assert by["wasabi"].other == pytest.approx(300 * 60 / 30 * 0.006826)  # 60 days left of Wasabi's 90
    assert by["s3-glacier-ir"].other == pytest.approx(300 * 60 / 30 * 0.004)
    assert by["s3-ia"].other == 0.0  # 30-day minimum already served
    assert by["s3-standard"].other == 0.0
    old = {p.key: p for p in project_all(Usage(**{**usage.__dict__, "deleted_age_days": 120}), prices)}
    assert old["wasabi"].other == 0.0


async def test_recommendation_follows_egress(store_dir: Path) -> None:
    async with LocalBackend(base_path=str(store_dir)) as store:
        scanned = await scan_usage(store)
    prices = load_prices()

    def pick(**changes: float) -> str:
        usage = Usage(**{**scanned.__dict__, **changes})
        return recommend(usage, project_all(usage, prices)).key

    assert pick(egress_bytes=0, gets=0) == "s3-glacier-ir"  # cold: archive; Glacier IR beats Wasabi's 1 TB minimum
    assert pick(egress_bytes=20 * GB, gets=50_000) == "spaces"  # small and read: one flat fee
    assert pick(egress_bytes=500 * GB, gets=1_000_000) == "r2"  # hot, high egress: no egress fees
    big = {"stored_bytes": 5000 * GB, "objects": 1_000_000}
    assert pick(**big, egress_bytes=10 * GB, gets=0) == "s3-glacier-ir"
    assert pick(**big, egress_bytes=10_000 * GB, gets=10_000_000) == "r2"
    within_b2 = Usage(stored_bytes=2000 * GB, objects=1000, egress_bytes=3000 * GB, gets=1000)
    choice = recommend(within_b2, project_all(within_b2, prices))
    assert choice.key == "r2" and "Backblaze B2 projects less" in choice.reason  # B2: egress free up to 3x stored
    warm = Usage(stored_bytes=5000 * GB, objects=1_000_000, egress_bytes=1000 * GB, gets=5_000_000)
    projections = project_all(warm, prices)
    choice = recommend(warm, projections)
    assert choice.access == "warm"
    assert choice.total == min(p.total for p in projections if p.total is not None and p.fits)


# --- the price table --------------------------------------------------------------------------


def test_packaged_table_is_dated_and_cites_sources() -> None:
    table = load_prices()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", table.checked)
    wanted = {"s3-standard", "s3-ia", "s3-glacier-ir", "r2", "b2", "wasabi", "spaces", "gcs-standard"}
    assert wanted | {"gcs-nearline", "cloudinary"} <= set(table.providers)
    for price in table.providers.values():
        assert price.source.startswith("https://"), price.key
    wasabi = table.providers["wasabi"]
    assert (wasabi.min_days, wasabi.fair_egress_ratio, wasabi.egress) == (90, 1, 0)


def test_user_table_overrides_field_by_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "prices.toml"
    mine.write_text(
        'checked = "2030-01-01"\n[providers.r2]\nstorage = 0.02\n'
        '[providers.minio]\nname = "Our MinIO"\nstorage = 0.001\nsource = "https://example.com"\n'
    )
    table = load_prices(mine)
    assert table.checked == "2030-01-01"
    assert table.providers["r2"].storage == 0.02 and table.providers["r2"].put == 0.0045
    assert table.providers["minio"].name == "Our MinIO"
    monkeypatch.setenv("UNISTORE_PRICES", str(mine))
    assert load_prices().providers["r2"].storage == 0.02
    mine.write_text("[providers.r2]\nstorage = -1\n")
    with pytest.raises(ConfigurationError, match=r"r2\.storage"):
        load_prices(mine)
    mine.write_text("[providers.r2]\nstorge = 1\n")
    with pytest.raises(ConfigurationError, match="storge"):
        load_prices(mine)
    with pytest.raises(ConfigurationError):
        load_prices(tmp_path / "missing.toml")


def test_month_lengths() -> None:
    assert month_seconds("2026-02") == 28 * 86400
    assert month_seconds("2028-02") == 29 * 86400
    for bad in ("2026-13", "26-01", "soon"):
        with pytest.raises(InvalidArgumentError):
            month_seconds(bad)


# --- from a real Observe scrape ---------------------------------------------------------------


async def _exercise(store: Observe) -> None:
    for key, size in SIZES.items():
        await store.put_object(key, os.urandom(size))
    assert len(await store.get("a/big.bin")) == SIZES["a/big.bin"]
    await store.head("a/mid.bin")
    with pytest.raises(NotFoundError):
        await store.get("missing")
    assert [k async for k in store.iter_keys("a/")] == ["a/big.bin", "a/mid.bin"]
    await store.remove("a/mid.bin")
    await store.sign_url("c/small.txt")
    usage = await store.measure_usage()
    assert (usage.stored_bytes, usage.objects) == (STORED - SIZES["a/mid.bin"], 2)


def _scrape(registry: CollectorRegistry, tmp_store: Path | None = None) -> tuple[str, str]:
    metrics = FastAPI()
    metrics.mount("/metrics", make_asgi_app(registry))
    port = free_port()
    with running_server(metrics, port):
        url = f"http://127.0.0.1:{port}/metrics/"
        text = httpx.get(url).text
        code, out, err = cli("cost", "--from-metrics", url, "--window", "86400", "--month", "2026-02", "--json")
        assert code == 0, err
        assert "unistore_stored_bytes" not in err  # measure_usage ran: the gauge is there
        scan = f"file://{tmp_store}" if tmp_store is not None else None
        if scan is not None:  # stored volume from a listing, the month's requests from the metrics
            code, both, err = cli("cost", "--from-metrics", url, "--scan", scan, "--window", "86400", "--json")
            assert code == 0, err
            report = json.loads(both)
            assert report["usage"]["stored_bytes"] == STORED and report["usage"]["objects"] == 3
            assert report["usage"]["puts"] > 0 and " and listing of " in report["source"]
    return text, out


def test_cost_from_a_scrape_of_observe(tmp_path: Path, store_dir: Path) -> None:
    registry = CollectorRegistry()
    store = Observe(LocalBackend(base_path=str(tmp_path / "s")), metrics=registry)
    asyncio.run(_exercise(store))
    text, out = _scrape(registry, store_dir)
    usage, window = usage_from_metrics(text, window=86400, month="2026-02")
    assert window == 86400
    assert (usage.stored_bytes, usage.objects) == (STORED - SIZES["a/mid.bin"], 2)
    # a day of counters, 28 days in February: puts 3, gets (2 opens + 1 head), lists (1 + measure_usage's 1), 1 delete
    assert (usage.puts, usage.gets, usage.lists, usage.deletes) == (3 * 28, 3 * 28, 2 * 28, 28)
    assert usage.egress_bytes == SIZES["a/big.bin"] * 28
    seen = {
        s.labels["operation"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "unistore_requests_total"
    }
    assert seen == {"put", "open", "head", "list", "remove", "sign_url"}
    assert seen - {"sign_url"} <= set(OPERATION_KIND)  # signing is local: never billed
    assert set(OPERATION_KIND) >= {"copy", "replace_metadata", "ping"}
    other, _ = usage_from_metrics(text, backend="S3Backend", window=86400)
    assert other.puts == 0 and other.stored_bytes == 0
    report = json.loads(out)
    assert report["month_days"] == 28
    assert report["usage"]["puts"] == 3 * 28
    s3 = next(p for p in report["providers"] if p["key"] == "s3-standard")
    assert s3["requests"] == pytest.approx((3 * 28 * 0.005 + 3 * 28 * 0.0004 + 2 * 28 * 0.005) / 1000)
    with pytest.raises(InvalidArgumentError):
        usage_from_metrics("this is { not metrics", window=1)


# --- the command line -------------------------------------------------------------------------


def test_cost_command_scans_a_store_and_recommends(store_dir: Path, tmp_path: Path) -> None:
    url = f"file://{store_dir}"
    load = ("--puts", "200000", "--lists", "10000", "--gets", "1000000")
    code, out, err = cli("cost", "--scan", url, "--egress-gb", "500", *load, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["usage"]["stored_bytes"] == STORED and report["usage"]["objects"] == 3
    s3 = next(p for p in report["providers"] if p["key"] == "s3-standard")
    assert s3["total"] == pytest.approx(STORED / GB * 0.023 + 1.45 + 36.0)
    assert report["recommendation"]["key"] == "r2"
    code, out, _ = cli("cost", "--scan", url, "--json")
    assert json.loads(out)["recommendation"]["key"] == "s3-glacier-ir"
    code, out, _ = cli("cost", "--scan", url, "--egress-gb", "500", *load)
    assert code == 0
    assert "Cloudflare R2 *" in out and "Recommended: Cloudflare R2" in out and "AWS S3" in out
    mine = tmp_path / "p.toml"
    mine.write_text("[providers.r2]\nstorage = 100.0\nfree_storage = 0\n")
    code, out, _ = cli("cost", "--scan", url, "--stored-gb", "10", "--json", env={"UNISTORE_PRICES": str(mine)})
    r2 = next(p for p in json.loads(out)["providers"] if p["key"] == "r2")
    assert r2["storage"] == pytest.approx(1000.0)
    mine.write_text("[providers.r2\n")
    code, _, err = cli("cost", "--scan", url, "--prices", str(mine))
    assert code == 8 and "price table" in err and "Traceback" not in err
    code, _, err = cli("cost", "--scan", f"file://{tmp_path / 'nothing'}")
    assert code == 3
    code, _, err = cli("cost", "--scan", url, "--from-metrics", "http://127.0.0.1:9/metrics")
    assert code == 7 and "cannot reach" in err
    code, _, err = cli("cost", "--scan", url, "--access", "tepid")
    assert code == 2


# --- alerting rules and dashboard -------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from Debian's ``prometheus`` package, installed when missing and running as root
    (as ``make test-tools`` does); never skipped."""
    found = shutil.which("promtool")
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (or make test-tools as root)")
    return found


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert {"UnistoreErrorRatio", "UnistoreLatencyP99", "UnistoreStorageGrowth", "UnistoreEgressSpike"} <= tested


def _exported(tmp_path: Path) -> set[str]:
    """Every series name a real Observe registry exports after some operations."""
    registry = CollectorRegistry()
    asyncio.run(_exercise(Observe(LocalBackend(base_path=str(tmp_path / "s")), metrics=registry, hot_keys=3)))
    text, _ = _scrape(registry)
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}  # families without samples yet (e.g. part failures)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bunistore_[a-z_]+\b", expr))


def test_dashboard_and_rules_use_only_exported_metrics(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    assert {"unistore_stored_bytes", "unistore_stored_objects", "unistore_requests_total"} <= exported
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used and used <= exported, used - exported
    assert {"unistore_stored_bytes", "unistore_bytes_total", "unistore_request_duration_seconds_bucket"} <= used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    in_rules = set().union(*(_metric_names(r["expr"]) for r in rules))
    assert in_rules and in_rules <= exported, in_rules - exported


def test_metrics_without_a_usage_scan_say_so(tmp_path: Path) -> None:
    registry = CollectorRegistry()

    async def one_put() -> None:
        await Observe(LocalBackend(base_path=str(tmp_path / "s")), metrics=registry).put_object("k", b"x" * 10)

    asyncio.run(one_put())
    metrics = FastAPI()
    metrics.mount("/metrics", make_asgi_app(registry))
    with running_server(metrics, free_port()) as base:
        code, out, err = cli("cost", "--from-metrics", f"{base}/metrics/", "--window", "3600", "--json")
    assert code == 0, err
    assert "no unistore_stored_bytes in the metrics" in err
    assert json.loads(out)["usage"]["puts"] == pytest.approx(month_seconds() / 3600)


def test_service_measures_its_store_on_a_timer(store_dir: Path) -> None:
    """UNISTORE_USAGE_SCAN_INTERVAL: the service lists its store on a timer, so its /metrics carry the
    stored volume that ``unistore cost --from-metrics`` and the storage-growth alert read."""
    from unistore.service import ServiceSettings, create_app

    settings = ServiceSettings.from_env(
        {"UNISTORE_AUTH": "off", "UNISTORE_METRICS": "open", "UNISTORE_USAGE_SCAN_INTERVAL": "0.2"}
    )
    assert settings.usage_scan_interval == 0.2
    service = create_app(LocalBackend(base_path=str(store_dir)), settings=settings)
    with running_server(service, free_port()) as url, httpx.Client(base_url=url) as c:
        assert c.put("/v1/objects/new.bin", content=b"n" * 5000).status_code == 201
        for _ in range(100):
            got = {
                s.name: s.value
                for family in text_string_to_metric_families(c.get("/metrics").text)
                for s in family.samples
                if s.name.startswith("unistore_stored_")
            }
            if got.get("unistore_stored_objects") == 4:
                break
            time.sleep(0.05)
        assert got == {"unistore_stored_objects": 4, "unistore_stored_bytes": STORED + 5000}
        code, out, err = cli("cost", "--from-metrics", f"{url}/metrics", "--window", "3600", "--json")
    assert code == 0, err
    assert json.loads(out)["usage"]["stored_bytes"] == STORED + 5000
    with pytest.raises(ConfigurationError):
        ServiceSettings(auth=False, usage_scan_interval=0)

"""dask, zarr and xarray through ``unistore…`` URLs: on S3 (SeaweedFS) and through an
Encrypt+Cache layer stack, each written and read back."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
from fsspec.asyn import get_loop, sync

from unistore.encryption import Encrypt, LocalKeyring
from unistore.fsspec import PROTOCOLS, UnistoreFileSystem, register_store, unregister_store
from unistore.layers import Cache
from unistore.testing._s3servers import S3Server

dd = pytest.importorskip("dask.dataframe")
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")

pytestmark = pytest.mark.xdist_group("fsspec-datatools")


@pytest.fixture(autouse=True)
def _protocols() -> None:
    for name in PROTOCOLS:
        fsspec.register_implementation(name, UnistoreFileSystem, clobber=True)


@pytest.fixture(params=["s3", "encrypt+cache"])
def where(request: pytest.FixtureRequest, seaweed: S3Server) -> Iterator[tuple[str, dict[str, Any]]]:
    """A base URL and its ``storage_options``: a bucket on S3, or a named Encrypt+Cache stack."""
    pfx = f"datatools-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        opts = {"endpoint": seaweed.endpoint, "access_key": seaweed.access_key, "secret_key": seaweed.secret_key}
        yield f"unistore+s3://unistore-tests/{pfx}", opts
        _close_cached()
        return
    raw = seaweed.backend(prefix=pfx + "/")
    name = f"secure-{pfx}"
    register_store(name, Encrypt(Cache(raw), LocalKeyring({"k1": os.urandom(32)})))
    try:
        yield f"unistore://{name}", {}
        # stored encrypted: no file of the stack holds its plain format's magic bytes
        plain = UnistoreFileSystem(raw)
        for key in plain.find(""):
            head = plain.cat_file(key, 0, 64)
            assert b"PAR1" not in head and b'"zarr_format"' not in head, key
    finally:
        unregister_store(name)
        sync(UnistoreFileSystem(raw).loop, raw.aclose)


def _close_cached() -> None:
    """Close the clients of the filesystems fsspec made from URLs (each closes its sessions on
    every event loop it was used on: fsspec's own and zarr's)."""
    for fs in list(UnistoreFileSystem._cache.values()):
        if fs.url is not None:
            sync(get_loop(), fs.backend.aclose)
    UnistoreFileSystem.clear_instance_cache()


def test_dask_reads_parquet_over_16_files(where: tuple[str, dict[str, Any]]) -> None:
    base, opts = where
    fs, root = fsspec.core.url_to_fs(base, **opts)
    for i in range(16):
        part = pd.DataFrame({"id": range(i * 100, (i + 1) * 100), "group": i % 4, "x": [i / 7] * 100})
        with fs.open(f"{root}/sales/part-{i:02}.parquet", "wb") as f:
            part.to_parquet(f, engine="pyarrow", index=False)
    assert len(fs.glob(f"{root}/sales/*.parquet")) == 16
    frame = dd.read_parquet(f"{base}/sales/", storage_options=opts, engine="pyarrow")
    assert frame.npartitions >= 1
    got = frame.compute().sort_values("id").reset_index(drop=True)
    assert len(got) == 1600 and got["id"].tolist() == list(range(1600))
    by_group = frame.groupby("group")["id"].count().compute().sort_index()
    assert by_group.tolist() == [400, 400, 400, 400]


def test_zarr_array_written_and_read(where: tuple[str, dict[str, Any]]) -> None:
    base, opts = where
    data = np.arange(200 * 300, dtype="float64").reshape(200, 300)
    arr = zarr.open_array(
        f"{base}/cube.zarr", mode="w", shape=data.shape, chunks=(64, 64), dtype="f8", storage_options=opts
    )
    arr[:] = data
    back = zarr.open_array(f"{base}/cube.zarr", mode="r", storage_options=opts)
    assert back.shape == (200, 300) and back.chunks == (64, 64)
    np.testing.assert_array_equal(back[:], data)
    np.testing.assert_array_equal(back[70:130, 5:250], data[70:130, 5:250])
    fs, root = fsspec.core.url_to_fs(base, **opts)
    assert len([k for k in fs.find(f"{root}/cube.zarr") if "/c/" in k]) == 4 * 5  # one object per chunk


def test_xarray_dataset_written_and_read(where: tuple[str, dict[str, Any]]) -> None:
    base, opts = where
    # xarray takes only letters and digits for a URL's scheme: a ``unistore+s3://`` URL goes in
    # as a mapper (a ``unistore://NAME`` URL works as it is)
    target: Any = fsspec.get_mapper(f"{base}/weather.zarr", **opts) if "+" in base else f"{base}/weather.zarr"
    kw: dict[str, Any] = {} if "+" in base else {"storage_options": opts}
    times = pd.date_range("2026-01-01", periods=48, freq="h")
    temp = np.linspace(-5.0, 25.0, 48 * 10 * 12).reshape(48, 10, 12)
    ds = xr.Dataset(
        {"temperature": (("time", "lat", "lon"), temp, {"units": "degC"})},
        coords={"time": times, "lat": np.linspace(40, 49, 10), "lon": np.linspace(0, 11, 12)},
        attrs={"title": "hourly grid"},
    )
    ds.chunk({"time": 12}).to_zarr(target, mode="w", consolidated=True, **kw)
    back = xr.open_zarr(target, consolidated=True, **kw)
    assert back.attrs["title"] == "hourly grid" and back["temperature"].attrs["units"] == "degC"
    xr.testing.assert_identical(back.load(), ds)
    daily = back["temperature"].sel(time="2026-01-02").mean().item()
    assert daily == pytest.approx(float(temp[24:48].mean()))

"""Worker of bench/engines.py: one engine, one concurrency, prints JSON {op: [cpu_us, ops_s]}."""
# ruff: noqa
import asyncio, os, sys, time, json, resource, hashlib, hmac, datetime
from urllib.parse import quote
engine, endpoint, ak, sk, bucket, conc, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
data = os.urandom(4096)

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

async def make():
    if engine.startswith("aiobotocore"):
        from aiobotocore.session import get_session
        from botocore.config import Config
        kw = dict(max_pool_connections=64, s3={"addressing_style":"path"})
        if engine == "aiobotocore-tuned":
            kw.update(parameter_validation=False, request_checksum_calculation="when_required", response_checksum_validation="when_required")
        cm = get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk, config=Config(**kw))
        c = await cm.__aenter__()
        async def put(k): await c.put_object(Bucket=bucket, Key=k, Body=data)
        async def get(k):
            r = await c.get_object(Bucket=bucket, Key=k)
            async with r["Body"] as b: return await b.read()
        return put, get
    if engine == "obstore":
        from obstore.store import S3Store
        s = S3Store(bucket, endpoint=endpoint, access_key_id=ak, secret_access_key=sk, region="us-east-1", client_options={"allow_http": True}, virtual_hosted_style_request=False)
        import obstore
        async def put(k): await obstore.put_async(s, k, data)
        async def get(k):
            r = await obstore.get_async(s, k); return await r.bytes_async()
        return put, get
    if engine == "aiohttp-sigv4":
        import aiohttp
        sess = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        host = endpoint.split("//")[1]
        kdate = None
        def sign(method, path, headers):
            now = datetime.datetime.utcnow()
            amzdate = now.strftime("%Y%m%dT%H%M%SZ"); d = amzdate[:8]
            headers["x-amz-date"] = amzdate; headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"; headers["host"] = host
            sh = sorted(headers)
            canon = "\n".join([method, path, "", "".join(f"{h}:{headers[h]}\n" for h in sh), ";".join(sh), "UNSIGNED-PAYLOAD"])
            scope = f"{d}/us-east-1/s3/aws4_request"
            sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canon.encode()).hexdigest()])
            k = hmac.new(("AWS4"+sk).encode(), d.encode(), hashlib.sha256).digest()
            for x in ("us-east-1","s3","aws4_request"): k = hmac.new(k, x.encode(), hashlib.sha256).digest()
            sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
            headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={';'.join(sh)}, Signature={sig}"
            del headers["host"]
            return headers
        async def put(k):
            path = f"/{bucket}/{quote(k)}"
            async with sess.put(endpoint+path, data=data, headers=sign("PUT", path, {"content-type":"application/octet-stream"})) as r:
                assert r.status == 200, await r.text()
        async def get(k):
            path = f"/{bucket}/{quote(k)}"
            async with sess.get(endpoint+path, headers=sign("GET", path, {})) as r:
                assert r.status == 200; return await r.read()
        return put, get

async def main():
    put, get = await make()
    for i in range(5): await put(f"w{i}"); await get(f"w{i}")
    res = {}
    for opname, op in (("put", put), ("get", get)):
        keys = iter([f"{engine}/{conc}/{i}" for i in range(n)])
        async def w():
            for k in keys: await op(k)
        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(w() for _ in range(conc)))
        res[opname] = ((cpu()-c0)/n*1e6, n/(time.perf_counter()-t0))
    print(json.dumps(res))
asyncio.run(main())

"""The guide's S3 provider sections: "Intelligent Tiering" and "Multipart Uploads for Large Files".

Both reach past the common API: the first through the backend's raw client
(``storage._client``, an aiobotocore S3 client created on first use), the second with
its own aioboto3 session, as the guide writes it. unistore's own ``put_object`` does
parallel, bounded-memory multipart for any stream; these show the escape hatch.

The multipart example opens ``aioboto3.Session().client("s3")`` with no arguments, so it
takes the endpoint and credentials from the environment (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``...), as it would on AWS.
"""

# The guide's import lines are kept as written, so import sorting is off for this file.

# --- glue the guide leaves out -------------------------------------------------------------
import aiofiles

# --- the guide's code (import line changed to unistore) ------------------------------------
from unistore import S3Backend


async def put_with_intelligent_tiering(
    storage: S3Backend,
    key: str,
    data: bytes,
    content_type: str,
) -> str:
    """Store with Intelligent-Tiering for automatic cost optimization."""
    await storage._client.put_object(
        Bucket=storage.bucket,
        Key=key,
        Body=data,
        ContentType=content_type,
        StorageClass="INTELLIGENT_TIERING",
    )
    return await storage.get_url(key)


async def upload_large_file(
    storage: S3Backend,
    key: str,
    file_path: str,
    chunk_size: int = 100 * 1024 * 1024,  # 100MB chunks
) -> str:
    """Upload large file using multipart upload."""
    import aioboto3

    session = aioboto3.Session()
    async with session.client("s3") as s3:
        # Initiate multipart upload
        response = await s3.create_multipart_upload(
            Bucket=storage.bucket,
            Key=key,
        )
        upload_id = response["UploadId"]
        parts = []
        part_number = 1
        async with aiofiles.open(file_path, "rb") as f:
            while chunk := await f.read(chunk_size):
                # Upload part
                part = await s3.upload_part(
                    Bucket=storage.bucket,
                    Key=key,
                    PartNumber=part_number,
                    UploadId=upload_id,
                    Body=chunk,
                )
                parts.append(
                    {
                        "PartNumber": part_number,
                        "ETag": part["ETag"],
                    }
                )
                part_number += 1
        # Complete multipart upload
        await s3.complete_multipart_upload(
            Bucket=storage.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    return await storage.get_url(key)

"""S3 destination: Part-10 bytes as is under ``<prefix>/<study>/<series>/<sop>.dcm``, sha256 in metadata."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from pacsmig.config import ConnectionSpec
from pacsmig.errors import ConfigError
from pacsmig.load.base import (
    STORED,
    BaseDestination,
    Fatal,
    Item,
    PutResult,
    StoreAck,
    Transient,
    extra_float,
    extra_int,
)
from pacsmig.load.filesystem import instance_key

_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Destination(BaseDestination):
    """An S3 bucket (AWS, MinIO, moto) as an archive copy.

    Parameters
    ----------
    name
        Destination name (the connection id).
    bucket, prefix
        Where objects go: ``s3://bucket/prefix/<study>/<series>/<sop>.dcm``.
    client_kwargs
        ``endpoint_url``, ``region_name``, ``aws_access_key_id``, ``aws_secret_access_key``.
    """

    kind = "S3"

    def __init__(self, name: str, bucket: str, prefix: str = "", batch_size: int = 50, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0, **client_kwargs: Any) -> None:
        super().__init__(name, batch_size=batch_size, retries=retries, backoff=backoff)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # botocore's own retries are off: ours are bounded, logged and counted per batch.
        config = Config(retries={"max_attempts": 1, "mode": "standard"},
                        connect_timeout=min(timeout, 15.0), read_timeout=timeout)
        self.client = boto3.client("s3", config=config, **{k: v for k, v in client_kwargs.items() if v})

    @classmethod
    def from_connection(cls, conn: ConnectionSpec) -> S3Destination:
        """Build from an ``aws`` connection (extra bucket, prefix, endpoint_url, region_name)."""
        extra = conn.extra
        bucket = extra.get("bucket") or extra.get("bucket_name")
        if not bucket:
            raise ConfigError(f"connection {conn.conn_id}: extra.bucket is required for an S3 target")
        return cls(conn.conn_id, str(bucket), str(extra.get("prefix") or ""),
                   batch_size=extra_int(extra, "batch_size", 50), retries=extra_int(extra, "retries", 4),
                   backoff=extra_float(extra, "backoff", 1.0), timeout=extra_float(extra, "timeout", 60.0),
                   endpoint_url=extra.get("endpoint_url"),
                   region_name=extra.get("region_name") or "us-east-1",
                   aws_access_key_id=conn.login, aws_secret_access_key=conn.password)

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()

    def key(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
        """The object key of an instance."""
        key = instance_key(study_instance_uid, series_instance_uid, sop_instance_uid)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING_CODES:
                raise KeyError(kwargs.get("Key", "")) from exc
            if code in _TRANSIENT_CODES:
                raise Transient(f"S3 {code} on {what}") from exc
            raise Fatal(f"S3 {code} on {what}") from exc
        except (BotoConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise Transient(f"{type(exc).__name__} on {what}") from exc
        except BotoCoreError as exc:
            raise Fatal(f"{type(exc).__name__} on {what}") from exc

    def stored_sha256(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
        """The sha256 recorded in the object's metadata ("" if the object has none)."""
        head = self._call("HEAD", "head_object", Bucket=self.bucket,
                          Key=self.key(study_instance_uid, series_instance_uid, sop_instance_uid))
        return str(head.get("Metadata", {}).get("sha256", ""))

    def _put_one(self, item: Item) -> PutResult:
        key = self.key(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
        try:
            self._call("HEAD", "head_object", Bucket=self.bucket, Key=key)
            return PutResult("check", "object exists")
        except KeyError:
            pass
        answer = self._call("PUT", "put_object", Bucket=self.bucket, Key=key, Body=item.load(),
                            ContentType="application/dicom",
                            Metadata={"sha256": item.sha256, "sop-class-uid": item.sop_class_uid,
                                      "transfer-syntax-uid": item.transfer_syntax_uid})
        return PutResult(STORED, f"ETag {answer.get('ETag', '')} sha256={item.sha256}")

    def _list(self, study_instance_uid: str) -> dict[str, str]:
        prefix = f"{self.prefix}/{study_instance_uid}/" if self.prefix else f"{study_instance_uid}/"
        found: dict[str, str] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self._call("LIST", "list_objects_v2", **kwargs)
            except KeyError as exc:  # NoSuchBucket is a configuration error, not "no instances"
                raise Fatal(f"bucket {self.bucket} not found") from exc
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix):].split("/")
                if len(rest) == 2 and rest[1].endswith(".dcm"):
                    found[rest[1][:-4]] = rest[0]
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")

    def _get(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> bytes:
        answer = self._call("GET", "get_object", Bucket=self.bucket,
                            Key=self.key(study_instance_uid, series_instance_uid, sop_instance_uid))
        return bytes(answer["Body"].read())

    def _verify_existing(self, item: Item, series_uid: str, ok_status: str, why: str) -> StoreAck:
        """Trust identical recorded sha256 without downloading; otherwise compare the bytes."""
        try:
            recorded = self._retry(f"HEAD {item.sop_instance_uid}", lambda: self.stored_sha256(
                item.study_instance_uid, series_uid, item.sop_instance_uid))
        except KeyError:
            recorded = ""
        item.load()
        if recorded and recorded == item.sha256:
            return self._ack(item, ok_status, f"{why}; sha256 metadata identical {recorded[:16]}")
        return super()._verify_existing(item, series_uid, ok_status, why)

"""S3 destination against moto in server mode on loopback.

moto is the one mock in the load tests: AWS S3 cannot run here. It is used as a real HTTP
endpoint (``ThreadedMotoServer``), so boto3 does real requests, signing and pagination.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pydicom
import pytest
from moto.server import ThreadedMotoServer
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsmig.config import ConnectionSpec
from pacsmig.load import ALREADY_STORED_SAME, CONFLICT, FAILED, STORED, StoreFailed, open_destination
from pacsmig.load.compare import sha256
from pacsmig.load.s3 import S3Destination
from testbed.orthanc import free_port

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm"]


def sample(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_conn(endpoint: str, bucket: str, **extra: object) -> ConnectionSpec:
    return ConnectionSpec("cloud_copy", "aws", login="testing", password="testing",
                          extra={"bucket": bucket, "prefix": "pacsmig/", "endpoint_url": endpoint,
                                 "region_name": "us-east-1", **extra})


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"vna-{generate_uid(prefix=None)[-12:]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)
    return name


def test_s3_store_list_fetch_and_rerun(moto_endpoint: str, bucket: str) -> None:
    dest = open_destination(s3_conn(moto_endpoint, bucket))
    assert isinstance(dest, S3Destination)
    paths = [sample(n) for n in SAMPLES]
    acks = dest.store(paths)
    assert [a.status for a in acks] == [STORED] * 3 and all("ETag" in a.detail for a in acks)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = f"pacsmig/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        head = dest.client.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["sha256"] == sha256(path.read_bytes())
        assert dest.instances(ds.StudyInstanceUID) == {ds.SOPInstanceUID: ds.SeriesInstanceUID}
        assert dest.fetch(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == path.read_bytes()
    again = dest.store(paths)
    assert [a.status for a in again] == [ALREADY_STORED_SAME] * 3
    assert all("sha256 metadata identical" in a.detail for a in again)
    dest.close()


def test_s3_listing_follows_pagination(
        moto_endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = S3Destination("cloud_copy", bucket, "p", endpoint_url=moto_endpoint, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    study, series = generate_uid(), generate_uid()
    for i in range(5):
        dest.client.put_object(Bucket=bucket, Key=f"p/{study}/{series}/1.2.{i}.dcm", Body=b"x")
    dest.client.put_object(Bucket=bucket, Key=f"p/{study}/notes.txt", Body=b"x")  # not an instance key
    original = dest.client.list_objects_v2
    pages: list[int] = []

    def small_pages(**kwargs: object) -> dict:
        answer = original(MaxKeys=2, **kwargs)
        pages.append(answer["KeyCount"])
        return answer

    dest.client.list_objects_v2 = small_pages  # type: ignore[method-assign]
    assert dest.instances(study) == {f"1.2.{i}": series for i in range(5)}
    assert len(pages) == 3


def test_s3_conflict_is_detected_from_content(moto_endpoint: str, bucket: str, tmp_path: Path) -> None:
    dest = open_destination(s3_conn(moto_endpoint, bucket))
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.InstitutionName = "elsewhere"
    ds.save_as(tmp_path / "other.dcm")
    acks = dest.store([sample("CT_small.dcm"), tmp_path / "other.dcm"])
    assert [a.status for a in acks] == [STORED, CONFLICT]
    assert "InstitutionName differs" in acks[1].detail


def test_s3_missing_bucket_and_endpoint_down_raise_with_acks(moto_endpoint: str) -> None:
    paths = [sample(n) for n in SAMPLES]
    with pytest.raises(StoreFailed) as info:
        open_destination(s3_conn(moto_endpoint, "no-such-bucket", retries=1, backoff=0.01)).store(paths)
    assert info.value.not_stored == 3 and "refused" in str(info.value)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreFailed) as info:
        open_destination(s3_conn(down, "any", retries=2, backoff=0.01, timeout=2)).store(paths)
    assert [a.status for a in info.value.acks] == [FAILED] * 3
    assert "after 3 attempts" in str(info.value) and "cloud_copy" in str(info.value)

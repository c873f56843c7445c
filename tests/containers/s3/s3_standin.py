"""Stand-in for MinIO (and the compose file's minio-setup) in the container tests.

No registry is reachable on the development machines, so minio/minio and minio/mc cannot be
pulled. This serves moto's S3 API on :9000 with request signing and IAM policies enforced, set up
from the variables MinIO and minio-setup read:

- MINIO_ROOT_USER / MINIO_ROOT_PASSWORD: an administrator allowed everything;
- MINIO_BUCKET: the pipeline's bucket, created empty;
- S3_WORKER_ACCESS_KEY / S3_WORKER_SECRET_KEY, S3_PREFIX: a user with the policy minio-setup
  attaches, read from the same document (docker/worker-policy.json, mounted at POLICY): get, put,
  delete and list under the prefix; the bucket is versioned, as minio-setup makes it.

``serve`` runs the server; ``check`` (the minio-setup stand-in) waits until the worker user can
use its bucket. Everything lives in memory: a restart of this container starts empty.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

# Authentication from the first request on (moto's default is none at all).
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"

PORT = 9000
POLICY = "/etc/deepfake/worker-policy.json"


def _user(iam, name: str, key: str, secret: str, policy: dict) -> None:
    iam.create_user("us-east-1", name)
    iam.put_user_policy(name, f"{name}-policy", json.dumps(policy))
    access = iam.create_access_key(name)
    # MinIO takes the key and secret it is given; moto makes random ones, so set them here.
    del iam.access_keys[access.physical_resource_id]
    access.access_key_id, access.secret_access_key = key, secret
    iam.access_keys[access.physical_resource_id] = access


def provision() -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.s3.models import s3_backends

    env = os.environ
    bucket = env.get("MINIO_BUCKET", "deepfake")
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    everything = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
    with open(POLICY) as handle:  # the product's own policy document, as minio-setup reads it
        text = handle.read().replace("BUCKET", bucket)
    worker = json.loads(text.replace("PREFIX", env.get("S3_PREFIX", "pipeline")))
    _user(iam, "root", env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"], everything)
    _user(iam, "worker", env["S3_WORKER_ACCESS_KEY"], env["S3_WORKER_SECRET_KEY"], worker)
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    s3.create_bucket(bucket, "us-east-1")
    s3.put_bucket_versioning(bucket, "Enabled")


def serve() -> int:
    from moto.server import ThreadedMotoServer

    provision()
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=PORT, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"S3 stand-in (moto) listening on :{PORT}", flush=True)
    stop.wait()
    server.stop()
    return 0


def check(timeout: float = 60) -> int:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("S3_ENDPOINT", "http://minio:9000"),
        aws_access_key_id=os.environ["S3_WORKER_ACCESS_KEY"],
        aws_secret_access_key=os.environ["S3_WORKER_SECRET_KEY"],
        region_name="us-east-1",
    )
    bucket = os.environ.get("MINIO_BUCKET", "deepfake")
    prefix = os.environ.get("S3_PREFIX", "pipeline")
    deadline = time.monotonic() + timeout
    while True:
        try:  # a listing of the prefix, as the pipeline's storage check makes it
            client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1)
            print(f"bucket {bucket} ready for the worker user", flush=True)
            return 0
        except Exception as exc:  # not up yet, or not provisioned yet
            if time.monotonic() > deadline:
                print(f"bucket {bucket} not usable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit({"serve": serve, "check": check}[sys.argv[1] if len(sys.argv) > 1 else "serve"]())

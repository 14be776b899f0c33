"""Looking for credentials where they must never be: a shell that holds recognisable fake AWS
keys, a watch on every process's command line while jobs run, and a scan of files and S3
objects for the secret values."""

import threading
import time
import uuid
from pathlib import Path

import psutil

SECRET = f"ce-ray-secret-{uuid.uuid4().hex}"
SESSION = f"ce-ray-session-{uuid.uuid4().hex}"
MLFLOW_TOKEN = f"ce-ray-mlflow-{uuid.uuid4().hex}"
SECRETS = (SECRET, SESSION, MLFLOW_TOKEN)


def secret_shell(endpoint: str) -> dict[str, str]:
    """The AWS variables of a user's shell (secret key and session token included), the
    endpoint of the S3 API the results go to, and an MLflow token (a server without
    authentication ignores it)."""
    return {
        "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN,
        "AWS_ACCESS_KEY_ID": "AKIACERAYTESTKEY",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SESSION,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }


def holds_a_secret(data: bytes | str) -> bool:
    if isinstance(data, str):
        data = data.encode()
    return any(secret.encode() in data for secret in SECRETS)


class CommandLineWatch:
    """Every process's command line, read every 0.1 s until ``stop``."""

    def __init__(self):
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                line = " ".join(process.info["cmdline"] or [])
                if holds_a_secret(line):
                    at = max(line.find(secret) for secret in SECRETS)
                    self.leaks.append(line[max(0, at - 300) : at + 80])
            time.sleep(0.1)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return self.leaks


def files_holding_a_secret(directory: str | Path) -> list[str]:
    found = []
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_socket():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if holds_a_secret(data):
                found.append(str(path))
    return found


def s3_objects_holding_a_secret(client, bucket: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return [
        item["Key"]
        for item in listing
        if holds_a_secret(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    ]

"""Real stores on loopback for the download tests: the `olah` hub mirror (PyPI) serving local git repos
offline, as an air-gapped company runs it, and an S3-compatible server. Both installed by
`make install-stores`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatmodel_serving.launch import free_port
from tests.tools import ROOT, missing

STORES_PYTHON = ROOT / ".venv-stores" / "bin" / "python"  # olah and moto: their own pins
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
LFS_RULE = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, env=env, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit_folder(repo: Path, folder: Path, message: str) -> str:
    """Commit a model folder's files into a hub-layout git repo; *.safetensors go in as git-lfs does it
    (a pointer in git, the object under .git/lfs/objects, hard-linked, not copied). Returns the commit."""
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / ".gitattributes").write_text(LFS_RULE)
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        dest = repo / src.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix != ".safetensors":
            dest.write_bytes(src.read_bytes())
            continue
        oid = sha256_of(src)
        obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        if not obj.exists():
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, obj)
        size = src.stat().st_size
        dest.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def same_files(folder: Path, builtin: Path) -> None:
    """Every file of the built-in model's folder is in `folder`, byte for byte."""
    for f in builtin.iterdir():
        assert sha256_of(folder / f.name) == sha256_of(f), f.name


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)


@dataclass
class Hub:
    endpoint: str
    mirrors: Path  # <mirrors>/models/<org>/<name> are the git repos it serves

    def repo(self, repo_id: str, kind: str = "models") -> Path:
        return self.mirrors / kind / repo_id


@contextmanager
def olah_hub(root: Path, seed: str) -> Iterator[Hub]:
    """olah (offline mode) serving the git repos under root/mirrors; `seed` (org/name) must exist before
    the start, as olah answers its readiness probe only for a repo it has."""
    if not STORES_PYTHON.exists():
        missing("the olah hub mirror (.venv-stores)", "make install-stores")
    port = free_port()
    mirrors = root / "mirrors"
    config = root / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root}/repos"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n'
    )
    log = root / "olah.log"
    with log.open("wb") as out:
        cmd = [str(STORES_PYTHON), "-m", "olah.server", "-c", str(config), "--log-path", str(root / "logs")]
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            wait_http(f"{endpoint}/api/models/{seed}/revision/main", proc, log)
            yield Hub(endpoint, mirrors)
        finally:
            proc.terminate()
            proc.wait(15)


@contextmanager
def hub_serving(root: Path, repos: dict[str, Path]) -> Iterator[Hub]:
    """olah serving each folder committed as a repo: keys are "models/org/name" or "datasets/org/name"."""
    for key, folder in repos.items():
        commit_folder(root / "mirrors" / key, folder, f"{key}: {folder.name}")
    seed = next(k.split("/", 1)[1] for k in repos if k.startswith("models/"))
    with olah_hub(root, seed) as hub:
        yield hub


# moto's IAM answers this many requests unsigned (to create the test user), then checks every signature.
IAM_SETUP = """
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], aws_access_key_id="setup", aws_secret_access_key="setup",
                   region_name="us-east-1")
iam.create_user(UserName="chatmodel")
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
iam.put_user_policy(UserName="chatmodel", PolicyName="s3", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="chatmodel")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"""


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    pid: int  # the server's process: a test can freeze it (SIGSTOP) as a hung store

    def client(self) -> Any:
        from minio import Minio

        return Minio(self.endpoint.split("://", 1)[1], self.access_key, self.secret_key, secure=False)

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> None:
        """Each file in one part (its ETag is then its MD5) unless it is over 1 GiB."""
        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        for src in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix}/{src.relative_to(folder)}".lstrip("/")
            client.fput_object(bucket, key, str(src), part_size=1 << 30)


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    """moto's S3 server (see the README's "Models and data" for why not MinIO) with its IAM
    authentication on: wrong keys get S3's own 403 errors."""
    if not STORES_PYTHON.exists():
        missing("moto's S3 server (.venv-stores)", "make install-stores")
    port = free_port()
    log = root / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "1"}
    with log.open("wb") as out:
        cmd = [str(STORES_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            wait_http(f"{endpoint}/moto-api/", proc, log)
            done = subprocess.run(
                [str(STORES_PYTHON), "-c", IAM_SETUP, endpoint], check=True, capture_output=True, text=True
            )
            access, secret = done.stdout.split()
            yield S3Server(endpoint, access, secret, proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)

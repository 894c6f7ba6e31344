"""Stores at fsspec URLs (s3:// against a loopback moto server, memory://), and a DVC S3 remote."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_stores, free_port, interrupt_on_call, record_writes, small_params
from diffsketch.store import zarr_store as store
from diffsketch.store.collect import run_sample
from diffsketch.core.params import parse_params
from diffsketch.student.pairs import PairsError, _create, open_pairs, run_pairs

BUCKET = "diffsketch-test"
pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model is faster on one thread of busy cores


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on loopback with one empty bucket; yields its endpoint URL."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """Credentials and endpoint from the standard AWS variables only (no storage options in code)."""
    env = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=s3_server,
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{BUCKET}/{tmp_path.name}"  # a fresh prefix per test


# --- URLs without a server ------------------------------------------------------------------------


def test_locations():
    assert store.location("data/f.zarr") == Path("data/f.zarr")
    assert store.location("s3://b/f.zarr") == "s3://b/f.zarr"
    assert store.location(Path("s3://b/f.zarr")) == "s3://b/f.zarr"  # what a typer Path option makes of a URL
    assert store.location("file:///tmp/f.zarr") == Path("/tmp/f.zarr")
    assert store.location(Path("file:///tmp/f.zarr")) == Path("/tmp/f.zarr")
    assert store.location("memory://f.zarr") == "memory://f.zarr"
    assert store.location(Path("/tmp/a:/b")) == Path("/tmp/a:/b")
    assert store.is_url("gs://b/f.zarr") and not store.is_url("f.zarr") and not store.is_url("file:///f.zarr")


def test_pairs_store_at_a_memory_url():
    url = "memory://diffsketch-test/pairs.zarr"
    store.remove(url)
    with pytest.raises(PairsError, match="not found"):
        open_pairs(url)
    assert not store.is_group(url) and not store.has_content(url)
    root = _create(url, 3, 8, dict(seed=0, fingerprint="x"))
    root["images"][1] = 7
    root["complete"][1] = True
    again = open_pairs(url)
    assert again["complete"][:].tolist() == [False, True, False] and (again["images"][1] == 7).all()
    assert store.is_group(url) and store.disk_bytes(url) > 0
    store.remove(url)
    assert not store.exists(url)


def test_unknown_protocol_and_missing_package(monkeypatch):
    import importlib

    registry = importlib.import_module("fsspec.registry")  # the module (`fsspec.registry` is its mapping)
    with pytest.raises(store.StoreError, match="nosuch://b/f.zarr"):
        store.check_writable("nosuch://b/f.zarr")
    # no s3fs installed: the message says what to install
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    with pytest.raises(store.StoreError, match=r"s3://b/f.zarr.*pip install s3fs"):
        store.check_writable("s3://b/f.zarr")
    with pytest.raises(PairsError, match="pip install s3fs"):
        open_pairs("s3://b/pairs.zarr")


# --- S3 (moto) ------------------------------------------------------------------------------------


def test_bad_bucket_credentials_or_endpoint_fail_before_the_model_loads(s3, prompts_dir, monkeypatch):
    import diffsketch.store.collect as collect

    monkeypatch.setattr(collect, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    params = small_params(prompts_dir, trajectories=2)
    with pytest.raises(store.StoreError, match=r"s3://no-such-bucket/f.zarr.*create the bucket"):
        run_sample(params, "s3://no-such-bucket/f.zarr")
    with monkeypatch.context() as m:
        m.delenv("AWS_ACCESS_KEY_ID")
        m.delenv("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(store.StoreError, match=r"NoCredentialsError.*AWS_ACCESS_KEY_ID"):
            run_sample(params, f"{s3}/f.zarr")
    with monkeypatch.context() as m:
        m.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        m.setenv("AWS_MAX_ATTEMPTS", "1")
        with pytest.raises(store.StoreError, match="AWS_ENDPOINT_URL"):
            run_sample(params, f"{s3}/f.zarr")


def test_sample_to_s3_equals_local_and_resumes(s3, prompts_dir, tmp_path, tiny, monkeypatch):
    params = small_params(prompts_dir, trajectories=2, batch_size=1)
    local = run_sample(params, tmp_path / "local.zarr", progress=False, model=tiny)
    url = run_sample(params, f"{s3}/features.zarr", progress=False, model=tiny)
    assert url == f"{s3}/features.zarr"
    remote = store.open_store(url)
    assert_same_stores(store.open_store(local), remote)
    same = lambda attrs: {k: v for k, v in attrs.items() if k != "projected_bytes"}  # noqa: E731 - bytes on a filesystem vs objects
    assert same(remote.attrs) == same(store.open_store(local).attrs)
    info = store.summary(Path(url))  # a URL through a Path (the CLI's options) still works
    assert info["complete"] == 2 and info["disk_bytes"] > 0

    # interrupted after the first batch, then resumed: only the missing trajectory is written
    record_writes(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_sample(params, f"{s3}/part.zarr", progress=False, model=tiny)
    assert store.complete_mask(store.open_store(f"{s3}/part.zarr")).tolist() == [True, False]
    calls = record_writes(monkeypatch)
    run_sample(params, f"{s3}/part.zarr", progress=False, model=tiny)
    assert calls == [[1]]
    assert_same_stores(store.open_store(local), store.open_store(f"{s3}/part.zarr"))
    calls.clear()
    run_sample(params, f"{s3}/part.zarr", progress=False, model=tiny)  # complete: nothing to do
    assert calls == []

    with pytest.raises(store.StoreError, match="other settings"):
        run_sample(small_params(prompts_dir, trajectories=2, batch_size=1, steps=3), url, progress=False, model=tiny)


def test_pairs_to_s3_resume_and_read(s3, teacher, tiny, tmp_path, monkeypatch):
    import fsspec

    import diffsketch.student.pairs as pairs_module

    gen, prior = teacher
    params = parse_params({"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 2, "batch_size": 1}})
    run_pairs(params, gen, prior, tmp_path / "local.zarr", progress=False, model=tiny)

    real = interrupt_on_call(monkeypatch, pairs_module, "sample_conditions", 2)
    url = f"{s3}/pairs.zarr"
    with pytest.raises(KeyboardInterrupt):
        run_pairs(params, gen, prior, url, progress=False, model=tiny)
    assert open_pairs(url)["complete"][:].tolist() == [True, False]
    monkeypatch.setattr(pairs_module, "sample_conditions", real)
    run_pairs(params, gen, prior, url, progress=False, model=tiny)
    assert_same_stores(open_pairs(tmp_path / "local.zarr"), open_pairs(url))
    same = lambda attrs: {k: v for k, v in attrs.items() if k != "projected_bytes"}  # noqa: E731 - bytes on a filesystem vs objects
    assert same(open_pairs(url).attrs) == same(open_pairs(tmp_path / "local.zarr").attrs)

    # a local store copied to the bucket with plain fsspec reads back identically
    fs, _ = fsspec.core.url_to_fs(s3, skip_instance_cache=True)
    fs.put(str(tmp_path / "local.zarr"), f"{s3}/copied.zarr", recursive=True)
    assert_same_stores(open_pairs(tmp_path / "local.zarr"), open_pairs(f"{s3}/copied.zarr"))


# --- DVC remote on the same server ----------------------------------------------------------------


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_dvc_push_and_pull_to_s3_remote(s3_server, tmp_path):
    pytest.importorskip("dvc_s3")
    bindir = Path(sys.executable).parent
    # only the repo's config (endpointurl, and credentials in .dvc/config.local) reaches the server
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"PATH": os.pathsep.join([str(bindir), env.get("PATH", "")]), "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    repo = tmp_path / "repo"
    repo.mkdir()

    def dvc(*args):
        return _run([str(bindir / "dvc"), *args], repo, env)

    _run(["git", "init", "-q"], repo, env)
    dvc("init", "-q")
    data = repo / "data"
    (data / "sub").mkdir(parents=True)
    files = {"a.txt": "alpha\n", "sub/b.bin": "beta" * 1000}
    for name, text in files.items():
        (data / name).write_text(text)
    dvc("add", "data")
    dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc-cache")
    dvc("remote", "modify", "storage", "endpointurl", s3_server)
    dvc("remote", "modify", "--local", "storage", "access_key_id", "testing")
    dvc("remote", "modify", "--local", "storage", "secret_access_key", "testing")
    assert "testing" not in (repo / ".dvc" / "config").read_text()
    dvc("push")

    import shutil

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(data)
    dvc("pull")
    assert {name: (data / name).read_text() for name in files} == files
    assert "in sync" in dvc("status", "--cloud")

"""Auth on the API and exposure rules of the launch flags."""

import subprocess
import sys

import pytest
import requests

from tests.server import ROOT, running_app


@pytest.fixture(scope="module")
def secured(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("auth") / "outputs", "--api", "--api-auth", "alice:s3cret",
                     "--ckpt", "sd1", ready_path="/sdapi/v1/progress") as base:
        yield base + "/sdapi/v1"


def test_every_api_route_needs_credentials(secured):
    for method, path in (("get", "/sd-models"), ("get", "/options"), ("post", "/txt2img"), ("get", "/progress"),
                         ("post", "/interrupt"), ("get", "/memory")):
        r = requests.request(method, secured + path, json={}, timeout=30)
        assert r.status_code == 401, path
        assert r.headers.get("www-authenticate") == "Basic"
    assert requests.get(secured + "/sd-models", auth=("alice", "wrong"), timeout=30).status_code == 401
    assert requests.get(secured + "/sd-models", auth=("alice", "s3cret"), timeout=30).status_code == 200


@pytest.mark.parametrize("flags", [["--listen"], ["--share"], ["--listen", "--api", "--gradio-auth", "a:b"]])
def test_exposing_without_credentials_is_refused(flags):
    proc = subprocess.run([sys.executable, "app.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--insecure-no-auth" in proc.stderr

"""Auth on the API and exposure rules of the launch flags."""

import base64
import json
import subprocess
import sys
import threading

import pytest
import requests

from tests.server import ROOT, running_app


@pytest.fixture(scope="module")
def secured(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("auth") / "outputs", "--api", "--api-auth",
                     "alice:s3cret,bob:b-pass", "--ckpt", "sd1", ready_path="/sdapi/v1/progress") as base:
        yield base + "/sdapi/v1"


def test_every_api_route_needs_credentials(secured):
    for method, path in (("get", "/sd-models"), ("get", "/options"), ("post", "/txt2img"), ("get", "/progress"),
                         ("post", "/interrupt"), ("get", "/memory")):
        r = requests.request(method, secured + path, json={}, timeout=30)
        assert r.status_code == 401, path
        assert r.headers.get("www-authenticate") == "Basic"
    assert requests.get(secured + "/sd-models", auth=("alice", "wrong"), timeout=30).status_code == 401
    assert requests.get(secured + "/sd-models", auth=("alice", "s3cret"), timeout=30).status_code == 200
    root = secured.removesuffix("/sdapi/v1")
    for path in ("/docs", "/openapi.json"):
        assert requests.get(root + path, timeout=30).status_code == 401, path
        assert requests.get(root + path, auth=("alice", "s3cret"), timeout=30).status_code == 200, path


def test_non_ascii_credentials_get_401_not_500(secured):
    for header in ("Basic " + base64.b64encode("jörg:pässwörd".encode()).decode(), "Basic !!not-base64!!"):
        assert requests.get(secured + "/sd-models", headers={"Authorization": header}, timeout=30).status_code == 401
    raw = b"Basic " + base64.b64encode(b"alice:s3cret") + b"\xff"
    assert requests.get(secured + "/sd-models", headers={"Authorization": raw}, timeout=30).status_code == 401


@pytest.fixture(scope="module")
def listening_root(tmp_path_factory):
    return tmp_path_factory.mktemp("listen")


@pytest.fixture(scope="module")
def listening(models_dir, listening_root):
    """Exposed with UI credentials only (two accounts): the API and its docs take the same ones."""
    with running_app(models_dir, listening_root / "outputs", "--listen", "--api", "--gradio-auth",
                     "bob:pw1,carol:pw2", "--ckpt", "sd1", ready_path="/sdapi/v1/progress") as base:
        yield base


def test_exposed_server_protects_ui_api_and_docs_with_the_ui_credentials(listening):
    for path in ("/sdapi/v1/sd-models", "/sdapi/v1/progress", "/docs", "/openapi.json"):
        assert requests.get(listening + path, timeout=30).status_code == 401, path
        assert requests.get(listening + path, auth=("bob", "pw1"), timeout=30).status_code == 200, path
    for path in ("/config", "/gradio_api/info"):
        assert requests.get(listening + path, timeout=30).status_code in (401, 403), path
    assert requests.post(listening + "/sdapi/v1/txt2img", json={}, auth=("bob", "wrong"), timeout=30).status_code == 401


@pytest.mark.parametrize("flags", [["--listen"], ["--share"], ["--share", "--api", "--api-auth", "a:b"]])
def test_exposing_without_credentials_is_refused(flags):
    proc = subprocess.run([sys.executable, "app.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--insecure-no-auth" in proc.stderr


@pytest.mark.parametrize("flags", [["--api", "--api-auth", "u:"], ["--listen", "--gradio-auth", "u:"],
                                   ["--listen", "--gradio-auth", "a:b,c:"]])
def test_empty_passwords_are_refused_at_start(flags):
    proc = subprocess.run([sys.executable, "app.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "password" in proc.stderr and "is empty" in proc.stderr


def test_docs_work_offline_behind_the_api_auth(secured):
    root = secured.removesuffix("/sdapi/v1")
    page = requests.get(root + "/docs", auth=("alice", "s3cret"), timeout=30).text
    assert "cdn" not in page.lower() and "https://" not in page and "/docs-assets/swagger-ui-bundle.js" in page
    for path in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/redoc",
                 "/docs-assets/redoc.standalone.js"):
        assert requests.get(root + path, timeout=30).status_code == 401, path
        r = requests.get(root + path, auth=("alice", "s3cret"), timeout=30)
        assert r.status_code == 200 and len(r.content) > 200, path
    assert requests.get(root + "/docs-assets/..%2Fcore.py", auth=("alice", "s3cret"), timeout=30).status_code == 404
    # the API's own sub-application publishes no schema of its own, with or without credentials
    assert requests.get(secured + "/openapi.json", auth=("alice", "s3cret"), timeout=30).status_code == 404


def _gradio_fn(client, *, api_name: str | None = None, target_elem: str | None = None) -> int:
    """The fn_index of a UI event: by its api_name, or by the elem_id of the component that triggers it."""
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in client.config["components"]}
    for index, dep in enumerate(client.config["dependencies"]):
        if api_name is not None and dep.get("api_name") == api_name:
            return dep.get("id", index)
        if target_elem is not None and any(ids.get(t[0]) == target_elem for t in dep.get("targets", [])):
            return dep.get("id", index)
    raise LookupError(api_name or target_elem)


def test_server_folders_are_refused_through_gradios_api_when_exposed(listening, tmp_path):
    """The folder batch and Open folder are hidden on an exposed server, but their handlers can still be called
    through Gradio's API: the service refuses them on every call, and nothing is read or written."""
    from gradio_client import Client

    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "a.png").write_bytes((ROOT / "docs" / "txt2img.png").read_bytes())
    client = Client(listening, auth=("bob", "pw1"), verbose=False)
    client.predict(fn_index=_gradio_fn(client, target_elem="extras_folder_tab"))  # the tab's mode, as a click
    result = client.predict(None, [], str(source), str(target), True, "Scale by", 2, 512, 512, True, "Nearest",
                            "None", 0, fn_index=_gradio_fn(client, api_name="extras_generate"))
    assert "Batch from Directory" in result[0] and "only available" in result[0]
    assert not target.exists()
    with pytest.raises(Exception, match="Open folder"):
        client.predict(fn_index=_gradio_fn(client, target_elem="txt2img_open_folder"))


def test_cmd_flags_never_show_credentials_or_absolute_paths(secured):
    r = requests.get(secured + "/cmd-flags", auth=("alice", "s3cret"), timeout=30)
    assert r.status_code == 200
    flags = r.json()
    assert "s3cret" not in r.text and "alice" not in r.text
    assert "api_auth" not in flags and "gradio_auth" not in flags and flags["api"] is True
    assert str(ROOT) not in r.text and not any(str(v).startswith("/") for v in flags.values())


def test_two_accounts_each_see_and_stop_only_their_own_job(secured):
    """bob's long job: alice's /progress does not show it and her /interrupt does not stop it; bob's does."""
    bob, alice = ("bob", "b-pass"), ("alice", "s3cret")
    answer = {}
    body = {"prompt": "a long one", "steps": 60, "width": 256, "height": 256, "seed": 1, "sampler_name": "Euler"}
    worker = threading.Thread(target=lambda: answer.update(
        r=requests.post(secured + "/txt2img", json=body, auth=bob, timeout=300)))
    worker.start()
    for _ in range(600):
        progress = requests.get(secured + "/progress", auth=bob, timeout=30).json()
        if progress["state"]["sampling_step"] >= 1:
            break
        threading.Event().wait(0.05)
    assert progress["state"]["job"] and progress["queue_position"] == 0
    theirs = requests.get(secured + "/progress", auth=alice, timeout=30).json()
    assert theirs["state"]["job"] == "" and theirs["progress"] == 0 and theirs["current_image"] is None
    assert requests.post(secured + "/interrupt", auth=alice, timeout=30).status_code == 200
    threading.Event().wait(0.5)
    assert requests.get(secured + "/progress", auth=bob, timeout=30).json()["state"]["interrupted"] is False
    requests.post(secured + "/interrupt", auth=bob, timeout=30)
    worker.join(300)
    assert answer["r"].status_code == 200
    assert json.loads(answer["r"].json()["info"])["interrupted"] is True


def test_each_account_saves_in_its_own_folder_and_no_file_route_serves_them(listening, listening_root):
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "save_images": True}
    assert requests.post(listening + "/sdapi/v1/txt2img", json=body, auth=("bob", "pw1"), timeout=120).ok
    saved = sorted((listening_root / "outputs").rglob("*.png"))
    assert saved and all(p.relative_to(listening_root / "outputs").parts[0] == "bob" for p in saved)
    carol = requests.Session()
    assert carol.post(listening + "/login", data={"username": "carol", "password": "pw2"}, timeout=30).ok
    for route in ("/gradio_api/file=", "/file="):
        r = carol.get(listening + route + str(saved[0]), timeout=30)
        assert r.status_code in (403, 404), (route, r.status_code)

"""Architecture rules that code review alone would miss."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_backend_never_imports_gradio():
    offenders = [p for p in (ROOT / "backend").rglob("*.py") if "gradio" in _imports(p)]
    assert offenders == []


def test_nothing_downloads_from_a_model_hub():
    banned = ("from_pretrained(\"", "hf_hub_download", "snapshot_download", "huggingface.co")
    offenders = [p for d in ("backend", "ui") for p in (ROOT / d).rglob("*.py")
                 if any(b in p.read_text() for b in banned)]
    assert offenders == []

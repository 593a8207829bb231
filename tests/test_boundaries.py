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


def _modules(path: Path) -> set[str]:
    """Every module `path` imports, by its full dotted name (`from a.b import c` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _offenders(files, banned: tuple[str, ...]) -> list[str]:
    return sorted(f"{p.relative_to(ROOT)} imports {m}" for p in files for m in _modules(p)
                  if any(m == b or m.startswith(b + ".") for b in banned))


def test_requests_are_data_and_import_no_machinery():
    data = [ROOT / "backend" / "generation" / "requests.py", ROOT / "backend" / "samplers.py",
            ROOT / "backend" / "options.py"]
    assert _offenders(data, ("torch.nn", "backend.generation.hires", "backend.generation.timestep_samplers",
                             "backend.generation.kdiffusion", "backend.generation.sample", "backend.loading",
                             "backend.model_manager", "backend.memory", "backend.service")) == []


def test_layers_point_one_way():
    loading = list((ROOT / "backend" / "loading").rglob("*.py"))
    assert _offenders(loading, ("backend.samplers", "backend.generation", "backend.service")) == []
    upscale = list((ROOT / "backend" / "upscale").rglob("*.py"))
    assert _offenders(upscale, ("backend.generation", "backend.service")) == []
    ui = list((ROOT / "ui").rglob("*.py"))
    # the UI holds the Job the facade returns, but reaches no cache, registry or sampler machinery
    assert _offenders(ui, ("backend.model_manager", "backend.generation.timestep_samplers", "backend.registry",
                           "backend.memory")) == []

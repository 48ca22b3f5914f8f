"""Packaging: what a ComfyUI-Manager / Comfy Registry install sees.

Dependencies (requirements.txt == pyproject.toml, both == what the runtime code imports, no torch pin), the
node ids (they ship in saved workflows), the help pages the frontend fetches, the registry icon, and what
the registry's scan looks for (no eval/exec, no installs or network at import).
"""
import ast
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _pack import load_pack

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIRS = ("dynast_core", "nodes")

#: The node ids. They are saved in every workflow that uses a node: renaming or removing one breaks those
#: workflows. A new node adds its id here (and a help page, web/docs/<id>.md), deliberately.
NODE_IDS = [
    "DynaST_ModelLoader",
    "DynaST_StyA2KLoader",
    "DynaST_PoseKeypointsFromJSON",
    "DynaST_PoseToLabel",
    "DynaST_ImageToEdgeLabel",
    "DynaST_LabelFromImage",
    "DynaST_Exemplar",
    "DynaST_Match",
    "DynaST_Warp",
    "DynaST_Decode",
    "DynaST_Generate",
    "DynaST_Stylize",
    "DynaST_CorrespondencePreview",
    "DynaST_ConfidenceToMask",
    "DynaST_PropagateKeyframes",
]

#: import name -> distribution name, where they differ
DIST_OF_IMPORT = {"PIL": "pillow", "cv2": "opencv-python-headless"}
#: provided by ComfyUI itself, imported only inside it (nodes/bridge.py)
COMFY_MODULES = {"comfy", "folder_paths"}
#: modules the pack must not use at all: installing, downloading, spawning
FORBIDDEN_MODULES = {"subprocess", "urllib", "requests", "http", "httpx", "socket", "pip", "ensurepip", "aiohttp"}


# ---------------------------------------------------------------------------------------------- helpers
def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def _requirements_txt():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def _py_files(*dirs):
    for d in dirs:
        p = ROOT / d
        yield from ([p] if p.is_file() else sorted(p.rglob("*.py")))


def imported_modules(source: str):
    """Top-level names of the absolute imports in ``source`` (relative imports are the pack's own)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def builtin_eval_exec_calls(source: str):
    """Line numbers of calls to the builtins eval / exec (``module.eval()`` methods are not those)."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("eval", "exec")]


def _third_party(names):
    std = set(sys.stdlib_module_names)
    return {n for n in names if n not in std and n != "__future__" and n != "dynast_core" and n not in COMFY_MODULES}


@pytest.fixture(scope="module")
def pack():
    """The pack imported as ComfyUI imports it (the repository root as a package, by path)."""
    return load_pack("dynast_pack_packaging")


def _node_docs():
    spec = importlib.util.spec_from_file_location("node_docs_tool", ROOT / "tools" / "node_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- dependencies
def test_requirements_txt_equals_pyproject_dependencies():
    deps = _pyproject()["project"]["dependencies"]
    req = _requirements_txt()
    assert sorted(map(_norm, req)) == sorted(map(_norm, deps)), (
        "requirements.txt (ComfyUI-Manager installs) and [project] dependencies (pip install .) must list the "
        f"same packages: {sorted(req)} vs {sorted(deps)}")


def test_torch_is_never_pinned():
    for where, reqs in (("pyproject.toml", _pyproject()["project"]["dependencies"]),
                        ("requirements.txt", _requirements_txt())):
        for r in reqs:
            if _name(r) in ("torch", "torchvision", "torchaudio"):
                assert not re.search(r"==|<|~=|\+", r), (
                    f"{where}: {r!r} would replace the user's torch; keep only a lower bound (pins go in .ci/run)")


def test_runtime_dependencies_are_what_runtime_code_imports():
    used = set()
    for f in _py_files(*RUNTIME_DIRS, "__init__.py"):
        used |= _third_party(imported_modules(f.read_text(encoding="utf-8")))
    used_dists = {DIST_OF_IMPORT.get(n, n).lower() for n in used}
    declared = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    assert used_dists - declared == set(), f"imported by the runtime code but not declared: {used_dists - declared}"
    assert declared - used_dists == set(), f"declared but imported nowhere in the runtime code: {declared - used_dists}"


def test_test_extras_hold_only_test_packages():
    declared = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    extras = {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["test"]}
    assert not extras & declared, f"runtime packages belong in dependencies, not the test extras: {extras & declared}"
    used = set()
    helpers = {f.stem for f in (ROOT / "tests").glob("*.py")}       # tests/ is on sys.path (conftest.py)
    for f in _py_files("tests"):
        used |= _third_party(imported_modules(f.read_text(encoding="utf-8"))) - helpers
    missing = {DIST_OF_IMPORT.get(n, n).lower() for n in used} - declared - extras
    assert not missing, f"tests import packages that no install step provides: {missing}"


def test_import_scanner_sees_imports():
    found = imported_modules("import einops\nfrom tqdm.auto import tqdm\nfrom . import bridge\ndef f():\n"
                             "    import kornia.filters\n")
    assert found == {"einops", "tqdm", "kornia"}


# ---------------------------------------------------------------------------------------------- node ids
def test_node_ids_are_stable(pack):
    ids = list(pack.NODE_CLASS_MAPPINGS)
    removed = sorted(set(NODE_IDS) - set(ids))
    added = sorted(set(ids) - set(NODE_IDS))
    assert not removed, (f"node ids {removed} are gone: saved workflows use them. Keep the id (change only the "
                         "display name), or add the new id beside the old one")
    assert not added, f"new node ids {added}: add them to NODE_IDS in this test (they become permanent)"
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(ids)


# ---------------------------------------------------------------------------------------------- help pages
def test_web_directory_is_served_folder(pack):
    web = (ROOT / pack.WEB_DIRECTORY).resolve()
    assert web.is_dir() and web.parent == ROOT, f"WEB_DIRECTORY {pack.WEB_DIRECTORY!r} must be a folder of the pack"
    assert not list(web.rglob("*.js")), "web/ holds help pages only; a .js file there becomes a frontend extension"


def test_every_node_has_a_current_help_page(pack):
    docs = _node_docs()
    assert docs.DOCS == ROOT / pack.WEB_DIRECTORY.strip("./") / "docs"
    problems = docs.problems(pack)
    assert not problems, "\n".join(problems)


def test_help_pages_explain_every_input_and_link_a_picture(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        text = (ROOT / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
        for section in ("## Inputs", "## Outputs", "## Connect", "## Common errors"):
            assert section in text, f"{node_id}.md lacks {section!r}"
        assert "<!--" not in text.split("<!-- /outputs -->")[1], f"{node_id}.md still has template placeholders"
        assert f"Node id `{node_id}`" in text
        pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert pictures, f"{node_id}.md shows no picture"
        for rel in pictures:
            p = ROOT / "web" / "docs" / rel
            assert p.is_file(), f"{node_id}.md: picture {rel} is missing"
            assert p.suffix in (".png", ".jpg") and p.stat().st_size <= 40_000, f"{rel}: keep pictures small"


def test_docs_tool_sees_a_stale_table(pack):
    docs = _node_docs()
    cls = pack.NODE_CLASS_MAPPINGS["DynaST_ConfidenceToMask"]
    page = (docs.DOCS / "DynaST_ConfidenceToMask.md").read_text(encoding="utf-8")
    assert docs.refresh(page, cls) == page
    stale = page.replace("**`grow`** (INT, default `4`,", "**`grow`** (INT, default `8`,")
    assert stale != page and docs.refresh(stale, cls) == page


# ---------------------------------------------------------------------------------------------- registry
def test_registry_metadata_and_icon():
    from PIL import Image
    meta = _pyproject()
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r">=\s*\d+\.\d+\.\d+", comfy["requires-comfyui"])
    assert meta["project"]["urls"]["Repository"].startswith("https://")
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["project"]["version"])
    icon_rel = comfy["Icon"].split("/main/", 1)[1]
    icon = ROOT / icon_rel
    assert icon.is_file(), f"the registry icon {comfy['Icon']} must be a file of this repository"
    with Image.open(icon) as im:
        assert im.width == im.height <= 400, f"registry icons are square, at most 400 px: {im.size}"


def test_no_eval_or_exec_in_the_pack():
    hits = []
    for f in sorted(ROOT.rglob("*.py")):
        if any(part.startswith(".") for part in f.relative_to(ROOT).parts):
            continue                # .venv and other hidden folders are not the pack
        for line in builtin_eval_exec_calls(f.read_text(encoding="utf-8")):
            hits.append(f"{f.relative_to(ROOT)}:{line}")
    assert not hits, f"eval/exec calls (the registry scan rejects them): {hits}"


def test_eval_scanner_sees_calls():
    assert builtin_eval_exec_calls("x = eval('1')\nexec('y = 2')\nmodel.eval()\n") == [1, 2]


def test_runtime_code_never_installs_downloads_or_spawns():
    hits = []
    for f in _py_files(*RUNTIME_DIRS, "__init__.py"):
        bad = imported_modules(f.read_text(encoding="utf-8")) & FORBIDDEN_MODULES
        if bad:
            hits.append(f"{f.relative_to(ROOT)}: {sorted(bad)}")
    assert not hits, f"the pack must not install, download or spawn: {hits}"


def test_importing_the_pack_touches_no_network_and_runs_no_process(tmp_path):
    """Import the pack the way ComfyUI does, with sockets, DNS and process spawning made to fail."""
    script = tmp_path / "guarded_import.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, os, socket, subprocess, sys
        def refuse(*a, **k):
            raise AssertionError("the pack tried to reach the network or start a process at import")
        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.getaddrinfo = socket.create_connection = refuse
        subprocess.Popen.__init__ = refuse
        os.system = os.posix_spawn = os.execv = os.execvp = refuse
        spec = importlib.util.spec_from_file_location("guarded_pack", {str(ROOT / "__init__.py")!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        m = importlib.util.module_from_spec(spec)
        sys.modules["guarded_pack"] = m
        spec.loader.exec_module(m)
        assert len(m.NODE_CLASS_MAPPINGS) >= {len(NODE_IDS)}
        print("imported", len(m.NODE_CLASS_MAPPINGS), "nodes")
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "imported" in run.stdout

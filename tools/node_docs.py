"""Help pages of the nodes (web/docs/<NodeId>.md): keep their Inputs / Outputs lists in step with the nodes.

ComfyUI's frontend shows ``/extensions/<pack folder>/docs/<NodeId>.md`` in a node's Info / help panel (it
tries ``docs/<NodeId>/<locale>.md`` first and falls back to the node's DESCRIPTION). Each page is written
by hand, except the two lists between ``<!-- inputs -->`` / ``<!-- /inputs -->`` and ``<!-- outputs -->`` /
``<!-- /outputs -->``, which this script writes from the node's INPUT_TYPES (types, defaults, ranges,
tooltips) and RETURN_NAMES / OUTPUT_TOOLTIPS. So a changed default or a new input reaches the page by
running the script, and the tests fail while a page is stale. (Lists, not tables: the help panel is narrow.)

    python tools/node_docs.py            # refresh the lists of every page
    python tools/node_docs.py --check    # exit 1 if a node has no page or a list is stale (what the tests run)
    python tools/node_docs.py --new      # also create a page, from the template below, for nodes without one

A new node: register it in nodes/__init__.py, run ``python tools/node_docs.py --new``, then fill in the
page's prose (what it is for, what to connect, common errors) and, if it helps, a picture made by
tools/make_doc_pictures.py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
PACK_NAME = "dynast_pack_docs"

TEMPLATE = """# {title}

<!-- What the node is for, in two or three sentences; then a picture (img/NAME.jpg, made by
tools/make_doc_pictures.py). -->
{description}

## Inputs

<!-- inputs -->
<!-- /inputs -->

## Outputs

<!-- outputs -->
<!-- /outputs -->

## Connect

- **Before:** <!-- which nodes feed it -->
- **After:** <!-- which nodes use its outputs -->

## Common errors

| Message | What to do |
|---|---|
| <!-- the message the node gives --> | <!-- the fix --> |

Node id `{node_id}` (stable: saved workflows refer to it).
"""


def load_pack():
    """Import the pack the way ComfyUI does (the repository root as a package, by path)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


#: the official file names of each model folder (shown as the defaults they are when present)
OFFICIAL = {"vgg": ["vgg_normalised.pth"], "dynast": ["latest_net_G.pth"],
            "stya2k": ["latest_net_A2K.pth", "latest_net_transform.pth", "latest_net_decoder.pth"]}


@contextlib.contextmanager
def placeholder_listings(pack):
    """Model folder listings replaced by placeholders, so the tables do not depend on this machine's files."""
    bridge = pack.nodes.bridge
    real = bridge.list_models
    bridge.list_models = lambda kind: [f"models/{kind}/*.pth", f"models/{kind}/*.safetensors"] + OFFICIAL.get(kind, [])
    try:
        yield
    finally:
        bridge.list_models = real


def _cell(text) -> str:
    return str(text).replace("\n", " ").strip()


PLACEHOLDER = re.compile(r"models/(\w+)/\*\.(\w+)")
FILE = re.compile(r".+\.(pth|pt|safetensors|ckpt|bin)")


def _choices(options: List[str]) -> Tuple[str, List[str]]:
    """Collapse the (placeholder) file listings into one phrase; returns (phrase or "", other options)."""
    marks = [PLACEHOLDER.fullmatch(str(o)) for o in options]
    found = [m for m in marks if m]
    rest = [o for o in options if not PLACEHOLDER.fullmatch(str(o)) and not FILE.fullmatch(str(o))]
    if not found:
        return "", rest
    only = {m.group(2) for m in found}
    kind = " .safetensors" if only == {"safetensors"} else ""
    return f"a{kind} file in models/{found[0].group(1)}", rest


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def input_items(cls) -> List[str]:
    """One markdown bullet per input: name, type, default, range or choices, tooltip."""
    spec = cls.INPUT_TYPES()
    items = []
    for group in ("required", "optional"):
        for name, val in spec.get(group, {}).items():
            kind, opts = val[0], (val[1] if len(val) > 1 else {})
            facts = []
            if isinstance(kind, (list, tuple)):
                files, rest = _choices(list(kind))
                choices = ", ".join(f"`{_cell(o)}`" for o in rest)
                facts.append(f"{files}, or {choices}" if files and choices else
                             files or (f"one of {choices}" if len(rest) > 1 else choices))
                default = opts.get("default", kind[0] if kind else "")
                if files and FILE.fullmatch(str(default)) and "default" in opts:
                    facts.append(f"default `{default}` if present, else " + (f"`{rest[0]}`" if rest else "the first file"))
                elif files and (PLACEHOLDER.fullmatch(str(default)) or FILE.fullmatch(str(default))):
                    facts.append("default: the first file")
                else:
                    facts.append(f"default `{_fmt(default)}`")
            else:
                facts.append(str(kind))
                if "default" in opts:
                    facts.append("default: an example, editable" if opts.get("multiline") else
                                 f"default `{_fmt(opts['default'])}`")
                if "min" in opts or "max" in opts:
                    rng = f"{_fmt(opts.get('min', ''))} to {_fmt(opts.get('max', ''))}"
                    if opts.get("step") not in (None, 1):
                        rng += f", step {_fmt(opts['step'])}"
                    facts.append(rng)
            if group == "optional":
                facts.append("optional")
            tip = _cell(opts.get("tooltip", ""))
            items.append(f"- **`{name}`** ({', '.join(facts)})" + (f": {tip}" if tip else ""))
    return items


def output_items(cls) -> List[str]:
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    tips = getattr(cls, "OUTPUT_TOOLTIPS", None) or [""] * len(names)
    return [f"- **`{n}`** ({t})" + (f": {_cell(tip)}" if tip else "") for n, t, tip in zip(names, cls.RETURN_TYPES, tips)]


def tables(cls) -> Dict[str, str]:
    """The generated blocks of a page: {"inputs": markdown, "outputs": markdown} (call it inside
    :func:`placeholder_listings`). Lists rather than tables: the help panel is narrow."""
    return {"inputs": "\n".join(input_items(cls)), "outputs": "\n".join(output_items(cls))}


def refresh(text: str, cls) -> str:
    """``text`` with its generated blocks rewritten (a page without the markers is returned unchanged)."""
    for key, block in tables(cls).items():
        text = re.sub(rf"(<!-- {key} -->\n).*?(<!-- /{key} -->)", lambda m: m.group(1) + block + "\n" + m.group(2),
                      text, flags=re.S)
    return text


def page_path(node_id: str) -> Path:
    return DOCS / f"{node_id}.md"


def problems(pack=None) -> List[str]:
    """What is wrong with the pages: missing pages, missing markers, stale tables."""
    pack = pack or load_pack()
    out = []
    with placeholder_listings(pack):
        for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
            p = page_path(node_id)
            if not p.is_file():
                out.append(f"{node_id}: no help page {p.relative_to(ROOT)} (python tools/node_docs.py --new)")
                continue
            text = p.read_text(encoding="utf-8")
            for key in ("inputs", "outputs"):
                if f"<!-- {key} -->" not in text or f"<!-- /{key} -->" not in text:
                    out.append(f"{node_id}: {p.name} lacks the <!-- {key} --> ... <!-- /{key} --> markers")
            if refresh(text, cls) != text:
                out.append(f"{node_id}: the Inputs/Outputs lists of {p.name} are stale (python tools/node_docs.py)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="report problems, change nothing")
    ap.add_argument("--new", action="store_true", help="create pages for nodes that have none")
    args = ap.parse_args(argv)
    pack = load_pack()
    if args.check:
        found = problems(pack)
        print("\n".join(found) or f"{len(pack.NODE_CLASS_MAPPINGS)} node pages, all current")
        return 1 if found else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    with placeholder_listings(pack):
        _write(pack, args.new)
    return 0


def _write(pack, create: bool) -> None:
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        p = page_path(node_id)
        if not p.is_file():
            if not create:
                print(f"{node_id}: no page (run with --new to create one)")
                continue
            title = pack.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id)
            p.write_text(TEMPLATE.format(title=title, description=getattr(cls, "DESCRIPTION", ""),
                                         node_id=node_id), encoding="utf-8")
            print(f"{node_id}: created {p.relative_to(ROOT)}")
        text = p.read_text(encoding="utf-8")
        updated = refresh(text, cls)
        if updated != text:
            p.write_text(updated, encoding="utf-8")
            print(f"{node_id}: lists refreshed")


if __name__ == "__main__":
    sys.exit(main())

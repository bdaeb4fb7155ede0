"""MkDocs hook: the spec reference page (spec.md), generated at build time from the spec's JSON Schema.

It renders what ``polyfuse schema`` prints (``polyfuse.spec.schema.json_schema``, the pydantic model,
torch-free): one section per part of the spec, each a table of field, type, default and description.
Nothing is written to docs/: the page exists only in the build, so it cannot go stale.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

PAGE = "spec.md"
INTRO = """# Spec reference

A spec is one YAML file (or the same dict passed to `polyfuse.train`) with five parts: `data`,
`inputs`, `fusion`, `outputs` and `train`. Only `inputs` and `outputs` are required; every other
field has a default. Unknown fields are refused with a message naming the field path, so a typo
never goes unnoticed.

This page is generated when the site is built, from the JSON Schema that `polyfuse schema` prints
(`polyfuse.spec.schema.json_schema()`), so it always matches the installed code. For editor
completion, write the schema to a file and point your editor's YAML language server at it:

```bash
polyfuse schema > spec.schema.json
```

"""


def _schema(config: Any) -> dict[str, Any]:
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:  # the repository's polyfuse, also when PYTHONPATH does not name it
        sys.path.insert(0, root)
    from polyfuse.spec.schema import json_schema

    return json_schema()


def _anchor(def_name: str) -> str:
    """ImageInput -> image-input, HFEncoder -> hf-encoder."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", def_name).lower()


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _escape(text: str) -> str:
    """Markdown-safe text for a table cell: angle brackets and pipes escaped outside code spans."""
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if not part.startswith("`"):
            parts[i] = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "".join(parts)


def _code(value: str) -> str:
    return f"`{value}`" if "|" not in value else f"<code>{value.replace('|', '&#124;')}</code>"


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _constraints(node: dict[str, Any]) -> str:
    marks = [("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")]
    return ", ".join(f"{sign} {_literal(node[key])}" for key, sign in marks if key in node)


def _type(node: dict[str, Any]) -> str:
    name = _ref_name(node)
    if name:
        return f"[{name}](#{_anchor(name)})"
    if "oneOf" in node:  # the inputs' discriminated union
        return "one of " + ", ".join(_type(option) for option in node["oneOf"]) + ", chosen by `type`"
    if "anyOf" in node:
        return " or ".join(_type(option) for option in node["anyOf"])
    if "const" in node:
        return _code(_literal(node["const"]))
    if "enum" in node:
        return "one of " + ", ".join(_code(_literal(v)) for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            text = "[" + ", ".join(_type(item) for item in node["prefixItems"]) + "]"
        else:
            text = "list of " + _type(node.get("items", {}))
    elif kind == "object":
        text = "map of name → " + _type(node.get("additionalProperties", {}))
    else:
        text = kind or "any"
    limits = _constraints(node)
    return f"{text}, {limits}" if limits else text


def _default(node: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in node:
        return ""
    value = node["default"]
    if isinstance(value, dict) and _ref_name(node):
        return "its defaults"
    return _code(_literal(value))


def _children(node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label suffix, def reference) pairs reachable from one property's schema."""
    found = []
    if _ref_name(node):
        found.append(("", node))
    for key in ("anyOf", "oneOf"):
        for option in node.get(key, []):
            found.extend(_children(option))
    if isinstance(node.get("additionalProperties"), dict):
        found.extend((".<name>" + suffix, ref) for suffix, ref in _children(node["additionalProperties"]))
    return found


def _sections(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, list[str]]]]:
    """(def name, def, {YAML path: input types it applies to}), parents before children, in field order."""
    defs = schema.get("$defs", {})
    paths: dict[str, dict[str, list[str]]] = {}

    def visit(name: str, path: str, kind: str | None, stack: tuple[str, ...]) -> None:
        kinds = paths.setdefault(name, {}).setdefault(path, [])
        node = defs[name]
        kind = node.get("properties", {}).get("type", {}).get("const", kind)
        if kind and kind not in kinds:
            kinds.append(kind)
        if name in stack:
            return
        for field, prop in node.get("properties", {}).items():
            for suffix, ref in _children(prop):
                visit(_ref_name(ref), f"{path}.{field}{suffix}", kind, stack + (name,))

    for field, prop in schema["properties"].items():
        for suffix, ref in _children(prop):
            visit(_ref_name(ref), field + suffix, None, ())
    return [(name, defs[name], where) for name, where in paths.items()]


def _table(node: dict[str, Any]) -> list[str]:
    required = set(node.get("required", []))
    lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for field, prop in node.get("properties", {}).items():
        lines.append(f"| `{field}` | {_type(prop)} | {_default(prop, field in required)} | "
                     f"{_escape(prop.get('description', ''))} |")
    return lines


def _heading(name: str, node: dict[str, Any], paths: dict[str, list[str]]) -> str:
    first, kinds = next(iter(paths.items()))
    kind = node.get("properties", {}).get("type", {}).get("const")
    if kind:  # an input section: inputs.<name> with type: image
        return f"## `{first}` with `type: {kind}` {{#{_anchor(name)}}}"
    if len(paths) == 1 and kinds:  # an input's sub-section: inputs.<name>.augment (image, video)
        return f"## `{first}` ({', '.join(kinds)}) {{#{_anchor(name)}}}"
    return f"## `{first}` {{#{_anchor(name)}}}"


def render(schema: dict[str, Any]) -> str:
    lines = [INTRO, "## The top level {#spec}", ""]
    lines += _table(schema)
    for name, node, paths in _sections(schema):
        lines += ["", _heading(name, node, paths), ""]
        if len(paths) > 1:
            where = "; ".join(f"`{p}`" + (f" ({', '.join(kinds)})" if kinds else "") for p, kinds in paths.items())
            lines += [f"Used at {where}.", ""]
        if node.get("description"):
            lines += [_escape(" ".join(node["description"].split())), ""]
        lines += _table(node)
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    if files.get_file_from_path(PAGE) is not None:
        raise RuntimeError(f"docs/{PAGE} is generated by docs/hooks/spec_reference.py; delete the committed copy")
    files.append(File.generated(config, PAGE, content=render(_schema(config))))
    return files

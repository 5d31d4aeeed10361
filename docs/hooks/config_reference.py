"""The config reference, generated from the schema itself (dist_train/config/schema.py), so it cannot drift.

Every key of :class:`dist_train.config.Config` with its type, default, valid values (the ``Literal``
choices, or the range its field metadata declares through ``bounded``/``limits``) and the attribute
docstring written under it in the source. The tables sit between ``<!-- config-reference -->`` and
``<!-- /config-reference -->`` of docs/config-reference.md, committed so the page reads on GitHub too;
``python docs/hooks/config_reference.py --write`` regenerates them (a test fails when they are stale), and
as a MkDocs hook (``hooks:`` in mkdocs.yml) it regenerates them when the site is built.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

MARKER = "<!-- config-reference -->"
END = "<!-- /config-reference -->"
PAGE = Path(__file__).resolve().parents[1] / "config-reference.md"
PAGES = {"dist_train.data.plugin": "own-model-and-data.md", "dist_train.models.plugin": "own-model-and-data.md"}
"""Modules a docstring refers to, and the page of the site that tells users about them."""


def named_values() -> dict[str, str]:
    """The public tables a docstring may name (``:data:`DATASETS```), as the values they hold."""
    from dist_train.data.catalog import DATASETS

    return {"DATASETS": ", ".join(f"`{name}`" for name in DATASETS)}


@dataclasses.dataclass
class Key:
    """One config key as the reference shows it."""

    name: str
    type: str
    default: str
    values: str
    doc: str


def attribute_docs(source: str) -> dict[str, tuple[str, dict[str, tuple[str, str]]]]:
    """Per class of ``source``: its docstring and, per field, (annotation, the string literal under it)."""
    classes = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        members: dict[str, tuple[str, str]] = {}
        body = node.body
        for i, statement in enumerate(body):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                after = body[i + 1] if i + 1 < len(body) else None
                is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                doc = inspect.cleandoc(after.value.value) if is_doc else ""  # type: ignore[union-attr]
                members[statement.target.id] = (ast.unparse(statement.annotation), doc)
        classes[node.name] = (inspect.cleandoc(ast.get_docstring(node) or ""), members)
    return classes


def markdown(text: str) -> str:
    """Docstring markup as Markdown on one table row: a named table becomes its values, a module users read
    about becomes a link to its page, ``x`` and :role:`x` become `x`, lines are joined."""
    values = named_values()
    text = re.sub(r":data:`~?([A-Z_]+)`", lambda m: values.get(m[1], m[0]), text)
    text = re.sub(
        r"see :mod:`~?([\w.]+)`",
        lambda m: f"see [your own model and data]({PAGES[m[1]]})" if m[1] in PAGES else m[0],
        text,
    )
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    return repr(value)


def valid_values(annotation: str, f: dataclasses.Field, hint: Any) -> str:
    """The Literal's choices, else the declared range, else nothing."""
    if typing.get_origin(hint) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(hint))
    bound = f.metadata.get("range")
    if bound is None:
        return ""
    text = bound.describe().replace(str(2**63 - 1), "2⁶³ − 1")
    if bound.length is not None:
        return f"{bound.length} values, each {text}"
    return f"each {text}" if annotation.startswith("list") else text


def sections(schema: type | None = None, prefix: str = "") -> list[tuple[str, str, list[Key]]]:
    """(dotted section, its docstring, its keys), the top-level keys first, then each nested dataclass."""
    from dist_train.config import Config

    schema = schema or Config
    module = sys.modules[schema.__module__]
    docs = attribute_docs(inspect.getsource(module))
    hints = typing.get_type_hints(schema, vars(module), include_extras=True)
    class_doc, members = docs[schema.__name__]
    keys, nested = [], []
    for f in dataclasses.fields(schema):
        annotation, doc = members[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((f"{prefix}{f.name}", hints[f.name]))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        keys.append(
            Key(
                name=f"{prefix}{f.name}",
                type=annotation.replace("Optional[", "").rstrip("]") + " or null"
                if annotation.startswith("Optional[")
                else ("choice" if annotation.startswith("Literal[") else annotation),
                default=yaml_value(default),
                values=valid_values(annotation, f, hints[f.name]),
                doc=markdown(doc),
            )
        )
    result = [(prefix.rstrip(".") or "top level", markdown(class_doc), keys)]
    for name, sub in nested:
        result.extend(sections(sub, f"{name}."))
    return result


def reference() -> str:
    """Every section as a heading, its docstring and a table of its keys."""
    out = []
    for name, doc, keys in sections():
        out += [f"## `{name}`" if name != "top level" else "## Top level", "", doc, ""]
        out += ["| key | type | default | valid values | what it does |", "| --- | --- | --- | --- | --- |"]
        for key in keys:
            default = f"`{key.default}`"
            out.append(f"| `{key.name}` | `{key.type}` | {default} | {key.values} | {key.doc} |")
        out.append("")
    return "\n".join(out)


def with_reference(text: str) -> str:
    """``text`` with what lies between the markers replaced by the reference as the schema gives it now."""
    head, found, rest = text.partition(MARKER)
    if not found:
        return text
    _, _, tail = rest.partition(END)
    return f"{head}{MARKER}\n\n{reference()}\n{END}{tail if tail.strip() else chr(10)}"


def on_page_markdown(markdown_text: str, **kwargs: Any) -> str:
    """MkDocs hook: the reference between the markers, regenerated."""
    return with_reference(markdown_text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PAGE.write_text(with_reference(PAGE.read_text()))
    else:
        print(reference())

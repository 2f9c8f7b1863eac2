"""The docs stay true to the code: the manifest reference and the JSON Schema are generated from the
models, and these tests fail when they drift (CNETCTL_UPDATE_DOCS=1 rewrites the generated parts)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnetctl.model import fielddocs
from cnetctl.model import topology as t
from tests.conftest import ROOT

UPDATE = os.environ.get("CNETCTL_UPDATE_DOCS") == "1"
SCHEMA = ROOT / fielddocs.SCHEMA_FILE
REFERENCE = ROOT / "docs" / "manifest.md"
BEGIN, END = "<!-- BEGIN FIELDS: generated, do not edit by hand -->\n", "<!-- END FIELDS -->\n"
MANIFESTS = sorted((ROOT / "manifests").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../docs/cnetctl.schema.json"


def schema_text() -> str:
    return json.dumps(fielddocs.json_schema(), indent=2) + "\n"   # as `cnetctl schema` prints it


def test_every_field_of_every_model_has_a_description():
    assert fielddocs.problems() == []


def test_a_field_without_a_description_is_caught(monkeypatch):
    """What happens when someone adds a field to a model and not to the table."""
    models = fielddocs.MODELS
    node = next(d for d in models if d.model is t.Node)
    fewer = dataclasses.replace(node, fields={k: v for k, v in node.fields.items() if k != "netns"})
    monkeypatch.setattr(fielddocs, "MODELS", tuple(fewer if d is node else d for d in models))
    assert "Node.netns: no description in cnetctl/model/fielddocs.py" in fielddocs.problems()
    stale = dataclasses.replace(node, fields={**node.fields, "gone": "a field the model lost"})
    monkeypatch.setattr(fielddocs, "MODELS", tuple(stale if d is node else d for d in models))
    assert "Node.gone: documented but the model has no such field" in fielddocs.problems()


def test_the_reference_lists_every_field_as_generated():
    text = REFERENCE.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{REFERENCE}: the generated block's markers"
    head, rest = text.split(BEGIN)
    block, tail = rest.split(END)
    want = fielddocs.markdown()
    if UPDATE and block != want:
        REFERENCE.write_text(head + BEGIN + want + END + tail)
        block = want
    assert block == want, "docs/manifest.md is out of date: CNETCTL_UPDATE_DOCS=1 pytest tests/unit/test_docs.py"
    for model in fielddocs.reachable_models():
        section = block.split(f"### {model.__name__}\n", 1)[1].split("\n### ", 1)[0]
        for name in fielddocs.yaml_fields(model):
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} missing from docs/manifest.md"


def test_the_shipped_schema_is_what_the_code_generates():
    if UPDATE and (not SCHEMA.exists() or SCHEMA.read_text() != schema_text()):
        SCHEMA.write_text(schema_text())
    assert SCHEMA.read_text() == schema_text(), \
        f"{fielddocs.SCHEMA_FILE} is out of date: CNETCTL_UPDATE_DOCS=1 pytest tests/unit/test_docs.py"
    res = subprocess.run([sys.executable, "-m", "cnetctl", "schema"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == SCHEMA.read_text(), "`cnetctl schema` and the shipped file differ"


def test_the_schema_has_an_id_and_a_description_on_every_field():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == fielddocs.SCHEMA_ID and schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    objects = {"(root)": schema, **schema["definitions"]}
    for name, obj in objects.items():
        assert obj.get("description"), name
        for prop, sub in obj.get("properties", {}).items():
            assert sub.get("description"), f"{name}.{prop} has no description in the schema"


def _system_jsonschema() -> str:
    """A Python with the jsonschema package (the reference validator editors' servers agree with)."""
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import jsonschema, yaml"], capture_output=True).returncode == 0:
            return python
    pytest.skip("no Python with jsonschema and PyYAML here (apt install python3-jsonschema)")


_VALIDATE = """
import json, sys, jsonschema
sys.path.insert(0, sys.argv.pop(1))
from tests import yaml12   # YAML 1.2 booleans, as editors and cnetctl read `on:`
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
out = {}
for path in sys.argv[2:]:
    out[path] = [e.message for e in v.iter_errors(yaml12.load(open(path).read()))]
print(json.dumps(out))
"""


def test_a_standard_validator_accepts_the_examples_and_refuses_a_typo(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "manifests" / "quickstart.yaml").read_text().replace("routes:", "routez:", 1))
    argv = [_system_jsonschema(), "-c", _VALIDATE, str(ROOT), str(SCHEMA), *map(str, MANIFESTS), str(typo)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    errors = json.loads(res.stdout)
    assert {p: e for p, e in errors.items() if p != str(typo) and e} == {}
    assert any("'routez' was unexpected" in e for e in errors[str(typo)]), errors[str(typo)]


def test_the_schema_speaks_draft_7_only():
    """Editors' YAML language server implements draft 7: nothing of 2019-09/2020-12 may be left."""
    text = SCHEMA.read_text()
    later = ("$defs", "prefixItems", "unevaluated", "dependentSchemas", "dependentRequired", "$anchor",
             "$dynamicRef", "minContains", "maxContains")
    assert [word for word in later if f'"{word}' in text] == []
    links = json.loads(text)["properties"]["links"]["items"]
    assert links["items"] == [{"type": "string"}, {"type": "string"}] and links["additionalItems"] is False


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.stem)
def test_every_example_names_the_schema_for_editors(manifest):
    first = manifest.read_text().splitlines()[0]
    assert first == MODELINE
    assert (manifest.parent / re.sub(r"^.*\$schema=", "", first)).resolve() == SCHEMA.resolve()


# --- links between the docs -------------------------------------------------------------------------
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "vagrant" / "README.md"]
# Written by issue 11's branches, merged with this one: a link to them may land first.
NOT_YET: set[str] = set()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # not inside code blocks
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel.rstrip("/") not in NOT_YET:
                broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert broken == []

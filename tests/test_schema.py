"""The shipped JSON Schema: a valid draft 2020-12 schema, inside the installed package, and in
agreement with the example and the corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from nsctl import config
from nsctl import validate as checker

ROOT = Path(__file__).parent.parent
CONFIGS = Path(__file__).parent / "configs"


def shipped() -> dict:
    return json.loads(resources.files("nsctl.schema").joinpath("namespace.schema.json").read_text())


def test_schema_is_valid_draft_2020_12():
    schema = shipped()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


def test_packaged_schema_is_the_one_in_the_repository():
    assert shipped() == json.loads((ROOT / "schema" / "namespace.schema.json").read_text())
    assert checker.schema() == shipped()


def test_schema_is_importable_from_the_installed_package(tmp_path):
    """From a directory outside the checkout, so only the installed package can answer."""
    code = (
        "import json; from importlib import resources; "
        "f = resources.files('nsctl.schema').joinpath('namespace.schema.json'); "
        "print(json.loads(f.read_text())['$schema'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "https://json-schema.org/draft/2020-12/schema"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_schema_accepts_the_example():
    jsonschema.validate(load(ROOT / "examples" / "namespace.yaml"), shipped())


@pytest.mark.parametrize("path", sorted((CONFIGS / "good").glob("*.yaml")), ids=lambda p: p.name)
def test_schema_accepts_the_good_corpus(path):
    jsonschema.validate(load(path), shipped())


@pytest.mark.parametrize(
    "text",
    [
        "defaults: {base_paht: /x}",
        "disable_bpf_token: true",
        "defaults: {shared: maybe}",
        "defaults: {clone_ns_script_wait: -1}",
        "defaults: {clone_ns_script_wait: 4294968}",
        "defaults: {dir_confs: [{options: noexec}]}",
        "node_confs: [{nodes: n1}]",
        "node_confs: [{nodes: [], options: {}}]",
        "node_confs: [{nodes: '', options: {}}]",
        "defaults: {clone_ns_flags: {a: b}}",
        "[1, 2]",
    ],
)
def test_schema_rejects_structural_errors_on_its_own(text):
    """Editors using only the schema (yaml-language-server) still see these mistakes."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), shipped())


def _types(prop: dict) -> set:
    if "oneOf" in prop:
        return {t for branch in prop["oneOf"] for t in _types(branch)}
    kind = prop["type"]
    return set(kind) if isinstance(kind, list) else {kind}


# What the schema says for each option kind: what nsctl accepts, as far as JSON types can say it
# (an empty text is unset, so null, as PyYAML and editors read `key:`, is allowed there).
KIND_TYPES = {
    config.BOOL: {"boolean"},
    config.WAIT: {"integer"},
    config.BASE_PATH: {"string", "null"},
    config.SCRIPT: {"string", "null"},
    config.DIRS: {"string", "null"},
    config.FLAGS: {"array", "string", "null"},
    config.DIR_CONFS: {"array"},
    config.DIR_PATH: {"string"},
    config.DIR_BASE: {"string"},
    config.MOUNT_OPTIONS: {"string", "null"},
    config.HOSTLIST: {"array", "string"},
}


def test_schema_follows_the_option_table():
    """The schema is for editors; the option table is what validate reads by. They agree on
    every key, its JSON types, the wait limits and which keys are required."""
    defs = shipped()["$defs"]
    tables = (
        (defs["options"], config.OPTIONS),
        (defs["dir_conf"], config.DIR_CONF_OPTIONS),
        (defs["node_conf"], config.NODE_CONF_OPTIONS),
    )
    for definition, table in tables:
        assert set(definition["properties"]) == {o.name for o in table}
        assert definition.get("required", []) == [o.name for o in table if o.required]
        for option in table:
            prop = definition["properties"][option.name]
            if option.kind in KIND_TYPES:
                assert _types(prop) == KIND_TYPES[option.kind], option
            if option.kind == config.WAIT:
                assert (prop["minimum"], prop["maximum"]) == (0, config.MAX_WAIT), option
    assert set(shipped()["properties"]) == set(config.TOP_KEYS)


@pytest.mark.parametrize(
    "text",
    [
        "defaults: {base_path: '', init_script: ''}",
        "defaults: {init_script: , dirs: }",
        "defaults: {clone_ns_script_wait: 2147483}",
    ],
)
def test_schema_accepts_what_validate_accepts(text):
    jsonschema.validate(yaml.safe_load(text), shipped())
    assert checker.check_text(text, "ns.yaml").valid


def test_schema_refuses_the_waits_slurm_would_not_limit():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load("defaults: {clone_ns_script_wait: 2147484}"), shipped())

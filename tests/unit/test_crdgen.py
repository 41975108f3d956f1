"""The generator's translation rules, checked on the real models (no cluster needed)."""

from __future__ import annotations

from typing import Any

import pytest

from opsconductor import crdgen
from opsconductor.api import KINDS, OPSJOB
from opsconductor.api.opsjob import step_types


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schemas_are_structural(kind) -> None:
    schema = crdgen.build_schema(kind)
    for path, node in walk(schema):
        assert "$ref" not in node and "oneOf" not in node and "discriminator" not in node, path
        typed = (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")
        )
        assert typed, f"{kind.kind}{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path


def step_schema() -> dict[str, Any]:
    return crdgen.build_schema(OPSJOB)["properties"]["spec"]["properties"]["steps"]["items"]


def test_step_union_lists_every_type() -> None:
    assert step_schema()["properties"]["type"]["enum"] == step_types()


def test_fields_of_some_step_types_are_forbidden_on_others() -> None:
    rules = {r["rule"]: r for r in step_schema()["x-kubernetes-validations"]}
    sudo = rules['!has(self.sudo) || self.type in ["ssh.exec"]']
    assert sudo["reason"] == "FieldValueForbidden"
    assert sudo["fieldPath"] == ".sudo"
    # Common fields (from StepBase) are never restricted.
    assert not any(r.startswith("!has(self.timeoutSeconds)") for r in rules)


def test_variant_rules_only_apply_to_their_types() -> None:
    rules = [r["rule"] for r in step_schema()["x-kubernetes-validations"]]
    assert '!(self.type in ["ssh.exec", "winrm.exec"]) || (has(self.command) != has(self.script))' in rules


def test_variant_specific_defaults_are_not_applied_by_the_api_server() -> None:
    properties = step_schema()["properties"]
    assert "default" not in properties["sudo"]
    assert properties["continueOnError"]["default"] is False


def test_opsjob_spec_is_immutable_except_cancel() -> None:
    rules = crdgen.build_schema(OPSJOB)["properties"]["spec"]["x-kubernetes-validations"]
    immutable = {r["fieldPath"] for r in rules if "immutable" in r["message"]}
    assert ".steps" in immutable and ".arguments" in immutable
    assert ".cancel" not in immutable


def test_status_lists_are_maps_keyed_by_stable_ids() -> None:
    status = crdgen.build_schema(OPSJOB)["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["steps"]["x-kubernetes-list-map-keys"] == ["name"]


def test_every_kind_is_in_the_opsconductor_category() -> None:
    for kind in KINDS:
        crd = crdgen.build_crd(kind)
        assert crd["spec"]["names"]["categories"] == ["opsconductor"]
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}

"""Templates: quoting filters against injection, the sandbox, rendering, validation, parameters."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsconductor.api.opsjob import OpsJobSpec, Step
from opsconductor.templating import (
    PS_SINGLE_QUOTES,
    ParameterError,
    TemplateRenderError,
    build_context,
    evaluate_when,
    ps_quote,
    referenced_steps,
    render_step,
    render_text,
    resolve_parameters,
    shell_quote,
    step_result_context,
    target_context,
    validate_templates,
)

STEP = TypeAdapter(Step)

INJECTIONS = [
    "plain",
    "",
    "two words",
    "; touch {pwned}",
    "$(touch {pwned})",
    "`touch {pwned}`",
    "' ; touch {pwned} ; '",
    '" ; touch {pwned} ; "',
    "a'b\"c\\d",
    "line1\nline2; touch {pwned}",
    "|| touch {pwned}",
    "&& touch {pwned} &",
    "> {pwned}",
    "$HOME ${PATH} $((1+1))",
    "*",
    "-n",
    "unicode: \u00e9\u4e2d\u2019\u2018 \U0001f600",
    "tab\there",
    "\\",
    "'",
    "''",
]


def context(**params: Any) -> dict[str, Any]:
    return build_context(
        params=params,
        target=target_context("web01", "10.0.0.5", 22, "ssh", {"role": "web"}),
        steps={
            "probe": step_result_context(stdout="up\n", exit_code=0, phase="Succeeded", outputs={"k": "v"})
        },
        job={"name": "job1", "namespace": "ops", "uid": "u1"},
    )


# --- shell_quote ------------------------------------------------------------------------------
@pytest.mark.parametrize("template", INJECTIONS)
def test_shell_quote_makes_injection_harmless_in_a_real_shell(template: str, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    payload = template.replace("{pwned}", str(pwned))
    command = render_text("printf '%s' {{ params.value | shell_quote }}", context(value=payload))
    result = subprocess.run(["sh", "-c", command], capture_output=True, check=True, cwd=tmp_path)
    assert result.stdout.decode() == payload
    assert not pwned.exists()
    assert list(tmp_path.iterdir()) == []


def test_shell_quote_value_types() -> None:
    assert shell_quote(True) == "true"
    assert shell_quote(None) == "''"
    assert shell_quote(3) == "3"
    assert shell_quote(["a b", 1]) == "'[\"a b\",1]'"


# --- ps_quote ---------------------------------------------------------------------------------
def read_ps_single_quoted(source: str) -> tuple[str, int]:
    """PowerShell's tokenizer for a single-quoted string (Tokenizer.ScanStringLiteral).

    Any of the five single-quote characters opens and closes the string; inside, a quote character
    followed by another quote character stands for the second one. Nothing else is special.
    Returns the string's value and the index just past its closing quote.
    """
    assert source[0] in PS_SINGLE_QUOTES, "not a single-quoted string"
    value: list[str] = []
    position = 1
    while True:
        if position >= len(source):
            raise ValueError("unterminated string")
        char = source[position]
        if char in PS_SINGLE_QUOTES:
            if position + 1 < len(source) and source[position + 1] in PS_SINGLE_QUOTES:
                value.append(source[position + 1])
                position += 2
                continue
            return "".join(value), position + 1
        value.append(char)
        position += 1


PS_INJECTIONS = [
    *INJECTIONS,
    "'; Remove-Item -Recurse C:\\ ; '",
    "\u2019; Stop-Computer; \u2019",
    "\u2018; calc; \u2018",
    "\u201a \u201b mixed ' \u2019",
    "$(Stop-Computer) $env:PATH `n @()",
    "x''",
    "'\u2019",
]


@pytest.mark.parametrize("payload", PS_INJECTIONS)
def test_ps_quote_round_trips_through_the_powershell_tokenizer(payload: str) -> None:
    literal = render_text("{{ params.value | ps_quote }}", context(value=payload))
    value, end = read_ps_single_quoted(literal)
    assert value == payload
    assert end == len(literal), "the string literal must end exactly where the quoted text ends"


def test_doubling_only_the_ascii_quote_would_be_injectable() -> None:
    # The Unicode quotes matter: a naive escaper leaves U+2019 closing the string early.
    payload = "\u2019; Stop-Computer; \u2019"
    naive = "'" + payload.replace("'", "''") + "'"
    _, end = read_ps_single_quoted(naive)
    assert end < len(naive)
    _, end = read_ps_single_quoted(ps_quote(payload))
    assert end == len(ps_quote(payload))


def test_tojson_is_plain_json() -> None:
    assert render_text("{{ params.v | tojson }}", context(v={"a": "<b>&'"})) == '{"a": "<b>&\'"}'
    assert render_text("{{ params.v | fromjson | attr('keys') is defined }}", context(v='{"x": 1}')) == "True"


# --- sandbox ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ params.__class__ }}",
        "{{ range(10**9) | list }}",
        "{{ 'x' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
    ],
)
def test_sandbox_blocks_escapes_and_resource_exhaustion(template: str) -> None:
    with pytest.raises(TemplateRenderError):
        render_text(template, context())


def test_strict_undefined_names_the_field() -> None:
    with pytest.raises(TemplateRenderError) as error:
        render_text("echo {{ params.nope }}", context(), "command")
    assert error.value.field == "command"
    assert "nope" in str(error.value)


# --- rendering --------------------------------------------------------------------------------
def test_render_step_renders_every_templated_field_and_keeps_the_type() -> None:
    step = STEP.validate_python(
        {
            "name": "call",
            "type": "http.post",
            "url": "https://{{ target.address }}/api/{{ params.svc }}",
            "headers": {"X-Job": "{{ job.namespace }}/{{ job.name }}"},
            "query": {"role": "{{ target.labels.role }}"},
            "body": {"json": {"items": ["{{ params.svc }}", 3, {"prev": "{{ steps.probe.stdout | trim }}"}]}},
            "when": "params.svc == 'nginx'",
        }
    )
    rendered = render_step(step, context(svc="nginx"))
    assert type(rendered) is type(step)
    assert rendered.url == "https://10.0.0.5/api/nginx"  # type: ignore[union-attr]
    assert rendered.headers == {"X-Job": "ops/job1"}  # type: ignore[union-attr]
    assert rendered.query == {"role": "web"}  # type: ignore[union-attr]
    assert rendered.body.json_ == {"items": ["nginx", 3, {"prev": "up"}]}  # type: ignore[union-attr]
    assert rendered.when == "params.svc == 'nginx'"


def test_render_step_exec_copy_and_webhook_fields() -> None:
    ctx = context(svc="a b", dir="/srv")
    exec_step = STEP.validate_python(
        {
            "name": "x",
            "type": "ssh.exec",
            "script": "systemctl restart {{ params.svc | shell_quote }}\n",
            "env": {"SVC": "{{ params.svc }}"},
            "workingDir": "{{ params.dir }}",
        }
    )
    rendered: Any = render_step(exec_step, ctx)
    assert rendered.script == "systemctl restart 'a b'\n"
    assert rendered.env == {"SVC": "a b"}
    assert rendered.working_dir == "/srv"
    copy: Any = render_step(
        STEP.validate_python(
            {
                "name": "c",
                "type": "sftp.upload",
                "source": {"inline": "host={{ target.name }}\n"},
                "destination": "{{ params.dir }}/app.conf",
            }
        ),
        ctx,
    )
    assert copy.source.inline == "host=web01\n"
    assert copy.destination == "/srv/app.conf"
    hook: Any = render_step(
        STEP.validate_python(
            {
                "name": "h",
                "type": "webhook.call",
                "url": "https://hooks/x",
                "payload": {"text": "{{ job.name }}"},
            }
        ),
        ctx,
    )
    assert hook.payload == {"text": "job1"}


def test_render_step_reports_invalid_rendered_values() -> None:
    step = STEP.validate_python({"name": "x", "type": "ssh.exec", "command": "{{ params.empty }}"})
    with pytest.raises(TemplateRenderError) as error:
        render_step(step, context(empty=""))
    assert "command" in error.value.field


def test_evaluate_when() -> None:
    ctx = context(restart=True, n=3)
    assert evaluate_when("params.restart and target.labels.role == 'web'", ctx)
    assert not evaluate_when("params.n > 5", ctx)
    assert evaluate_when("steps.probe.exit_code == 0", ctx)
    assert evaluate_when("{{ params.restart }}", ctx)
    assert not evaluate_when("{{ params.n > 5 }}", ctx)
    with pytest.raises(TemplateRenderError):
        evaluate_when("params.unknown", ctx)
    with pytest.raises(TemplateRenderError):
        evaluate_when("params.n >", ctx)


# --- validation -------------------------------------------------------------------------------
def spec(steps: list[dict[str, Any]], **extra: Any) -> OpsJobSpec:
    return OpsJobSpec.model_validate({"target": "web01", "steps": steps, **extra})


def issues(job: OpsJobSpec) -> list[tuple[str, str, str]]:
    return [(i.step, i.field, i.message) for i in validate_templates(job)]


def test_valid_templates_have_no_issues() -> None:
    job = spec(
        [
            {"name": "probe", "type": "ssh.exec", "command": "echo {{ params.svc | shell_quote }}"},
            {
                "name": "use",
                "type": "ssh.exec",
                "command": "echo {{ steps.probe.stdout }} {{ steps['probe'].exit_code }} {{ target.name }}",
                "when": "steps.probe.phase == 'Succeeded' and job.name",
            },
            {
                "name": "loop",
                "type": "ssh.exec",
                "command": "{% set x = 1 %}{% for i in range(3) %}{{ i + x }}{% endfor %}"
                "{{ params | tojson }}",
            },
        ],
        parameters=[{"name": "svc"}],
    )
    assert issues(job) == []


def test_each_kind_of_problem_names_step_and_field() -> None:
    job = spec(
        [
            {"name": "first", "type": "ssh.exec", "command": "echo {{ steps.second.stdout }}"},
            {"name": "second", "type": "ssh.exec", "command": "echo {{ params.svc }} {{ params.nope }}"},
            {
                "name": "third",
                "type": "http.post",
                "url": "/x",
                "headers": {"X-Token": "{{ tokn }}"},
                "body": {"json": {"items": ["{{ params.svc | no_such_filter }}"]}},
            },
            {
                "name": "fourth",
                "type": "ssh.exec",
                "command": "echo {% if %}",
                "when": "steps.fourth.exit_code",
            },
            {"name": "fifth", "type": "wait", "seconds": 1, "when": "target.name == 'x'"},
            {"name": "sixth", "type": "ssh.exec", "command": "x", "when": "steps.nothere.stdout"},
        ],
        parameters=[{"name": "svc"}],
    )
    found = issues(job)
    fields = {field for _, field, _ in found}
    assert fields == {
        "steps[0].command",
        "steps[1].command",
        "steps[2].headers.X-Token",
        "steps[2].body.json.items[0]",
        "steps[3].command",
        "steps[3].when",
        "steps[4].when",
        "steps[5].when",
    }
    messages = {field: message for _, field, message in found}
    assert "steps.second is not an earlier step" in messages["steps[0].command"]
    assert "params.nope is not a declared parameter" in messages["steps[1].command"]
    assert "undefined name 'tokn'" in messages["steps[2].headers.X-Token"]
    assert "unknown filter 'no_such_filter'" in messages["steps[2].body.json.items[0]"]
    assert messages["steps[3].command"].startswith("syntax error")
    assert "this step itself" in messages["steps[3].when"]
    assert "target is not set" in messages["steps[4].when"]
    assert "no step of that name" in messages["steps[5].when"]
    assert {step for step, _, _ in found} == {"first", "second", "third", "fourth", "fifth", "sixth"}


def test_referenced_steps() -> None:
    job = spec(
        [
            {"name": "a", "type": "ssh.exec", "command": "x"},
            {"name": "b", "type": "ssh.exec", "command": "x"},
            {
                "name": "c",
                "type": "ssh.exec",
                "command": "{{ steps.a.stdout }}",
                "when": "steps['b'].exit_code",
            },
        ]
    )
    assert referenced_steps(job.steps) == {"a", "b"}
    dynamic = spec(
        [
            {"name": "a", "type": "ssh.exec", "command": "x"},
            {"name": "b", "type": "ssh.exec", "command": "{% for s in steps %}{{ s }}{% endfor %}"},
        ]
    )
    assert referenced_steps(dynamic.steps) == {"a", "b"}


# --- parameters -------------------------------------------------------------------------------
def params_spec(parameters: list[dict[str, Any]], arguments: dict[str, Any] | None = None) -> OpsJobSpec:
    return spec(
        [{"name": "s", "type": "ssh.exec", "command": "x"}], parameters=parameters, arguments=arguments
    )


def test_resolve_parameters_precedence_and_types() -> None:
    job = params_spec(
        [
            {"name": "svc", "required": True},
            {"name": "count", "type": "integer", "default": 2},
            {"name": "ratio", "type": "number", "default": 0.5},
            {
                "name": "flag",
                "type": "boolean",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "flag"}},
            },
            {"name": "items", "type": "list", "default": ["a"]},
            {"name": "opts", "type": "object", "enum": [{"a": 1}, {"b": 2}], "default": {"a": 1}},
            {"name": "level", "enum": ["low", "high"], "default": "low"},
            {"name": "optional"},
            {"name": "password", "secret": True, "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
        ],
        {"svc": "nginx", "count": 5, "level": "high"},
    )
    values = resolve_parameters(job, config_map_values={"flag": "true"})
    assert values == {
        "svc": "nginx",
        "count": 5,
        "ratio": 0.5,
        "flag": True,
        "items": ["a"],
        "opts": {"a": 1},
        "level": "high",
        "optional": None,
    }
    with_secret = resolve_parameters(
        job, secret_values={"password": "hunter2\n"}, config_map_values={"flag": "0"}
    )
    assert with_secret["password"] == "hunter2\n"
    assert with_secret["flag"] is False


@pytest.mark.parametrize(
    ("parameters", "arguments", "name", "words"),
    [
        ([{"name": "n", "type": "integer"}], {"n": "three"}, "n", "must be an integer"),
        ([{"name": "n", "type": "integer"}], {"n": True}, "n", "must be an integer"),
        ([{"name": "b", "type": "boolean"}], {"b": "yes"}, "b", "true or false"),
        ([{"name": "l", "type": "list"}], {"l": "a,b"}, "l", "must be a list"),
        ([{"name": "e", "enum": ["a", "b"]}], {"e": "c"}, "e", "not an allowed value"),
        ([{"name": "r", "required": True}], {}, "r", "is required"),
        ([{"name": "x"}], {"y": 1}, "y", "no such parameter is declared"),
        (
            [{"name": "p", "secret": True, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            {"p": "inline"},
            "p",
            "not arguments",
        ),
        (
            [
                {
                    "name": "p",
                    "secret": True,
                    "default": "x",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ],
            {},
            "p",
            "cannot have a default",
        ),
    ],
)
def test_resolve_parameters_errors_name_the_parameter(
    parameters: list[dict[str, Any]], arguments: dict[str, Any], name: str, words: str
) -> None:
    with pytest.raises(ParameterError) as error:
        resolve_parameters(params_spec(parameters, arguments))
    assert error.value.parameter == name
    assert words in str(error.value)
    assert f"parameter {name}" in str(error.value)


def test_parameter_text_from_config_map_must_parse() -> None:
    job = params_spec(
        [{"name": "n", "type": "integer", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]
    )
    assert resolve_parameters(job, config_map_values={"n": " 42\n"}) == {"n": 42}
    with pytest.raises(ParameterError, match="not a valid integer"):
        resolve_parameters(job, config_map_values={"n": "many"})


def test_required_secret_parameter_missing_from_secret_values() -> None:
    job = params_spec(
        [
            {
                "name": "p",
                "secret": True,
                "required": True,
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
            }
        ]
    )
    assert resolve_parameters(job) == {}  # operator side: secrets are the runner's business
    with pytest.raises(ParameterError, match="required"):
        resolve_parameters(job, secret_values={})

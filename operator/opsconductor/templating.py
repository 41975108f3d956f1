"""Step templates: the Jinja2 sandbox, its filters, rendering, validation and parameter resolution.

This module owns everything about ``{{ ... }}`` in an OpsJob, for both sides:

- the operator calls :func:`validate_templates` and :func:`resolve_parameters` before any step runs,
  so a job with a bad template or argument fails with a condition naming the step and field;
- the runner calls :func:`evaluate_when` and :func:`render_step` per step and target.

Templates run in a :class:`~jinja2.sandbox.SandboxedEnvironment` with
:class:`~jinja2.StrictUndefined` (a misspelt name is an error, never an empty string) and without
autoescaping. The context has four names: ``params`` (declared parameters), ``target`` (``name``,
``address``, ``port``, ``protocol``, ``labels``; ``None`` for steps without a target), ``steps``
(earlier steps' results for the current target: ``stdout``, ``stderr``, ``exit_code``, ``phase``,
``outputs``) and ``job`` (``name``, ``namespace``, ``uid``).

Filters beyond Jinja2's built-ins: ``shell_quote`` (POSIX shell word), ``ps_quote`` (PowerShell
single-quoted string), ``tojson`` (plain JSON, not HTML-escaped) and ``fromjson``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ValidationError

from opsconductor.api.opsjob import OpsJobSpec, Parameter, Step

CONTEXT_NAMES = frozenset({"params", "target", "steps", "job"})
"""The top-level names a template may use (besides Jinja2's globals such as ``range``)."""

# Characters PowerShell's tokenizer treats as a single quote (System.Management.Automation
# CharExtensions.IsSingleQuote): apostrophe, left/right single quotation marks, single low-9 and
# single high-reversed-9 quotation marks. Inside a single-quoted string each must be doubled.
PS_SINGLE_QUOTES = frozenset("'\u2018\u2019\u201a\u201b")

# Guard against templates that build huge strings ('x' * 10**10) inside the operator or runner.
MAX_RENDERED_CHARS = 1 << 20
MAX_POWER_EXPONENT = 64

# Step types that run once, without a target, unless the step names targets itself.
TARGETLESS_STEP_TYPES = frozenset({"wait", "webhook.call"})


# --- filters --------------------------------------------------------------------------------
def as_text(value: Any) -> str:
    """Return the text a filter quotes for ``value``.

    Strings are used as they are, booleans become ``true``/``false``, ``None`` the empty string,
    numbers their decimal form, and lists and objects compact JSON.

    Args:
        value: a template value.

    Returns:
        Its text form.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def shell_quote(value: Any) -> str:
    """Quote a value as one POSIX shell word (``shlex.quote`` semantics).

    Args:
        value: any template value (see :func:`as_text`).

    Returns:
        A word the shell reads back as exactly the value's text; ``''`` for empty values.
    """
    return shlex.quote(as_text(value))


def ps_quote(value: Any) -> str:
    """Quote a value as a PowerShell single-quoted string literal.

    Every character PowerShell treats as a single quote (``'`` and its Unicode variants
    U+2018, U+2019, U+201A, U+201B) is doubled, as PowerShell's own
    ``CodeGeneration.EscapeSingleQuotedStringContent`` does; nothing else is special inside
    single quotes (no ``$`` expansion, no backtick escapes).

    Args:
        value: any template value (see :func:`as_text`).

    Returns:
        ``'...'``, read back by PowerShell as exactly the value's text.
    """
    escaped = "".join(char * 2 if char in PS_SINGLE_QUOTES else char for char in as_text(value))
    return f"'{escaped}'"


def to_json(value: Any, indent: int | None = None) -> str:
    """Serialise a value as JSON (plain JSON: no HTML escaping, unlike Jinja2's built-in ``tojson``).

    Args:
        value: a JSON-serialisable value.
        indent: pretty-print with this indent.

    Returns:
        The JSON text.
    """
    if isinstance(value, StrictUndefined):
        str(value)  # raises UndefinedError with Jinja2's message
    return json.dumps(value, ensure_ascii=False, indent=indent)


def from_json(text: Any) -> Any:
    """Parse JSON text (e.g. ``steps.query.outputs.body | fromjson``).

    Args:
        text: JSON text.

    Returns:
        The parsed value.
    """
    return json.loads(as_text(text))


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with size limits on ``*`` and ``**`` so a template cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_POWER_EXPONENT}")
            return left**right
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(count, int)
                and len(sequence) * count > MAX_RENDERED_CHARS
            ):
                raise SecurityError(f"result of * would be longer than {MAX_RENDERED_CHARS}")
        return left * right


def make_environment() -> SandboxedEnvironment:
    """Create a sandboxed environment with the OpsConductor filters.

    Returns:
        The environment (StrictUndefined, autoescape off, trailing newlines kept).
    """
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters["shell_quote"] = shell_quote
    env.filters["ps_quote"] = ps_quote
    env.filters["tojson"] = to_json
    env.filters["fromjson"] = from_json
    return env


ENV = make_environment()
CUSTOM_FILTERS = ("shell_quote", "ps_quote", "tojson", "fromjson")


# --- errors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateIssue:
    """A problem with one template, found before any step runs."""

    step: str
    """The step's name."""
    field: str
    """Where the template is, e.g. ``steps[1].command`` or ``steps[0].headers.Authorization``."""
    message: str
    """What is wrong, in words a person can act on."""

    def __str__(self) -> str:
        return f"{self.field} (step {self.step}): {self.message}"


class TemplateRenderError(Exception):
    """A template failed to render or evaluate; ``field`` names it (``command``, ``env.FOO``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"template error in {field}: {message}")
        self.field = field
        self.message = message


class ParameterError(ValueError):
    """A parameter has no valid value; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"parameter {parameter}: {message}")
        self.parameter = parameter
        self.message = message


# --- which fields are templates ---------------------------------------------------------------
@dataclass(frozen=True)
class TemplateField:
    """One templated string inside a step."""

    path: tuple[str | int, ...]
    """Location in ``step.model_dump()`` (attribute names and list indexes)."""
    label: str
    """The field as a person writes it in YAML, relative to the step: ``env.HOME``, ``body.json.a[0]``."""
    source: str
    """The template text."""
    expression: bool = False
    """A bare Jinja2 expression (``when``) rather than a template."""


_SIMPLE_FIELDS = (
    ("command", "command"),
    ("script", "script"),
    ("working_dir", "workingDir"),
    ("url", "url"),
    ("destination", "destination"),
    ("remote_path", "remotePath"),
    ("workspace_path", "workspacePath"),
)
_MAP_FIELDS = (("env", "env"), ("headers", "headers"), ("query", "query"))
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_label(key: str) -> str:
    return f".{key}" if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


def _json_fields(value: Any, path: tuple[str | int, ...], label: str) -> Iterator[TemplateField]:
    if isinstance(value, str):
        yield TemplateField(path, label, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _json_fields(item, (*path, key), label + _key_label(str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_fields(item, (*path, index), f"{label}[{index}]")


def iter_template_fields(step: BaseModel) -> Iterator[TemplateField]:
    """Every templated string of a step, in a stable order.

    Templated are: command, script, workingDir, env values, url, headers and query values, body
    (json strings, form values, text), webhook payload strings, destination, remotePath,
    workspacePath, inline and workspace file sources, and ``when`` (an expression).

    Args:
        step: a step model.

    Yields:
        One :class:`TemplateField` per string.
    """
    for attr, label in _SIMPLE_FIELDS:
        value = getattr(step, attr, None)
        if isinstance(value, str):
            yield TemplateField((attr,), label, value)
    for attr, label in _MAP_FIELDS:
        mapping = getattr(step, attr, None)
        for key, value in (mapping or {}).items():
            yield TemplateField((attr, key), label + _key_label(key), value)
    body = getattr(step, "body", None)
    if body is not None:
        if body.json_ is not None:
            yield from _json_fields(body.json_, ("body", "json_"), "body.json")
        for key, value in (body.form or {}).items():
            yield TemplateField(("body", "form", key), "body.form" + _key_label(key), value)
        if body.text is not None:
            yield TemplateField(("body", "text"), "body.text", body.text)
    payload = getattr(step, "payload", None)
    if payload is not None:
        yield from _json_fields(payload, ("payload",), "payload")
    source = getattr(step, "source", None)
    if source is not None:
        if source.inline is not None:
            yield TemplateField(("source", "inline"), "source.inline", source.inline)
        if source.workspace is not None:
            yield TemplateField(("source", "workspace"), "source.workspace", source.workspace)
    when = getattr(step, "when", None)
    if when is not None:
        yield TemplateField(("when",), "when", when, expression=True)


def is_template(text: str) -> bool:
    """Whether ``text`` contains Jinja2 markup (plain strings are used as they are)."""
    return "{{" in text or "{%" in text or "{#" in text


# --- context --------------------------------------------------------------------------------
def target_context(
    name: str, address: str, port: int, protocol: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """Build the ``target`` template value.

    Args:
        name: the Target's name.
        address: host name or IP address.
        port: port the protocol uses.
        protocol: ssh, winrm, http, ...
        labels: the Target's labels.

    Returns:
        A dict with exactly the documented keys.
    """
    return {"name": name, "address": address, "port": port, "protocol": protocol, "labels": dict(labels)}


def step_result_context(
    *,
    stdout: str = "",
    stderr: str = "",
    exit_code: int | None = None,
    phase: str = "Pending",
    outputs: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One ``steps.<name>`` template value (an earlier step's result for the current target).

    Returns:
        A dict with ``stdout``, ``stderr``, ``exit_code``, ``phase`` and ``outputs``.
    """
    return {
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": exit_code,
        "phase": phase,
        "outputs": dict(outputs or {}),
    }


def build_context(
    *,
    params: Mapping[str, Any],
    target: Mapping[str, Any] | None,
    steps: Mapping[str, Mapping[str, Any]],
    job: Mapping[str, Any],
) -> dict[str, Any]:
    """Build the full template context.

    Args:
        params: resolved parameter values.
        target: :func:`target_context` of the current target, or None.
        steps: earlier steps' :func:`step_result_context` values by step name.
        job: ``name``, ``namespace`` (and ``uid``) of the OpsJob.

    Returns:
        The context dict passed to templates.
    """
    return {"params": dict(params), "target": target, "steps": dict(steps), "job": dict(job)}


# --- rendering ------------------------------------------------------------------------------
@lru_cache(maxsize=2048)
def _compile_template(source: str) -> Template:
    return ENV.from_string(source)


@lru_cache(maxsize=512)
def _compile_expression(source: str) -> Any:
    return ENV.compile_expression(source, undefined_to_none=False)


def _describe(error: Exception) -> str:
    if isinstance(error, TemplateSyntaxError):
        return f"syntax error: {error.message} (line {error.lineno})"
    if isinstance(error, SecurityError):
        return f"not allowed in the sandbox: {error}"
    return str(error) or type(error).__name__


def render_text(source: str, context: Mapping[str, Any], field: str = "template") -> str:
    """Render one template string.

    Args:
        source: the template.
        context: :func:`build_context` output.
        field: the field's label, for the error message.

    Returns:
        The rendered text (``source`` itself when it has no markup).

    Raises:
        TemplateRenderError: on syntax errors, undefined names, sandbox violations, filter errors.
    """
    if not is_template(source):
        return source
    try:
        rendered = _compile_template(source).render(context)
    except (TemplateError, ValueError, TypeError, ArithmeticError, LookupError) as error:
        raise TemplateRenderError(field, _describe(error)) from error
    if len(rendered) > MAX_RENDERED_CHARS:
        raise TemplateRenderError(field, f"rendered text is longer than {MAX_RENDERED_CHARS} characters")
    return rendered


_FALSE_WORDS = frozenset({"", "false", "0", "no", "off", "none", "null"})


def evaluate_when(expr: str, context: Mapping[str, Any]) -> bool:
    """Evaluate a step's ``when`` condition.

    ``expr`` is a bare Jinja2 expression (``params.restart and target.labels.role == 'web'``). When
    it contains ``{{ ... }}`` markup instead, it is rendered and the text is read as a boolean
    (empty, ``false``, ``0``, ``no``, ``off``, ``none`` are false).

    Args:
        expr: the condition.
        context: :func:`build_context` output.

    Returns:
        Whether the step runs for this target.

    Raises:
        TemplateRenderError: the expression is invalid or uses an undefined name.
    """
    if is_template(expr):
        return render_text(expr, context, "when").strip().lower() not in _FALSE_WORDS
    try:
        value = _compile_expression(expr)(**context)
        return bool(value)
    except (TemplateError, ValueError, TypeError, ArithmeticError, LookupError) as error:
        raise TemplateRenderError("when", _describe(error)) from error


def _set_path(data: Any, path: tuple[str | int, ...], value: str) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def render_step(step: Step, context: Mapping[str, Any]) -> Step:
    """Render every templated string field of a step for one target.

    ``when`` is left as it is: it is an expression, evaluated by :func:`evaluate_when` before the
    step is rendered.

    Args:
        step: the step as written in the OpsJob.
        context: :func:`build_context` output for the target.

    Returns:
        A new step model of the same type with rendered values.

    Raises:
        TemplateRenderError: a template failed, or a rendered value is not valid for its field
            (e.g. an empty command).
    """
    fields = [f for f in iter_template_fields(step) if not f.expression and is_template(f.source)]
    if not fields:
        return step
    data = step.model_dump()
    for field in fields:
        _set_path(data, field.path, render_text(field.source, context, field.label))
    try:
        return type(step).model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TemplateRenderError(where, f"rendered value is invalid: {first['msg']}") from error


# --- validation -----------------------------------------------------------------------------
def runs_per_target(step: Step, job_has_targets: bool) -> bool:
    """Whether a step fans out over targets (else it runs once with ``target`` = None).

    A step with its own ``targets``/``targetSelector`` runs on those; ``wait`` and ``webhook.call``
    otherwise run once; every other step runs on the job's targets. The planner uses the same rule.

    Args:
        step: the step.
        job_has_targets: the job sets target, targets or targetSelector.

    Returns:
        True when the step runs per target.
    """
    if step.targets is not None or step.target_selector is not None:
        return True
    if step.type in TARGETLESS_STEP_TYPES:
        return False
    return job_has_targets


def _parse_expression(source: str) -> nodes.Template:
    parser = Parser(ENV, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
    template = nodes.Template([nodes.Output([expr], lineno=1)], lineno=1)
    template.set_environment(ENV)
    return template


def _static_key(node: nodes.Node) -> str | None:
    """``X`` for ``<name>.X`` and ``<name>['X']`` (None when the key is computed)."""
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def _lookups(ast: nodes.Template, name: str) -> list[str]:
    """Return the static keys looked up on the top-level name ``name`` (``params.x`` → ``x``)."""
    keys = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        base = node.node
        if isinstance(base, nodes.Name) and base.name == name and base.ctx == "load":
            key = _static_key(node)
            if key is not None:
                keys.append(key)
    return keys


@dataclass(frozen=True)
class _Scope:
    """What a step's templates may refer to."""

    params: frozenset[str]
    current: str
    earlier_steps: tuple[str, ...]
    later_steps: frozenset[str]
    has_target: bool


def _undeclared(ast: nodes.Template) -> set[str]:
    """Return the names a template takes from its context (not set or looped over inside it)."""
    try:
        return meta.find_undeclared_variables(ast)
    except TemplateError:  # e.g. an unknown filter, reported separately: approximate
        return {node.name for node in ast.find_all(nodes.Name) if node.ctx == "load"}


def _check_ast(ast: nodes.Template, scope: _Scope) -> list[str]:
    problems: list[str] = []
    for node in ast.find_all(nodes.Filter):
        if node.name not in ENV.filters:
            problems.append(f"unknown filter {node.name!r} (OpsConductor adds {', '.join(CUSTOM_FILTERS)})")
    for test in ast.find_all(nodes.Test):
        if test.name not in ENV.tests:
            problems.append(f"unknown test {test.name!r}")
    undeclared = _undeclared(ast)
    for name in sorted(undeclared - CONTEXT_NAMES - set(ENV.globals)):
        problems.append(f"undefined name {name!r}: templates can use params, target, steps and job")
    if "params" in undeclared:
        declared = ", ".join(sorted(scope.params)) or "none"
        for key in _lookups(ast, "params"):
            if key not in scope.params:
                problems.append(f"params.{key} is not a declared parameter (declared: {declared})")
    if "steps" in undeclared:
        for key in _lookups(ast, "steps"):
            if key == scope.current:
                problems.append(f"steps.{key} is this step itself: only earlier steps' results exist")
            elif key in scope.later_steps:
                problems.append(f"steps.{key} is not an earlier step: it runs after this one")
            elif key not in scope.earlier_steps:
                earlier = ", ".join(scope.earlier_steps) or "none"
                problems.append(f"steps.{key}: no step of that name (earlier steps: {earlier})")
    if "target" in undeclared and not scope.has_target and _lookups(ast, "target"):
        problems.append("target is not set: this step runs once without a target")
    return list(dict.fromkeys(problems))


def check_template(source: str, scope: _Scope, *, expression: bool = False) -> list[str]:
    """Problems of one template string (empty when it is fine)."""
    if not expression and not is_template(source):
        return []
    try:
        ast = _parse_field(TemplateField((), "", source, expression))
    except TemplateSyntaxError as error:
        return [_describe(error)]
    problems = _check_ast(ast, scope)
    if not problems:
        try:
            ENV.compile(ast)
        except TemplateError as error:
            problems.append(_describe(error))
    return problems


def _job_has_targets(spec: OpsJobSpec) -> bool:
    return spec.target is not None or spec.targets is not None or spec.target_selector is not None


def validate_templates(spec: OpsJobSpec) -> list[TemplateIssue]:
    """Check every template of a job before any step runs.

    Reports syntax errors, undefined top-level names, ``params.X`` for undeclared ``X``, ``steps.Y``
    where ``Y`` is not an earlier step, ``target`` in steps that run without one, and unknown
    filters and tests.

    Args:
        spec: the OpsJob spec.

    Returns:
        One issue per problem, in step order (empty when all templates are fine).
    """
    params = frozenset(parameter.name for parameter in spec.parameters or [])
    names = [step.name for step in spec.steps]
    has_targets = _job_has_targets(spec)
    issues: list[TemplateIssue] = []
    for index, step in enumerate(spec.steps):
        scope = _Scope(
            params=params,
            current=step.name,
            earlier_steps=tuple(names[:index]),
            later_steps=frozenset(names[index:]),
            has_target=runs_per_target(step, has_targets),
        )
        for field in iter_template_fields(step):
            for message in check_template(field.source, scope, expression=field.expression):
                issues.append(TemplateIssue(step.name, f"steps[{index}].{field.label}", message))
    return issues


def _parse_field(field: TemplateField) -> nodes.Template:
    if field.expression and not is_template(field.source):
        return _parse_expression(field.source)
    return ENV.parse(field.source)


def referenced_steps(spec_steps: list[Step]) -> frozenset[str]:
    """Names of steps whose results some template refers to (``steps.X``).

    The runner keeps outputs for templating only for these.

    Args:
        spec_steps: the job's steps.

    Returns:
        The step names referenced statically; every step when a reference is computed
        (``steps[name]``).
    """
    referenced: set[str] = set()
    for step in spec_steps:
        for field in iter_template_fields(step):
            if not field.expression and not is_template(field.source):
                continue
            try:
                ast = _parse_field(field)
            except TemplateSyntaxError:
                continue
            uses = sum(1 for node in ast.find_all(nodes.Name) if node.name == "steps" and node.ctx == "load")
            keys = _lookups(ast, "steps")
            if uses > len(keys):
                return frozenset(step.name for step in spec_steps)
            referenced.update(keys)
    return frozenset(referenced)


# --- parameters -----------------------------------------------------------------------------
_TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": (
        "a number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "object": ("an object", lambda v: isinstance(v, dict)),
}
_TRUE_TEXT = frozenset({"true", "yes", "on", "1"})
_FALSE_TEXT = frozenset({"false", "no", "off", "0"})


def check_parameter_value(parameter: Parameter, value: Any) -> Any:
    """Check a value against a parameter's declared type and enum.

    Args:
        parameter: the declaration.
        value: the value (from arguments or default).

    Returns:
        The value.

    Raises:
        ParameterError: wrong type or not one of the allowed values.
    """
    wanted, check = _TYPE_CHECKS[parameter.type]
    if not check(value):
        got = json.dumps(value)
        raise ParameterError(parameter.name, f"must be {wanted} (type {parameter.type}), got {got}")
    if parameter.enum is not None and value not in parameter.enum:
        allowed = ", ".join(json.dumps(item) for item in parameter.enum)
        raise ParameterError(parameter.name, f"{json.dumps(value)} is not an allowed value ({allowed})")
    return value


def parse_parameter_text(parameter: Parameter, text: str) -> Any:
    """Convert a value read from a Secret or ConfigMap key to the parameter's type, then check it.

    Args:
        parameter: the declaration.
        text: the key's content.

    Returns:
        The typed value (strings are kept as they are).

    Raises:
        ParameterError: the text does not parse as the declared type.
    """
    value: Any = text
    stripped = text.strip()
    try:
        if parameter.type == "integer":
            value = int(stripped)
        elif parameter.type == "number":
            value = float(stripped)
        elif parameter.type == "boolean":
            lowered = stripped.lower()
            if lowered not in _TRUE_TEXT | _FALSE_TEXT:
                raise ValueError(stripped)
            value = lowered in _TRUE_TEXT
        elif parameter.type in ("list", "object"):
            value = json.loads(stripped)
    except ValueError as error:
        raise ParameterError(
            parameter.name, f"the referenced key holds {stripped[:40]!r}, not a valid {parameter.type}"
        ) from error
    return check_parameter_value(parameter, value)


def _is_secret(parameter: Parameter) -> bool:
    source = parameter.value_from
    return parameter.secret or (source is not None and source.secret_key_ref is not None)


def resolve_parameters(
    spec: OpsJobSpec,
    secret_values: Mapping[str, str] | None = None,
    config_map_values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Resolve the job's parameter values: arguments, then valueFrom, then default.

    Checks that every argument names a declared parameter, that secret parameters take neither an
    argument nor a default, that values have the declared type and are in ``enum``, and that
    required parameters have a value. Optional parameters without a value resolve to ``None``.

    Args:
        spec: the OpsJob spec.
        secret_values: parameter name → content of its ``valueFrom.secretKeyRef`` key. ``None``
            leaves secret parameters out of the result (the operator's case: the runner reads them
            from files); a mapping must hold every required secret parameter.
        config_map_values: parameter name → content of its ``valueFrom.configMapKeyRef`` key.

    Returns:
        Parameter name → value.

    Raises:
        ParameterError: the first problem, naming the parameter.
    """
    declared = {parameter.name: parameter for parameter in spec.parameters or []}
    arguments = spec.arguments or {}
    for name in arguments:
        if name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise ParameterError(name, f"an argument was given but no such parameter is declared ({names})")
    resolved: dict[str, Any] = {}
    for name, parameter in declared.items():
        if _is_secret(parameter):
            if name in arguments:
                raise ParameterError(
                    name, "a secret parameter takes its value from valueFrom.secretKeyRef, not arguments"
                )
            if parameter.default is not None:
                raise ParameterError(name, "a secret parameter cannot have a default")
            if secret_values is None:
                continue
            if name in secret_values:
                resolved[name] = parse_parameter_text(parameter, secret_values[name])
                continue
        elif name in arguments:
            resolved[name] = check_parameter_value(parameter, arguments[name])
            continue
        elif parameter.value_from is not None and parameter.value_from.config_map_key_ref is not None:
            if config_map_values is not None and name in config_map_values:
                resolved[name] = parse_parameter_text(parameter, config_map_values[name])
                continue
            ref = parameter.value_from.config_map_key_ref
            if parameter.default is None and parameter.required:
                raise ParameterError(name, f"ConfigMap {ref.name} has no key {ref.key}")
        if parameter.default is not None:
            resolved[name] = check_parameter_value(parameter, parameter.default)
        elif parameter.required:
            raise ParameterError(name, "is required: give it in arguments, as a default, or with valueFrom")
        else:
            resolved[name] = None
    return resolved

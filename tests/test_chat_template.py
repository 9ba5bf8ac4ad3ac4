"""Chat templates: the same strings as transformers' renderer, and a sandbox that bounds hostile templates."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tfb.errors import TemplateError
from tfb.text.chat_template import render_chat_template
from tfb.text.template_limits import RenderLimits

render_jinja_template = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template

TEMPLATE_DIR = Path(__file__).parent / "data" / "chat_templates"
TEMPLATES = sorted(p.name for p in TEMPLATE_DIR.glob("*.jinja"))
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]},
    },
}]
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "system_multi_turn": ([
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Hello! Wie geht's? 你好 🦙"},
        {"role": "assistant", "content": "Hi there. How can I help?"},
        {"role": "user", "content": 'Tell me a joke about "quotes" & <tags>.\nTwo lines.'},
    ], {}),
    "no_system": ([
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ], {}),
    "ends_with_assistant": ([
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi"},
    ], {}),
    "tools": ([
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
    ], {"tools": TOOLS}),
    "thinking_off": ([
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "Why is the sky blue?"},
    ], {"enable_thinking": False}),
}


def transformers_render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool,
                        **variables: Any) -> str:
    tools = variables.pop("tools", None)
    rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                        add_generation_prompt=add_generation_prompt, **variables)
    return str(rendered[0])


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_real_templates_match_transformers(name: str, conversation: str) -> None:
    template = (TEMPLATE_DIR / name).read_text(encoding="utf-8")
    messages, extra = CONVERSATIONS[conversation]
    for add_generation_prompt in (True, False):
        variables = {**SPECIAL, **extra}
        try:
            expected = transformers_render(template, messages, add_generation_prompt, **variables)
        except Exception as e:  # the template refuses this conversation: so must we, with its message
            with pytest.raises(TemplateError) as raised:
                render_chat_template(template, messages, add_generation_prompt, **variables)
            assert str(raised.value) == getattr(e, "message", str(e))
            continue
        assert render_chat_template(template, messages, add_generation_prompt, **variables) == expected


def test_gemma_refuses_a_system_message() -> None:
    template = (TEMPLATE_DIR / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    messages, _ = CONVERSATIONS["system_multi_turn"]
    with pytest.raises(TemplateError, match=r"^System role not supported$"):
        render_chat_template(template, messages, **SPECIAL)


@pytest.mark.parametrize("template", [
    "{{ data|tojson }}|{{ data|tojson(indent=2) }}|{{ data|tojson(separators=(',', ':'), sort_keys=true) }}",
    "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n  {{ m.content }}\n{% endfor %}\n",
    "{%- set ns = namespace(n=0) -%}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "{{ dict(a=1, b=[1, 2]) }} {{ dict.fromkeys(['x', 'y'], 0) }} {{ missing }} {{ missing is defined }}",
    "{% generation %}{{ messages[0].content }}{% endgeneration %} {{ tools }} {{ documents }}",
    "{{ '%05.1f|%-4s|' % (3.14159, 'ab') }}{{ '{:>6}|{:.2f}'.format('x', 2.5) }}{{ 'a,b'.split(',') }}",
    "  {% if true %}\n    yes\n  {% endif %}\n{{ messages|length }}{{ messages|map(attribute='role')|join(',') }}",
])
def test_environment_matches_transformers(template: str) -> None:
    messages = [{"role": "user", "content": "ü <b>"}, {"role": "assistant", "content": "ok"}]
    data = {"z": "é\"<>&'", "a": [1, 2.5, None, True], "n": {"k": "v"}}
    expected = transformers_render(template, messages, False, data=data)
    assert render_chat_template(template, messages, False, data=data) == expected


def test_strftime_now() -> None:
    assert render_chat_template("{{ strftime_now('%Y-%m-%d') }}", []) == datetime.now().strftime("%Y-%m-%d")


def test_raise_exception_message_is_kept() -> None:
    with pytest.raises(TemplateError, match=r"^Roles must alternate!$"):
        render_chat_template("{{ raise_exception('Roles must alternate!') }}", [])


@pytest.mark.parametrize("template", ["{% if %}", "{{ messages[0].content.upper() }}", "{{ 1 / 0 }}",
                                      "{{ undefined_function() }}", "{{ x|tojson(bad=1) }}"])
def test_template_errors_are_template_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        render_chat_template(template, [], x=object())


def test_messages_must_be_mappings() -> None:
    with pytest.raises(TemplateError, match="mappings"):
        render_chat_template("{{ messages }}", ["hello"])  # type: ignore[list-item]


def test_caller_objects_are_reduced_to_plain_data() -> None:
    class Message(dict[str, Any]):
        def secret(self) -> str:
            return "reached"

    out = render_chat_template("{{ messages[0].role }} {{ messages[0].secret is defined }} {{ obj }}",
                               [Message(role="user", content="x")], obj=object())
    assert out == "user False <object>"


# ---------------------------------------------------------------------------------------- injection

FAST = RenderLimits(max_seconds=0.5)
PAYLOADS = [
    # reaching Python internals
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ request.application.__globals__.__builtins__.open('{marker}', 'w').write('x') }}",
    "{{ ()|attr('__class__')|attr('__base__')|attr('__subclasses__')() }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('{marker}', 'w') }}",
    "{{ strftime_now.__globals__ }}",
    "{{ dict.__class__ }}",
    "{{ namespace(a=1).__dict__ }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ namespace(_x=1) }}",
    "{{ range.__self__ }}",
    # files and other templates
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('touch {marker}') }}",
    "{% extends '/etc/passwd' %}",
    "{{ open('{marker}', 'w') }}",
    # mutating the caller's data
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    # time
    "{% for i in range(999999999) %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    # recursion
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set l = [[1]] %}{% for x in l recursive %}{{ loop(l) }}{% endfor %}",
    "{{ " + "(" * 50000 + "1" + ")" * 50000 + " }}",
    # size
    "{{ 'x' * 10**10 }}",
    "{{ [1, 2] * (2 ** 62) }}",
    "{{ range(10**9)|list }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "{% set s %}{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}{% endset %}{{ s|length }}",
    "{% set s = 'a' * 400000 %}{% set l = [s, s, s, s, s, s, s, s] %}{% set m = [l, l, l, l, l, l, l, l] %}{{ m }}",
    "{{ 'a'|center(10**9) }}",
    "{{ '%999999999d'|format(1) }}",
    "{{ '%*d' % (10**9, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ ('a' * 4000000).replace('a', 'aaaa') }}",
    "{{ ('a\\n' * 2000000)|indent(1000) }}",
    "{{ ('x' * 1000).join(['a'] * 100000) }}",
    "{{ messages|tojson(indent=100000) }}",
    "{{ [1]|slice(10**9)|list }}",
    "{{ 2 ** 999999999 }}",
    "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "{{ lipsum(10**9) }}",
    "x" * (2 * 1024 * 1024),
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_payloads_fail_safely(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    start = time.monotonic()
    with pytest.raises(TemplateError):
        render_chat_template(payload.replace("{marker}", str(marker)), messages, limits=FAST)
    assert time.monotonic() - start < FAST.max_seconds + 1.0
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]
    # the sandbox is left clean for the next render
    assert render_chat_template("{{ messages[0].content }}", messages) == "hi"


def test_default_limits_bound_time() -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        render_chat_template("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                             [])
    assert time.monotonic() - start < RenderLimits().max_seconds + 1.0


def test_default_limits_bound_output() -> None:
    with pytest.raises(TemplateError, match="output"):
        render_chat_template("{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}", [])

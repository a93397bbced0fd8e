#!/usr/bin/env python3
"""Writes engine/tests/data/chat_template_cases.json: what Python's jinja2 renders for template snippets,
invented conversations through the real chat templates in ../shared/gguf/templates/, baremetal's built-in
fallback templates, and strftime formats. The Rust tests (engine/tests/chat_template.rs) must reproduce it.

The environment is the one Hugging Face transformers builds in `_compile_jinja_template`
(src/transformers/utils/chat_template_utils.py): ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and jinja2.ext.loopcontrols; a `tojson` filter on json.dumps(ensure_ascii=False, ...);
globals `raise_exception` (raises TemplateError(msg)) and `strftime_now` (datetime.now().strftime, here a
fixed time per case); `{% generation %}` blocks render their body (AssistantTracker when not tracking).

usage (from the workspace root): python3 scripts/chat_template_cases.py [SHARED_DIR]
  SHARED_DIR defaults to ../shared; needs jinja2 >= 3.1 (pip install jinja2).
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "engine", "tests", "data", "chat_template_cases.json")
BUILTINS = os.path.join(ROOT, "engine", "src", "text", "templates")
DEFAULT_NOW = "2024-07-26T12:00:00"


class Raised(jinja2.exceptions.TemplateError):
    """What raise_exception throws, so a refusal is told apart from any other failure."""


class GenerationBlock(jinja2.ext.Extension):
    """HF's AssistantTracker outside tracking: `{% generation %}body{% endgeneration %}` renders body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def raise_exception(msg):
    raise Raised(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def make_env(now):
    e = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    e.filters["tojson"] = tojson
    e.globals["raise_exception"] = raise_exception
    e.globals["strftime_now"] = lambda fmt: now.strftime(fmt)
    return e


def render(source, context, now=DEFAULT_NOW):
    """{rendered} or {error, raised}: raised is true when the template called raise_exception."""
    env = make_env(datetime.datetime.fromisoformat(now))
    try:
        return {"rendered": env.from_string(source).render(**context)}
    except Raised as ex:
        return {"error": str(ex), "raised": True}
    except Exception as ex:  # any other failure: the Rust side must fail too, message not compared
        return {"error": "%s: %s" % (type(ex).__name__, ex), "raised": False}


# --- snippets: one construct each -----------------------------------------------------------------
MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
D = {"b": 1, "a": [1, 2], "c": {"z": None, "y": True}}

SNIPPETS = [
    # whitespace control
    ("trim_blocks", "{% if true %}\nA\n{% endif %}\nB\n", {}),
    ("lstrip_blocks", "  {% if true %}\n  x\n  {% endif %}\n  y", {}),
    ("lstrip_plus", "  {%+ if true %}x{% endif %}", {}),
    ("trim_minus", "a  \n  {%- if true -%}  \n b {%- endif %}  c", {}),
    ("comment_lstrip", "A\n  {# note #}\nB", {}),
    ("expression_not_lstripped", "A\n  {{ 'x' }}\n", {}),
    ("trailing_newline_dropped", "A\n", {}),
    ("two_trailing_newlines", "A\n\n", {}),
    ("crlf_source", "A\r\n{% if true %}\r\nB\r\n{% endif %}\r\nC\r\n", {}),
    ("raw_block", "{% raw %}{{ x }}{% endraw %}", {}),
    ("set_trim", "{% set x = 1 %}\n{{ x }}", {}),
    ("newline_after_expression_kept", "{{ 'a' }}\n{{ 'b' }}", {}),
    ("minus_plus_mix", "x {{- ' y ' -}} z\n{%- set a = 1 %} w", {}),
    # printing values the way Python's str() does
    ("print_none_bool", "{{ none }}|{{ true }}|{{ false }}|{{ None }}|{{ True }}", {}),
    ("print_numbers", "{{ 3 }}|{{ 1.0 }}|{{ 0.1 + 0.2 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ -0.0 }}|{{ 2.5 }}", {}),
    ("print_containers", "{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v', 'n': none} }}", {}),
    ("print_context_values", "{{ x }}|{{ l }}|{{ d }}", {"x": None, "l": ["a'b", 'q"t', "n\nl"], "d": D}),
    ("print_strings_repr", "{{ ['it\\'s', \"tab\\t\", '\\\\', 'ü'] }}", {}),
    ("print_float_json", "{{ f }}|{{ g }}|{{ h }}|{{ i }}", {"f": 1.0, "g": 123456789.125, "h": 1e16, "i": 12345678901234567890}),
    ("arith", "{{ 7 / 2 }}|{{ 4 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ 1 + 2.5 }}", {}),
    ("string_repeat", "{{ 'ab' * 3 }}|{{ '=' * 0 }}", {}),
    ("concat_tilde", "{{ 'a' ~ 1 ~ 'b' ~ 2.5 }}", {}),
    ("concat_tilde_bool_none", "{{ 'a' ~ true ~ none }}", {}),
    ("string_filter", "{{ true|string }}|{{ none|string }}|{{ [1, 'x']|string }}|{{ 2.0|string }}", {}),
    ("join_filter", "{{ [1, 2, 3]|join(',') }}|{{ ['a', 'b']|join }}|{{ [true, none]|join('|') }}", {}),
    ("join_attribute", "{{ messages|join(', ', attribute='role') }}", {"messages": MSGS}),
    # undefined like jinja2's default Undefined
    ("undefined_print", "[{{ undef }}]", {}),
    ("undefined_length", "{{ undef|length }}", {}),
    ("undefined_iterate", "{% for x in undef %}x{% else %}empty{% endfor %}", {}),
    ("undefined_tests", "{{ undef is defined }}|{{ undef is undefined }}|{{ undef is none }}|{{ undef is not none }}", {}),
    ("undefined_concat", "{{ undef ~ 'a' }}", {}),
    ("undefined_default", "{{ undef|default('d') }}|{{ ''|default('e') }}|{{ ''|default('e', true) }}|{{ none|default('n') }}", {}),
    ("undefined_if", "{% if undef %}y{% else %}n{% endif %}|{% if not undef %}t{% endif %}", {}),
    ("undefined_attr_error", "{{ undef.attr }}", {}),
    ("undefined_item_error", "{{ undef['k'] }}", {}),
    ("undefined_plus_error", "{{ undef + 1 }}", {}),
    ("undefined_type_tests", "{{ undef is iterable }}{{ undef is sequence }}{{ undef is mapping }}{{ undef is string }}{{ undef is number }}", {}),
    ("undefined_eq_none", "{{ undef == none }}", {}),
    ("none_attr", "[{{ n.attr }}]", {"n": None}),
    ("missing_key", "[{{ d.missing }}]|[{{ d['missing'] }}]|{{ d.missing is defined }}", {"d": D}),
    ("missing_key_chain_error", "{{ d.missing.x }}", {"d": D}),
    ("string_attr", "[{{ s.foo }}]|{{ s.foo is defined }}|{{ s.content is defined }}", {"s": "abc"}),
    ("index_out_of_range", "[{{ l[5] }}]|{{ l[5] is defined }}", {"l": [1, 2]}),
    ("iterate_none", "{% for x in n %}{{ x }}{% endfor %}end", {"n": None}),
    ("none_length", "{{ n|length }}", {"n": None}),
    ("in_none", "{{ 'a' in n }}", {"n": None}),
    ("none_list", "{{ n|list }}", {"n": None}),
    ("nesting_300", "{% set ns = namespace(x=[]) %}{% for i in range(300) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|string|length }}|{{ ns.x|tojson|length }}", {}),
    ("nesting_5000_repr", "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}", {}),
    ("nesting_5000_tojson", "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x|tojson }}", {}),
    ("tools_not_none", "{% if tools is not none %}yes{% else %}no{% endif %}", {}),
    ("tools_null", "{% if tools is not none %}yes{% else %}no{% endif %}", {"tools": None}),
    # loops
    ("loop_vars", "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {"messages": MSGS}),
    ("loop_prev_next", "{% for m in messages %}{{ loop.previtem.role if loop.previtem else '-' }}>{{ loop.nextitem.role if loop.nextitem else '-' }} {% endfor %}", {"messages": MSGS}),
    ("loop_cycle", "{% for m in messages %}{{ loop.cycle('a', 'b') }}{% endfor %}", {"messages": MSGS}),
    ("loop_break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("loop_else", "{% for i in [] %}{{ i }}{% else %}none{% endfor %}", {}),
    ("loop_filter", "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role }}{{ loop.last }} {% endfor %}", {"messages": MSGS}),
    ("loop_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": D}),
    ("loop_items_filter", "{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}", {"d": D}),
    ("loop_dict", "{% for k in d %}{{ k }}{% endfor %}", {"d": D}),
    ("loop_string", "{% for c in 'héllo' %}{{ c }}.{% endfor %}", {}),
    ("range", "{{ range(3)|list }}|{{ range(1, 4)|list }}|{{ range(0, 10, 3)|list }}|{{ range(5, 0, -2)|list }}", {}),
    ("loop_scoping", "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("loop_nested_loop_var", "{% for a in [1, 2] %}{% for b in [3, 4] %}{{ loop.index }}{% endfor %}{{ loop.index }};{% endfor %}", {}),
    ("set_in_if_leaks", "{% if true %}{% set x = 1 %}{% endif %}{{ x }}", {}),
    ("macro_sees_later_globals", "{% set a = 1 %}{% macro m() %}{{ a }}{% endmacro %}{% set a = 2 %}{{ m() }}", {}),
    ("division_by_zero", "{{ 1 / 0 }}", {}),
    ("mixed_type_compare", "{{ 1 < 'a' }}", {}),
    ("big_ints", "{{ 10 ** 20 }}|{{ 2 ** 62 * 4 }}|{{ 1 / 3 }}", {}),
    ("tilde_float", "{{ 'x' ~ 0.1 }}|{{ 'x' ~ 2.0 }}|{{ 'x' ~ 1e20 }}", {}),
    ("case_insensitive_filters", "{{ {'B': 1, 'a': 2}|dictsort }}|{{ ['a', 'A', 'b']|unique|list }}|{{ ['b', 'A', 'c']|min }}|{{ ['b', 'A', 'C']|max }}", {}),
    ("title_forms", "{{ \"hello-world's x\"|title }}|{{ \"hello-world's x\".title() }}", {}),
    ("str_title_python", "{{ '1st x-ray o\'neil ǅ'.title() }}", {}),
    ("str_splitlines_python", "{{ s.splitlines() }}|{{ s.splitlines(true) }}|{{ ''.splitlines() }}", {"s": "a\rb\r\nc\u2028d\n\ne\n"}),
    ("str_rsplit", "{{ 'a,b,c'.rsplit(',', 1) }}|{{ '  a  b c '.rsplit() }}|{{ '  a  b c '.rsplit(None, 1) }}|{{ 'a,,b'.rsplit(',') }}|{{ ''.rsplit() }}|{{ ','.rsplit(',') }}", {}),
    ("str_removeprefix", "{{ 'tool_x'.removeprefix('tool_') }}|{{ 'x.json'.removesuffix('.json') }}|{{ 'abc'.removeprefix('z') }}", {}),
    ("list_index", "{{ ['a', 'b', 'c'].index('b') }}", {}),
    ("format_kwargs", "{{ '{name} is {n}'.format(name='x', n=1) }}", {}),
    ("format_filter_none", "{{ '%s'|format(none) }}", {}),
    # set, namespace, macros
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", {"messages": MSGS}),
    ("namespace_empty", "{% set ns = namespace() %}{% set ns.index = 0 %}{% set ns.index = ns.index + 1 %}{{ ns.index }}", {}),
    ("set_block", "{% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}]", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}),
    ("macro", "{% macro f(a, b='x') %}<{{ a }}{{ b }}>{% endmacro %}{{ f(1) }}{{ f(2, 'y') }}{{ f(a=3, b='z') }}", {}),
    ("macro_caller", "{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}inner{% endcall %}", {}),
    ("with_block", "{% with a = 1 %}{{ a }}{% endwith %}[{{ a }}]", {}),
    ("generation_block", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}", {"messages": MSGS}),
    ("generation_block_trim", "A\n  {%- generation -%}\n  B\n  {%- endgeneration %}\nC", {}),
    ("if_elif_else", "{% for i in [1, 2, 3] %}{% if i == 1 %}one{% elif i == 2 %}two{% else %}many{% endif %}{% endfor %}", {}),
    ("inline_if", "{{ 'a' if true else 'b' }}{{ 'c' if false else 'd' }}[{{ 'e' if false }}]", {}),
    # filters
    ("trim_filter", "[{{ '  a b \\n'|trim }}]|[{{ 'xxaxx'|trim('x') }}]", {}),
    ("case_filters", "{{ 'hello world'|upper }}|{{ 'HeLLo'|lower }}|{{ 'hello wORLD'|title }}|{{ 'hello World'|capitalize }}", {}),
    ("replace_filter", "{{ 'aaa'|replace('a', 'b') }}|{{ 'aaa'|replace('a', 'b', 2) }}", {}),
    ("length_filter", "{{ 'héllo'|length }}|{{ [1, 2]|length }}|{{ d|length }}|{{ d|count }}", {"d": D}),
    ("first_last", "{{ [1, 2, 3]|first }}|{{ [1, 2, 3]|last }}|{{ 'abc'|first }}|{{ 'abc'|last }}", {}),
    ("selectattr", "{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}", {"messages": MSGS}),
    ("selectattr_eq_alias", "{{ messages|selectattr('role', '==', 'user')|list|length }}|{{ messages|selectattr('role', 'eq', 'user')|list|length }}", {"messages": MSGS}),
    ("selectattr_truthy", "{{ items|selectattr('on')|map(attribute='n')|list }}", {"items": [{"n": 1, "on": True}, {"n": 2, "on": False}, {"n": 3}]}),
    ("rejectattr", "{{ messages|rejectattr('role', 'equalto', 'system')|map(attribute='role')|join(',') }}", {"messages": MSGS}),
    ("select_reject", "{{ [1, 2, 3, 4]|select('odd')|list }}|{{ [1, 2, 3, 4]|reject('odd')|list }}|{{ ['a', 'code_interpreter']|reject('equalto', 'code_interpreter')|list }}", {}),
    ("map_filter", "{{ ['a', 'b']|map('upper')|list }}|{{ messages|map(attribute='role')|unique|list }}", {"messages": MSGS}),
    ("map_attribute_default", "{{ items|map(attribute='x', default='?')|list }}", {"items": [{"x": 1}, {}]}),
    ("sort_filter", "{{ [3, 1, 2]|sort }}|{{ [3, 1, 2]|sort(reverse=true) }}|{{ ['b', 'A', 'a']|sort }}|{{ ['b', 'A', 'a']|sort(case_sensitive=true) }}", {}),
    ("sort_attribute", "{{ items|sort(attribute='n')|map(attribute='n')|list }}", {"items": [{"n": 2}, {"n": 1}]}),
    ("reverse_filter", "{{ [1, 2, 3]|reverse|list }}|{{ 'abc'|reverse }}", {}),
    ("sum_min_max", "{{ [1, 2, 3]|sum }}|{{ [1, 2, 3]|min }}|{{ [1, 2, 3]|max }}|{{ items|sum(attribute='n') }}", {"items": [{"n": 2}, {"n": 1}]}),
    ("groupby", "{% for g in messages|groupby('role') %}{{ g.grouper }}={{ g.list|length }};{% endfor %}|{% for k, items in messages|groupby('role') %}{{ k }}{% endfor %}", {"messages": MSGS}),
    ("operator_tests", "{{ [1, 2, 3]|select('>', 1)|list }}|{{ [1, 2, 3]|reject('<=', 2)|list }}|{{ [1, 2, 3]|select('!=', 2)|list }}|{{ items|selectattr('n', 'ge', 2)|map(attribute='n')|list }}", {"items": [{"n": 2}, {"n": 1}]}),
    ("dictsort", "{{ d|dictsort }}", {"d": {"b": 1, "a": 2}}),
    ("int_float_round_abs", "{{ '3'|int }}|{{ 3.7|int }}|{{ '2.5'|float }}|{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ -3|abs }}|{{ 'x'|int }}", {}),
    ("indent_filter", "{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, blank=true) }}", {}),
    ("list_filter", "{{ 'abc'|list }}|{{ d|list }}", {"d": D}),
    ("batch_slice", "{{ [1, 2, 3, 4, 5]|batch(2)|list }}", {}),
    ("wordcount", "{{ 'a b  c'|wordcount }}|{{ 'it\'s über-cool_x 42'|wordcount }}", {}),
    ("format_filter", "{{ '%s-%d'|format('a', 1) }}|{{ '%05.1f'|format(2.25) }}", {}),
    ("int_float_strings", "{{ ' 42 '|int }}|{{ '1_000'|int }}|{{ '0x1A'|int(base=16) }}|{{ '1e3'|int }}|{{ '-3.9'|int }}|{{ 'x'|int(7) }}|{{ none|int }}|{{ true|int }}|{{ '1_0.5'|float }}|{{ 'inf'|float }}|{{ 'x'|float }}|{{ 'x'|float(default=1.5) }}|{{ true|float }}", {}),
    ("center_truncate", "[{{ 'ab'|center(6) }}][{{ 'ab'|center(5) }}][{{ 'abc'|center(6) }}][{{ 'abc'|center(2) }}]|{{ 'hello world'|truncate(8) }}|{{ 'hello big world'|truncate(9) }}|{{ 'hello big world'|truncate(9, true) }}|{{ 'hello big world'|truncate(9, end='~', leeway=0) }}", {}),
    ("escape_filter", "{{ '<a & b>'|e }}|{{ '<x>'|escape }}", {}),
    ("safe_filter", "{{ '<a>'|safe }}", {}),
    ("attr_filter", "{{ d|attr('b') }}", {"d": D}),
    # tests
    ("type_tests", "{{ 'a' is string }}{{ 1 is string }}{{ 1 is number }}{{ 1.5 is number }}{{ true is number }}{{ 1 is integer }}{{ 1.0 is integer }}{{ 1.0 is float }}{{ true is boolean }}{{ none is none }}", {}),
    ("container_tests", "{{ d is mapping }}{{ l is mapping }}{{ l is sequence }}{{ s is sequence }}{{ d is sequence }}{{ s is iterable }}{{ d is iterable }}{{ 1 is iterable }}{{ n is iterable }}", {"d": D, "l": [1], "s": "abc", "n": None}),
    ("value_tests", "{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is in 'cat' }}{{ 1 is eq 1 }}{{ 'a' is equalto 'a' }}{{ 1 is ne 2 }}{{ 1 is lt 2 }}{{ 2 is gt 1 }}{{ none is sameas none }}{{ 'ab' is lower }}{{ 'AB' is upper }}", {}),
    ("true_false_tests", "{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}", {}),
    ("callable_test", "{% macro m() %}{% endmacro %}{{ raise_exception is callable }}{{ strftime_now is callable }}{{ m is callable }}{{ 'x' is callable }}{{ d is callable }}", {"d": D}),
    # operators
    ("in_operator", "{{ 'a' in 'cat' }}{{ 'k' in d }}{{ 'b' in d }}{{ 1 in [1, 2] }}{{ 3 not in [1, 2] }}{{ 'tool_calls' in m }}", {"d": D, "m": {"role": "user"}}),
    ("comparisons", "{{ 1 == 1.0 }}{{ 'a' < 'b' }}{{ [1, 2] == [1, 2] }}{{ d == d }}{{ 1 != 2 }}{{ 2 >= 2 }}{{ not true }}", {"d": D}),
    ("chained_comparison", "{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}", {}),
    ("and_or_values", "{{ 0 or 'x' }}|{{ 'a' and 'b' }}|{{ none or [] }}|{{ '' and 1 }}", {}),
    ("dict_equality", "{{ m == messages[1] }}{{ m == messages[3] }}", {"m": MSGS[1], "messages": MSGS}),
    ("slicing", "{{ messages[1:]|length }}|{{ messages[-1].content }}|{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ [1, 2, 3, 4][::2] }}|{{ [1, 2, 3][:-1] }}|{{ 'hello'[-2:] }}", {"messages": MSGS}),
    ("string_index", "{{ 'hello'[0] }}{{ 'hello'[-1] }}", {}),
    ("plus_concat", "{{ 'a' + 'b' }}|{{ [1] + [2] }}", {}),
    ("plus_str_int_error", "{{ 'a' + 1 }}", {}),
    ("unary", "{{ -x }}|{{ not x }}|{{ --x }}", {"x": 3}),
    ("unary_plus", "{{ +x }}", {"x": 3}),
    ("list_literal_tuple", "{{ (1, 2) }}|{{ (1,) }}|{{ () }}", {}),
    ("dict_literal_access", "{{ {'a': {'b': 'c'}}.a.b }}|{{ {'a': 1}['a'] }}", {}),
    ("string_escapes", "{{ 'a\\tb\\\\n\\u00e9\\x41' }}|{{ \"q'q\" }}", {}),
    ("bool_int_arith", "{{ true + 1 }}", {}),
    ("percent_format", "{{ '%s-%d' % ('a', 1) }}", {}),
    # constructs seen in real templates (Mistral Small 3.1, Seed-OSS, GLM-4.5, MiniMax-M2, Command-R7B,
    # Nemotron, Kimi-K2, DeepSeek-V3.1 in llama.cpp's models/templates)
    ("string_line_continuation", "{% set s = \"one \\\ntwo\\\\n\" %}[{{ s }}]", {}),
    ("string_escapes_more", "{{ 'a\\'b' }}|{{ \"a\\\"b\" }}|{{ 'tab\\there' }}|{{ 'uni\\u00e9\\U0001F600' }}|{{ 'oct\\101' }}|{{ 'bad\\q' }}", {}),
    ("string_named_escape", "{{ '\\N{BULLET} item' }}", {}),
    ("string_slash_escape", "{{ 'a\\/b' }}|{{ '\\a\\v'|length }}", {}),
    ("int_key_dict", "{% set d = {0: 0, 512: 128, 1024: 256} %}{% for k, v in d|dictsort %}{{ k }}:{{ v }};{% endfor %}{{ d[512] }}|{{ d }}", {}),
    ("none_capitalised", "{% set ns = namespace(interval = None) %}{{ ns.interval is none }}|{{ None is none }}", {}),
    ("in_tuple", "{{ 'number' in ('number', 'integer') }}{{ 'x' in ('number', 'integer') }}", {}),
    ("multiline_tag", "{%- if a is defined\n  and a\n  and a|length > 0 %}yes{% endif %}", {"a": [1]}),
    ("is_false_test", "{{ ns.x is false }}|{{ ns.y is false }}|{{ 0 is false }}", {"ns": {"x": False, "y": 0}}),
    ("lower_filter_eq", "{{ m.role|lower == 'system' }}", {"m": {"role": "SYSTEM"}}),
    ("list_plus_in_namespace", "{% set ns = namespace(v=[]) %}{% for i in [1, 2] %}{% set ns.v = ns.v + [i] %}{% endfor %}{{ ns.v }}|{{ 2 in ns.v }}", {}),
    ("macro_result_methods", "{% macro vt(c) %}{{- c -}}{% endmacro %}{{ vt('ab/nothink').endswith('/nothink') }}|{{ vt(' x ').strip() }}|{{ (vt('a') + 'b') }}", {}),
    ("macro_result_is_string", "{% macro vt(c) %}{{- c -}}{% endmacro %}{% set u = vt('x') %}{{ u is string }}{{ u|length }}", {}),
    ("tojson_then_string", "{{ d|tojson|string }}|{{ d|string }}|{{ [d]|string }}", {"d": {"city": "Paris", "n": 1, "ok": True, "x": None}}),
    ("arg_value_string", "{% for k, v in args|items %}{{ k }}={{ v if v is string else v|string }};{% endfor %}", {"args": {"city": "Oslo", "days": 3, "units": ["c", "f"], "opts": {"a": True}}}),
    ("split_maxsplit_index", "{{ 'a</think>b</think>c'.split('</think>', 1)[1] }}", {}),
    ("parts_first_last", "{% set parts = 'r</think>c'.split('</think>') %}{{ parts|first }}|{{ parts|last }}|{{ ('\\n\\nx\\n'.rstrip('\\n').split('<think>'))|last }}", {}),
    ("strip_chars", "[{{ '\\nx\\n'.strip('\\n') }}]", {}),
    ("default_true_chain", "{{ (c|default('', true)).replace('/think', '').strip() }}|{{ (n|default('', true)).strip() }}", {"c": " hi /think ", "n": None}),
    ("dict_membership", "{{ 'image' in c }}{{ 'text' in c }}{{ 'tool_calls' in msgs[-1] }}", {"c": {"type": "text", "text": "x"}, "msgs": [{"role": "assistant", "content": "x"}]}),
    ("slice_from_index", "{% for m in messages %}{% if loop.index0 == 1 %}{{ messages[loop.index0 + 1:]|map(attribute='role')|join(',') }}{% endif %}{% endfor %}|{{ messages[:-1]|length }}|{{ 'abcdefghijk'[-9:] }}", {"messages": MSGS}),
    ("for_break_in_if", "{% for m in messages[1:] %}{% if m.role == 'user' %}{{ m.content }},{% else %}{% break %}{% endif %}{% endfor %}", {"messages": MSGS}),
    ("nested_macro_call_counter", "{% macro idx(ms, id) %}{% set c = namespace(v=0) %}{% for m in ms %}{% if m.id == id %}{{ c.v }}{% endif %}{% set c.v = c.v + 1 %}{% endfor %}{% endmacro %}[{{ idx(ms, 'b') }}]", {"ms": [{"id": "a"}, {"id": "b"}]}),
    ("tool_function_fallback", "{% for t in tools %}{{ (t.function if t.function is defined else t)|tojson }};{% endfor %}", {"tools": [{"type": "function", "function": {"name": "f"}}, {"name": "g"}]}),
    ("conditional_expr_concat", "{{ '}' + (', ' if not loop_last else '') }}", {"loop_last": False}),
    ("string_is_not_mapping", "{{ 'x' is iterable and 'x' is not mapping }}|{{ l is iterable and l is not mapping }}|{{ d is iterable and d is not mapping }}", {"l": [1], "d": {"a": 1}}),
    # Python methods (minijinja-contrib pycompat)
    ("str_strip", "[{{ '  a  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '  a  '.lstrip() }}][{{ '  a  '.rstrip() }}][{{ '\\n\\na'.lstrip('\\n') }}]", {}),
    ("str_split", "{{ 'a b  c'.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ ''.split() }}|{{ ''.split(',') }}|{{ ' a '.split(' ') }}", {}),
    ("str_split_index", "{{ 'x</think>y</think>z'.split('</think>')[-1] }}|{{ 'abc'.split('</think>')[-1] }}", {}),
    ("str_splitlines", "{{ 'a\\nb\\r\\nc\\n'.splitlines() }}", {}),
    ("str_startswith", "{{ 'hello'.startswith('he') }}{{ 'hello'.endswith('lo') }}{{ 'hello'.startswith(('x', 'h')) }}{{ 'hello'.endswith('x') }}", {}),
    ("str_replace_count", "{{ 'aaa'.replace('a', 'b') }}|{{ 'aaa'.replace('a', 'b', 1) }}", {}),
    ("str_find", "{{ 'héllo'.find('l') }}|{{ 'hello'.rfind('l') }}|{{ 'hello'.find('z') }}|{{ 'hello'.count('l') }}", {}),
    ("str_case", "{{ 'hello wORLD'.upper() }}|{{ 'HeLLo'.lower() }}|{{ 'hello wORLD'.title() }}|{{ 'hello World'.capitalize() }}", {}),
    ("str_is", "{{ '123'.isdigit() }}{{ 'abc'.isalpha() }}{{ 'a1'.isalnum() }}{{ '  '.isspace() }}{{ 'abc'.islower() }}{{ 'ABC'.isupper() }}", {}),
    ("str_join", "{{ ', '.join(['a', 'b']) }}", {}),
    ("str_format", "{{ '{} and {}'.format('a', 1) }}|{{ '{0}{0}'.format('x') }}", {}),
    ("dict_methods", "{{ d.keys()|list }}|{{ d.values()|list|length }}|{{ d.get('b') }}|{{ d.get('zz') }}|{{ d.get('zz', 'def') }}|{{ d.items()|list|length }}", {"d": D}),
    ("list_count", "{{ [1, 2, 1].count(1) }}", {}),
    ("list_append_forbidden", "{% set l = [] %}{{ l.append(1) }}", {}),
    ("unknown_method_error", "{{ 'x'.nosuchmethod() }}", {}),
    # globals
    ("raise_exception", "before{{ raise_exception('Only user and assistant roles are supported!') }}after", {}),
    ("raise_exception_in_if", "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok", {"messages": MSGS}),
    ("strftime_now", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A, %B %-d') }}", {}),
    ("dict_global", "{{ dict(a=1, b='x') }}", {}),
    ("namespace_print", "{% set ns = namespace(a=1) %}{{ ns.a }}", {}),
    ("syntax_error", "{% if %}", {}),
    ("unclosed_block_error", "{% for x in y %}", {}),
    # tojson as HF defines it: json.dumps(ensure_ascii=False)
    ("tojson_scalars", "{{ none|tojson }}|{{ true|tojson }}|{{ 1|tojson }}|{{ 1.0|tojson }}|{{ 0.1|tojson }}|{{ 'a'|tojson }}", {}),
    ("tojson_floats", "{{ l|tojson }}", {"l": [1e20, 1e16, 1e15, 123456789.123, 1e-5, 0.0001, -2.5, 3.0, 1.7976931348623157e308, 5e-324]}),
    ("tojson_big_ints", "{{ l|tojson }}", {"l": [9007199254740993, -9223372036854775808, 18446744073709551615]}),
    ("tojson_strings", "{{ s|tojson }}", {"s": "quote\" backslash\\ nl\n cr\r tab\t bs\b ff\f nul\u0000 us\u001f del\u007f é ✓ 😀 \u2028 </script> & '"}),
    ("tojson_ensure_ascii", "{{ s|tojson(ensure_ascii=true) }}", {"s": "é ✓ 😀 \u007f"}),
    ("tojson_nested", "{{ d|tojson }}", {"d": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "City, e.g. Paris"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}, "empty_l": [], "empty_d": {}}}),
    ("tojson_indent", "{{ d|tojson(indent=4) }}\n{{ d|tojson(indent=2) }}\n{{ d|tojson(indent=0) }}\n{{ [[], {}, [1]]|tojson(indent=1) }}\n{{ d|tojson(indent='\\t') }}", {"d": {"a": [1, {"b": None}], "c": "x", "e": {}, "f": []}}),
    ("tojson_sort_keys", "{{ d|tojson(sort_keys=true) }}", {"d": {"b": 1, "a": {"d": 1, "c": 2}, "B": 0, "é": 1}}),
    ("tojson_separators", "{{ d|tojson(separators=(',', ':')) }}|{{ d|tojson(indent=2, separators=(',', ' = ')) }}", {"d": {"a": [1, 2], "b": "c"}}),
    ("tojson_literals", "{{ {'a': (1, 2), 'b': [true, none]}|tojson }}|{{ {1: 'x'}|tojson }}|{{ d.items()|list|tojson }}", {"d": {"k": "v"}}),
    ("tojson_undefined_error", "{{ undef|tojson }}", {}),
    ("tojson_slice", "{% set out = d|tojson %}{{ out[:-1] }}, \"id\": 1}}", {"d": {"name": "f", "arguments": {"x": 1}}}),
    ("tojson_string_content", "{% if c is mapping or c is iterable %}{{ c|tojson }}{% else %}{{ c }}{% endif %}", {"c": "sunny, 20°C"}),
]

# --- conversations through the real templates (files in SHARED/gguf/templates) ----------------------
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]

CONVERSATIONS = {
    "long_multi_turn": dict(messages=[
        {"role": "system", "content": "  Be brief. /no_think  "},
        {"role": "user", "content": "Hi!\nHow are you?"},
        {"role": "assistant", "content": "<think>hmm</think>\n\nFine, thanks."},
        {"role": "user", "content": "Quote: \"x\" & <y> — 日本語 😀"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "  trailing spaces  "}], add_generation_prompt=True),
    "assistant_last": dict(messages=[
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}], add_generation_prompt=False),
    "tool_call": dict(messages=[
        {"role": "system", "content": "You can check the weather."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "sunny, 20°C"},
        {"role": "user", "content": "Thanks"}], tools=TOOLS, add_generation_prompt=True),
    "tool_call_string_args": dict(messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abcdefghi", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "{\"temp\": -3}"}],
        tools=TOOLS, add_generation_prompt=True),
    "tools_no_call": dict(messages=[{"role": "user", "content": "Hello"}], tools=TOOLS, add_generation_prompt=True),
    "empty_messages": dict(messages=[], add_generation_prompt=True),
    "bad_role": dict(messages=[{"role": "narrator", "content": "Once upon a time"}], add_generation_prompt=True),
    "system_only": dict(messages=[{"role": "system", "content": "Only a system prompt."}], add_generation_prompt=False),
    "thinking_off": dict(messages=[{"role": "user", "content": "2+2?"}], add_generation_prompt=True, enable_thinking=False),
    "llama_date_and_builtin_tools": dict(messages=[{"role": "user", "content": "Search it"}],
                                         builtin_tools=["brave_search", "wolfram_alpha"], date_string="01 Jan 2025",
                                         tools=TOOLS, tools_in_user_message=False, add_generation_prompt=True),
    "content_parts": dict(messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
                          add_generation_prompt=True),
}

# --- strftime: Python's datetime.strftime (glibc's conversions) --------------------------------------
STRFTIME_NOWS = ["2024-07-26T12:00:00", "2025-01-01T00:05:09", "2021-01-03T23:59:59", "2000-02-29T07:08:09",
                 "1999-12-31T13:00:00", "2026-12-28T00:00:00"]
STRFTIME_FORMATS = ["%d %b %Y", "%Y-%m-%d %H:%M:%S", "%a %A %b %B %h", "%j|%U|%W|%V|%G|%g|%u|%w",
                    "%y|%C|%e|%I|%l|%k|%p|%P|%M", "%c|%x|%X|%D|%F|%T|%R|%r", "%%|%n|%t|%Y%%",
                    "%-d %-m %-H %-I %-j %-M %-S %_d %_m %0e %^a %^B", "plain text, no conversions", "%z%Z|",
                    "%s"]


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
    templates_dir = os.path.join(shared, "gguf", "templates")
    out = {"generator": "scripts/chat_template_cases.py", "jinja2": jinja2.__version__,
           "snippets": [], "conversations": [], "builtins": [], "strftime": []}
    names = set()
    for name, source, ctx in SNIPPETS:
        assert name not in names, name
        names.add(name)
        out["snippets"].append(dict(name=name, template=source, context=ctx, now=DEFAULT_NOW,
                                    **render(source, ctx)))
    for fname in sorted(os.listdir(templates_dir)):
        source = open(os.path.join(templates_dir, fname), encoding="utf-8").read()
        for case, ctx in CONVERSATIONS.items():
            full = dict(ctx, bos_token="<s>", eos_token="</s>")
            out["conversations"].append(dict(template=fname, case=case, context=full, now=DEFAULT_NOW,
                                             **render(source, full)))
    for fname in sorted(os.listdir(BUILTINS)):
        source = open(os.path.join(BUILTINS, fname), encoding="utf-8").read()
        for case, ctx in CONVERSATIONS.items():
            full = dict(ctx, bos_token="<s>", eos_token="</s>")
            out["builtins"].append(dict(template=fname, case=case, context=full, now=DEFAULT_NOW,
                                        **render(source, full)))
    for now in STRFTIME_NOWS:
        dt = datetime.datetime.fromisoformat(now)
        for fmt in STRFTIME_FORMATS:
            out["strftime"].append(dict(now=now, format=fmt, rendered=dt.strftime(fmt)))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for part in ("snippets", "conversations", "builtins"):
        rows = out[part]
        print("%s: %d rendered, %d raised, %d other errors" % (
            part, sum("rendered" in r for r in rows), sum(r.get("raised") is True for r in rows),
            sum(r.get("raised") is False for r in rows)))


if __name__ == "__main__":
    main()

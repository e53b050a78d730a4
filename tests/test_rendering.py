"""Templates in the sandbox: safe, strict about typos, forgiving about empty fields."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.constants import TEMPLATE_RECHECK_S
from worker.errors import RenderLimitError, TemplateError
from worker.messages.rendering import TemplateRenderer, locale_chain

COMPANY = {"name": "Shop", "address": "Street 1"}


def renderer_with(
    tmp_path: Path, subject: str, text: str = "x", html: str = "x"
) -> TemplateRenderer:
    folder = tmp_path / "t" / "en"
    folder.mkdir(parents=True)
    (folder / "subject.txt.j2").write_text(subject, encoding="utf-8")
    (folder / "body.txt.j2").write_text(text, encoding="utf-8")
    (folder / "body.html.j2").write_text(html, encoding="utf-8")
    return TemplateRenderer(tmp_path, "en")


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("de-AT", ["de-at", "de", "en"]),
        ("de_at", ["de-at", "de", "en"]),
        (None, ["en"]),
        ("../x", ["en"]),
    ],
)
def test_locale_chain(locale, chain):
    assert locale_chain(locale, "en") == chain


def test_locale_fallback_picks_german_for_austria():
    renderer = TemplateRenderer(REPO / "templates", "en")
    message = renderer.render(
        "birthday", "de-AT", {"customer": {"first_name": "Jörg"}, "company": COMPANY}
    )
    assert message.locale == "de"
    assert message.subject == "Alles Gute zum Geburtstag, Jörg!"
    fallback = renderer.render(
        "birthday", "fr-FR", {"customer": {"first_name": None}, "company": COMPANY}
    )
    assert fallback.locale == "en" and fallback.subject == "Happy birthday!"


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ '{0.__class__}'.format(customer) }}",
    ],
)
def test_sandbox_refuses_escapes(tmp_path, payload):
    renderer = renderer_with(tmp_path, payload)
    with pytest.raises(TemplateError):
        renderer.render("t", "en", {"customer": {}})


@pytest.mark.parametrize(
    "payload",
    [
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**8 }}",
        "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxx{% endfor %}{% endfor %}",
    ],
)
def test_runaway_templates_are_stopped(tmp_path, payload):
    renderer = renderer_with(tmp_path, "s", text=payload)
    with pytest.raises(TemplateError) as info:
        renderer.render("t", "en", {})
    assert isinstance(info.value, RenderLimitError) or "sandbox" in info.value.reason


def test_typo_fails_and_none_prints_nothing(tmp_path):
    renderer = renderer_with(tmp_path, "Hello {{ customer.frist_name }}")
    with pytest.raises(TemplateError, match="frist_name"):
        renderer.render("t", "en", {"customer": {"first_name": "Ann"}})
    renderer = renderer_with(tmp_path / "b", "Hello {{ customer.first_name }}")
    assert renderer.render("t", "en", {"customer": {"first_name": None}}).subject == "Hello"


def test_html_is_escaped_but_subject_and_text_are_literal(tmp_path):
    name = "<script>alert(1)</script> & Co"
    renderer = renderer_with(tmp_path, "{{ n }}\r\nBcc: x", text="{{ n }}", html="<p>{{ n }}</p>")
    message = renderer.render("t", "en", {"n": name})
    assert message.subject == f"{name} Bcc: x"
    assert message.text == name
    assert "&lt;script&gt;" in message.html and "<script>" not in message.html


def test_edited_templates_and_new_locale_folders_are_picked_up(tmp_path):
    """Hot reload: the disk is looked at again once TEMPLATE_RECHECK_S has passed, so an edit
    made while the worker runs reaches the next messages (waits the interval once)."""
    renderer = renderer_with(tmp_path, "Old {{ n }}")
    assert renderer.render("t", "de", {"n": 1}).subject == "Old 1"
    subject = tmp_path / "t" / "en" / "subject.txt.j2"
    subject.write_text("New {{ n }}", encoding="utf-8")
    # A later modification time than the one loaded, even on a coarse-grained file system.
    later = subject.stat().st_mtime + 10
    os.utime(subject, (later, later))
    german = tmp_path / "t" / "de"
    german.mkdir()
    for part in ("subject.txt.j2", "body.txt.j2", "body.html.j2"):
        (german / part).write_text("Neu {{ n }}", encoding="utf-8")
    time.sleep(TEMPLATE_RECHECK_S + 0.2)
    assert renderer.render("t", "en", {"n": 2}).subject == "New 2"
    message = renderer.render("t", "de", {"n": 3})
    assert (message.locale, message.subject) == ("de", "Neu 3")
    assert renderer.locales("t") == ["de", "en"]


def test_a_locale_folder_removed_after_it_was_chosen_falls_back_instead_of_failing(tmp_path):
    """The choice of folder is remembered for a second; a part not loaded yet that is gone
    from it sends the message through the fallback, as without the remembered choice."""
    renderer = renderer_with(tmp_path, "Hello {{ n }}")
    german = tmp_path / "t" / "de"
    german.mkdir()
    for part in ("subject.txt.j2", "body.txt.j2", "body.html.j2"):
        (german / part).write_text("Hallo {{ n }}", encoding="utf-8")
    assert renderer.render_part("t", "de", "body.txt.j2", {"n": 1}) == "Hallo 1"
    shutil.rmtree(german)
    message = renderer.render("t", "de", {"n": 2})
    assert (message.locale, message.subject) == ("en", "Hello 2")


@pytest.mark.parametrize(
    "expression",
    [
        "customer.first_name",
        "customer.items",  # a dict method: the attribute wins, as in Jinja
        "customer.get('first_name')",
        "customer.keys() | list",
        "customer.__class__",  # refused by the sandbox either way
        "customer.mro",
        "customer.nested.deeper",
        "customer.missing is defined",
        "customer['first_name']",
        "occurrence.tag",
        "(customer.nested | dictsort)",
    ],
)
def test_dict_attributes_read_exactly_as_jinjas_sandbox_reads_them(expression):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from worker.messages.rendering import make_environment

    context = {
        "customer": {"first_name": "Ana", "items": "field called items", "nested": {"deeper": 1}},
        "occurrence": {"tag": "2026"},
    }

    def render(env):
        try:
            return env.from_string("{{ " + expression + " }}").render(context)
        except Exception as exc:  # the same error, from both
            return f"{type(exc).__name__}: {exc}"

    ours = make_environment(Path())
    jinja = ImmutableSandboxedEnvironment(undefined=StrictUndefined, finalize=ours.finalize)
    assert render(ours) == render(jinja)

"""Rendering messages from templates in a sandbox with a deadline and size limits.

Layout: ``templates/<name>/<locale>/{subject.txt.j2, body.txt.j2, body.html.j2}``; the locale
is chosen by fallback (``de-AT`` → ``de`` → the default locale). Templates may extend shared
layouts in ``templates/_layouts/``.

Safety (Jinja ≥ 3.1.6 with :class:`ImmutableSandboxedEnvironment`):

* the sandbox refuses ``__class__``/``mro`` tricks and ``str.format`` escapes;
* the sandbox bounds neither CPU nor memory, so ``range()`` is capped, ``*``/``**`` that would
  build huge values are refused, and output is checked against a deadline and a size limit as
  it is produced;
* ``StrictUndefined`` turns a typo (``{{ frist_name }}``) into an error, and ``None`` prints as
  an empty string (never "Hello None"), also when joined with ``~``;
* autoescape is on for ``*.html.j2`` only (``select_autoescape(["html"])`` would not match it).

Hot reload: an edited template file, and a locale folder added or removed, are used by messages
rendered at most :data:`~worker.constants.TEMPLATE_RECHECK_S` after the change; in between, a
message does not look at the disk again (a stat per file and a folder listing per message would
otherwise cost more than rendering a short template). :meth:`TemplateRenderer.locales` and
:meth:`TemplateRenderer.resolve_locale` always list the folders; ``check`` rereads everything.

Example::

    >>> renderer = TemplateRenderer(Path("templates"), default_locale="en")
    >>> message = renderer.render("birthday", "de-AT", {"customer": {"first_name": "Jürgen"}})
    >>> message.locale
    'de'
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    nodes,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from worker.constants import (
    MAX_CACHED_LOCALE_CHOICES,
    MAX_RENDERED_BYTES,
    MAX_SUBJECT_CHARS,
    MAX_TEMPLATE_RANGE,
    MAX_TEMPLATE_VALUE_LEN,
    RENDER_DEADLINE_S,
    TEMPLATE_RECHECK_S,
)
from worker.errors import RenderLimitError, TemplateError
from worker.messages.filters import FILTERS, babel_locale, formatting_locale
from worker.messages.unsubscribe import NO_LINKS_CONTEXT

log = logging.getLogger(__name__)

PARTS = ("subject.txt.j2", "body.txt.j2", "body.html.j2")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class RenderedMessage:
    """A fully rendered message: nothing is sent unless all three parts rendered."""

    template: str
    locale: str
    subject: str
    text: str
    html: str


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds

    def check(self, template: str) -> None:
        if time.monotonic() > self.expires:
            raise RenderLimitError(template, f"rendering took longer than {RENDER_DEADLINE_S} s")


#: Filter every operand of ``~`` passes through (a name no template would use).
_BLANK_NONE = "_blank_none"


class _CodeGenerator(CodeGenerator):
    """``~`` joins its operands with ``str()``, so ``"Hello " ~ customer.first_name`` would read
    "Hello None" for an empty field; here an operand that is None joins as nothing, as
    ``{{ customer.first_name }}`` prints nothing through ``finalize``."""

    def pull_dependencies(self, body: Iterable[nodes.Node]) -> None:
        # Filters are looked up once per body before it is compiled: declare ours everywhere.
        super().pull_dependencies([*body, _blank_none(nodes.Const(None))])

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802
        operands: list[nodes.Expr] = [_blank_none(arg) for arg in node.nodes]
        super().visit_Concat(nodes.Concat(operands, lineno=node.lineno), frame)


def _blank_none(expr: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(expr, _BLANK_NONE, [], [], None, None, lineno=expr.lineno)


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus bounds on what a template may compute."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**"})

    def join_path(self, template: str, parent: str) -> str:
        # A layout or macro file used by a template in Swiss spelling is spelt the same way.
        if parent.endswith(SWISS_SPELLING) and not template.endswith(SWISS_SPELLING):
            return template + SWISS_SPELLING
        return template

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``customer.first_name`` on the plain dicts of a message's context: Jinja tries the
        # attribute first, and raising that AttributeError cost ~5 % of a worker's CPU. A plain
        # dict has exactly the attributes of its type, so for any other name the answer is
        # the item, as Jinja's fallback would find it (or undefined, as there).
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > 64:
                raise SecurityError("exponent too large in template")
            return left**right
        if isinstance(left, int) and isinstance(right, (str, list, tuple)):
            left, right = right, left
        too_large = (
            isinstance(left, (str, list, tuple))
            and isinstance(right, int)
            and len(left) * right > MAX_TEMPLATE_VALUE_LEN
        )
        if too_large:
            raise SecurityError("value built with * is too large for a template")
        return left * right


_active_deadline: ContextVar[_Deadline | None] = ContextVar("_active_deadline", default=None)


def _bounded_range(*args: int) -> Iterator[int]:
    values = range(*args)
    if len(values) > MAX_TEMPLATE_RANGE:
        raise SecurityError(f"range() over {MAX_TEMPLATE_RANGE} items in a template")
    deadline = _active_deadline.get()
    # Nested loops that print nothing never reach the output check: look at the clock here.
    for n, value in enumerate(values):
        if deadline is not None and n % 256 == 0:
            deadline.check("range()")
        yield value


def _finalize(value: Any) -> Any:
    # StrictUndefined catches names that do not exist; a field that exists but is empty (None)
    # must print as nothing, not as "None".
    return "" if value is None else value


def locale_chain(locale: str | None, default: str) -> list[str]:
    """Locales to try, most specific first: ``de-AT`` → ``["de-at", "de", default]``."""
    chain: list[str] = []
    if locale and _LOCALE.match(locale.strip()):
        parts = locale.strip().lower().replace("_", "-").split("-")
        chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if default.lower() not in chain:
        chain.append(default.lower())
    return chain


#: Appended to a template's name to load it in Swiss spelling: ß written "ss", as Switzerland
#: writes German. Only the template's own text changes (CRM data such as a customer's name is
#: left as recorded), and what it extends, includes or imports is loaded the same way.
SWISS_SPELLING = "#ch"


def _swiss(locale: Locale) -> bool:
    return locale.language == "de" and locale.territory == "CH"


class _RecheckingLoader(FileSystemLoader):
    """A :class:`FileSystemLoader` whose templates look at their file's modification time at
    most every :data:`TEMPLATE_RECHECK_S`: Jinja's ``auto_reload`` asks for every
    ``get_template`` (each part, each layout it extends), i.e. several stat() calls per message.
    A change is still found by the first check after it, which compares with the time the file
    had when it was loaded, exactly as before."""

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if template.endswith(SWISS_SPELLING):
            text, path, current = self.get_source(
                environment, template.removesuffix(SWISS_SPELLING)
            )
            return text.replace("ß", "ss").replace("ẞ", "SS"), path, current
        source, filename, uptodate = super().get_source(environment, template)
        checked = time.monotonic()
        stale = False

        def fresh() -> bool:
            nonlocal checked, stale
            now = time.monotonic()
            if stale or now - checked < TEMPLATE_RECHECK_S:
                return not stale
            checked = now
            # Once out of date, always: whoever asks next must load the file again.
            stale = not uptodate()
            return not stale

        return source, filename, fresh


def make_environment(templates_dir: Path) -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment every template is rendered with."""
    env = _LimitedEnvironment(
        loader=_RecheckingLoader(str(templates_dir)),
        undefined=StrictUndefined,
        autoescape=lambda name: bool(
            name and name.removesuffix(SWISS_SPELLING).endswith(".html.j2")
        ),
        finalize=_finalize,
        keep_trailing_newline=False,
        auto_reload=True,
    )
    # A message without unsubscribe links (an internal alert) still renders a shared footer.
    env.globals = {"range": _bounded_range, "unsubscribe": NO_LINKS_CONTEXT}
    env.filters.update(FILTERS)
    env.filters[_BLANK_NONE] = _finalize
    return env


class TemplateRenderer:
    """Finds a template's locale variant and renders its three parts within the limits."""

    def __init__(self, templates_dir: Path, default_locale: str) -> None:
        self.templates_dir = templates_dir
        self.default_locale = default_locale
        self.env = make_environment(templates_dir)
        # (name, customer locale) → (when chosen, locale folder, Babel locale): what a message
        # renders with, trusted for TEMPLATE_RECHECK_S (see the module docstring).
        self._chosen: dict[tuple[str, str | None], tuple[float, str, Locale]] = {}
        # (name, locale) pairs whose fallback to another language was logged.
        self._fallbacks: set[tuple[str, str]] = set()
        # "name/locale/part" → its template, as long as it is up to date (the environment's
        # own cache takes a lock and reorders an LRU list on every look-up).
        self._templates: dict[str, Template] = {}

    def locales(self, name: str) -> list[str]:
        """Locale folders that exist for template ``name``."""
        folder = self.templates_dir / name
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _LOCALE.match(p.name))

    def reread(self) -> None:
        """Forget what was read from the templates folder: the next render and listing look
        at the disk again (``check`` reports on the files as they are now)."""
        self._chosen.clear()
        self._templates.clear()
        self.env.cache.clear()  # type: ignore[union-attr]

    def missing(self, name: str) -> str | None:
        """Why template ``name`` cannot serve every customer (no folder for the default locale,
        the end of every fallback chain), or ``None`` when it can."""
        if self.default_locale in self.locales(name):
            return None
        return f"template {name!r} has no {self.default_locale}/ folder in {self.templates_dir}"

    def resolve_locale(self, name: str, locale: str | None) -> str:
        """The locale folder used for ``locale`` (fallback chain), or :class:`TemplateError`."""
        if not _SLUG.match(name):
            raise TemplateError(name, "template names are lower-case slugs like 'birthday'")
        available = {loc.lower(): loc for loc in self.locales(name)}
        for candidate in locale_chain(locale, self.default_locale):
            if candidate in available:
                return available[candidate]
        raise TemplateError(
            name, f"no {self.templates_dir / name}/<locale>/ folder for {locale!r} or the default"
        )

    def render(
        self,
        name: str,
        locale: str | None,
        context: Mapping[str, Any],
        zone: ZoneInfo | None = None,
    ) -> RenderedMessage:
        """Render subject, text and HTML for a reader in ``locale`` and ``zone`` (dates and
        times are shown there; UTC when None); raise :class:`TemplateError` if any part
        fails."""
        chosen, parts = self._render_parts(name, locale, PARTS, context, zone)
        return RenderedMessage(name, chosen, clean_subject(parts[0]), parts[1], parts[2])

    def render_part(
        self,
        name: str,
        locale: str | None,
        part: str,
        context: Mapping[str, Any],
        zone: ZoneInfo | None = None,
    ) -> str:
        """One file of template ``name`` (e.g. ``webhook.json.j2``) in the locale chosen by
        fallback, within the same sandbox, deadline and size limits as :meth:`render`."""
        return self._render_parts(name, locale, (part,), context, zone)[1][0]

    def _choose(self, name: str, locale: str | None) -> tuple[str, Locale]:
        """The locale folder for ``locale`` (:meth:`resolve_locale`, which lists the folders)
        and the Babel locale money and dates are written in, remembered for
        :data:`TEMPLATE_RECHECK_S`."""
        now = time.monotonic()
        remembered = self._chosen.get((name, locale))
        if remembered is not None and now - remembered[0] < TEMPLATE_RECHECK_S:
            return remembered[1], remembered[2]
        chosen = self.resolve_locale(name, locale)
        self._note_fallback(name, locale, chosen)
        # Money and dates follow the customer's own variant (de-AT) of the template's language.
        language = chosen.lower().partition("-")[0]
        variants = [c for c in locale_chain(locale, chosen) if c.partition("-")[0] == language]
        formatting = babel_locale(variants)
        if len(self._chosen) >= MAX_CACHED_LOCALE_CHOICES:
            self._chosen.clear()
        self._chosen[(name, locale)] = (now, chosen, formatting)
        return chosen, formatting

    def _note_fallback(self, name: str, locale: str | None, chosen: str) -> None:
        """Log once per template and locale when a reader gets another language than theirs
        (``fr-FR`` reading English): the text is then not in their language at all."""
        wanted = locale_chain(locale, self.default_locale)[0].partition("-")[0]
        if not locale or chosen.lower().partition("-")[0] == wanted:
            return
        if (name, locale) in self._fallbacks or len(self._fallbacks) >= MAX_CACHED_LOCALE_CHOICES:
            return
        self._fallbacks.add((name, locale))
        log.warning(
            "template %r has no %s/ folder: readers with locale %r get %r; add "
            "templates/%s/%s/ to write to them in their language",
            name,
            wanted,
            locale[:20],
            chosen,
            name,
            wanted,
        )

    def _render_parts(
        self,
        name: str,
        locale: str | None,
        parts: tuple[str, ...],
        context: Mapping[str, Any],
        zone: ZoneInfo | None,
    ) -> tuple[str, list[str]]:
        """The locale chosen by fallback and ``parts`` rendered in it, under one deadline."""
        chosen, formatting = self._choose(name, locale)
        try:
            return chosen, self._render_in(f"{name}/{chosen}", formatting, zone, parts, context)
        except TemplateError:
            if (self.templates_dir / name / chosen).is_dir():
                raise
        # The folder was removed since the choice was made (at most TEMPLATE_RECHECK_S ago):
        # choose again from the disk, as a message rendered without a remembered choice would.
        self._chosen.pop((name, locale), None)
        chosen, formatting = self._choose(name, locale)
        return chosen, self._render_in(f"{name}/{chosen}", formatting, zone, parts, context)

    def _render_in(
        self,
        folder: str,
        formatting: Locale,
        zone: ZoneInfo | None,
        parts: tuple[str, ...],
        context: Mapping[str, Any],
    ) -> list[str]:
        """``parts`` of ``folder`` (``name/locale``) rendered under one deadline."""
        deadline = _Deadline(RENDER_DEADLINE_S)
        token = _active_deadline.set(deadline)
        try:
            # What Template.generate() gives every part, built once for all of them: the
            # environment's globals overridden by the context (templates only read it).
            variables = dict(self.env.globals, **context)
            spelling = SWISS_SPELLING if _swiss(formatting) else ""
            with formatting_locale(formatting, zone):
                return [
                    self._render_part(f"{folder}/{part}", variables, deadline, spelling)
                    for part in parts
                ]
        finally:
            _active_deadline.reset(token)

    def _render_part(
        self, path: str, variables: dict[str, Any], deadline: _Deadline, spelling: str = ""
    ) -> str:
        """``path`` rendered; ``spelling`` (:data:`SWISS_SPELLING` or empty) picks the variant
        of its text. Errors name ``path`` itself."""
        try:
            name = path + spelling
            template = self._templates.get(name)
            if template is None or not template.is_up_to_date:
                template = self._templates[name] = self.env.get_template(name)
            return _collect(_generate(self.env, template, variables), path, deadline)
        except TemplateNotFound as exc:
            raise TemplateError(path, f"file {exc.name} not found") from None
        except TemplateSyntaxError as exc:
            raise TemplateError(
                path, f"line {exc.lineno}: {exc.message}", line=exc.lineno
            ) from None
        except UndefinedError as exc:
            raise TemplateError(
                path, f"{exc.message} (check the spelling of the field)", line=_line_in(exc, path)
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                path, f"refused by the sandbox: {exc}", line=_line_in(exc, path)
            ) from None
        except RenderLimitError as exc:
            # Raised inside range() too, which does not know the file: name it here.
            raise RenderLimitError(path, exc.reason) from None
        except TemplateError:
            raise
        except Exception as exc:  # any other error inside a template fails this message only
            raise TemplateError(path, f"{type(exc).__name__}: {exc}") from None

    def parse(self, path: str) -> nodes.Template:
        """Parse one template file (for ``check``); raises :class:`TemplateError`."""
        try:
            source, _, _ = self.env.loader.get_source(self.env, path)  # type: ignore[union-attr]
            return self.env.parse(source, path)
        except TemplateNotFound:
            raise TemplateError(path, "file not found") from None
        except TemplateSyntaxError as exc:
            raise TemplateError(
                path, f"line {exc.lineno}: {exc.message}", line=exc.lineno
            ) from None


def _line_in(exc: BaseException, path: str) -> int:
    """The line of template ``path`` where ``exc`` was raised (0 when not known): Jinja
    rewrites tracebacks so that a template's frames carry its file name and line, which lets
    `check` point at the typo instead of at the file."""
    line = 0
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).as_posix().endswith(f"/{path}"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _generate(env: Environment, template: Template, variables: dict[str, Any]) -> Iterator[str]:
    """``template.generate(variables)`` without its two copies of the variables and the
    globals per part: ``variables`` already holds the globals (see ``_render_parts``), so the
    template's context takes it as its parent as it is (``shared``). Errors are rewritten by
    ``handle_exception`` exactly as ``generate`` does, so tracebacks still name template lines
    (:func:`_line_in`)."""
    context = template.new_context(variables, shared=True)
    try:
        yield from template.root_render_func(context)
    except Exception:
        yield env.handle_exception()


def _collect(chunks: Iterator[str], path: str, deadline: _Deadline) -> str:
    """The output, with the size limit and the deadline checked after every chunk."""
    out: list[str] = []
    append = out.append
    clock = time.monotonic
    expires = deadline.expires
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED_BYTES:
            raise RenderLimitError(path, f"output larger than {MAX_RENDERED_BYTES} characters")
        if clock() > expires:
            deadline.check(path)
        append(chunk)
    return "".join(out)


def clean_subject(text: str) -> str:
    """One header-safe line: control characters and runs of whitespace become one space."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    if len(line) > MAX_SUBJECT_CHARS:
        line = line[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"
    return line

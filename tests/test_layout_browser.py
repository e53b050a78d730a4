"""Every sample mail, in every locale, read in a real browser on a 390 px phone and a 1280 px
screen (headless Chromium, Debian packages ``chromium`` and ``chromium-driver``).

Checked: no sideways scrolling and nothing cut off, body text at 16 px and nothing under 14 px,
links a thumb can hit (44 × 44 px), and every text colour against its background at WCAG AA
contrast (4.5:1). Screenshots go to ``var/screenshots/`` for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.browserkit import headless_chromium
from tests.samples import LOCALES, MAIL_TEMPLATES, sample_context
from worker.messages.rendering import TemplateRenderer

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "var" / "screenshots"
WIDTHS = (390, 1280)

#: Measures the page as a reader sees it; returns what breaks the rules (empty lists: none).
MEASURE = """
const width = window.innerWidth;
const rgba = (text) => {
  const v = text.match(/[\\d.]+/g).map(Number);
  return {r: v[0], g: v[1], b: v[2], a: v.length > 3 ? v[3] : 1};
};
const luminance = (c) => {
  const f = (x) => {
    x /= 255;
    return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const c = rgba(getComputedStyle(el).backgroundColor);
    if (c.a > 0) return c;
  }
  return {r: 255, g: 255, b: 255, a: 1};
};
const found = {scrollWidth: document.documentElement.scrollWidth, width: width,
               clipped: [], small: [], contrast: [], targets: [], bodyText: 0};
for (const el of document.body.querySelectorAll('*')) {
  const box = el.getBoundingClientRect();
  if (box.width === 0 && box.height === 0) continue;
  const name = el.tagName.toLowerCase() + (el.className ? '.' + el.className : '');
  if (box.right > width + 0.5 || box.left < -0.5) {
    found.clipped.push(`${name} spans ${Math.round(box.left)}..${Math.round(box.right)}`);
  }
  const text = [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent)
    .join('').trim();
  if (!text) continue;
  const style = getComputedStyle(el);
  const size = parseFloat(style.fontSize);
  if (size < 14) found.small.push(`${name} ${size}px: ${text.slice(0, 30)}`);
  const fg = luminance(rgba(style.color)), bg = luminance(background(el));
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  if (ratio < 4.5) {
    found.contrast.push(`${name} ${style.color} on ${getComputedStyle(el).backgroundColor}: ` +
                        `${ratio.toFixed(2)}:1 (${text.slice(0, 30)})`);
  }
}
for (const link of document.querySelectorAll('a')) {
  const box = link.getBoundingClientRect();
  if (box.height < 44 || box.width < 44) {
    const size = `${Math.round(box.width)}x${Math.round(box.height)}`;
    found.targets.push(`${link.textContent.trim()} ${size}`);
  }
}
const content = document.querySelector('.content');
found.bodyText = content ? parseFloat(getComputedStyle(content).fontSize) : 0;
return found;
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from headless_chromium()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every sample template's HTML part in every locale, as files the browser opens."""
    renderer = TemplateRenderer(REPO / "templates", "en")
    folder = tmp_path_factory.mktemp("mails")
    found = {}
    for template in MAIL_TEMPLATES:
        for locale in LOCALES:
            message = renderer.render(
                template,
                locale,
                sample_context(locale, template=template),
                ZoneInfo("Europe/Zurich"),
            )
            path = folder / f"{template}.{locale}.html"
            path.write_text(message.html, encoding="utf-8")
            found[(template, locale)] = path
    return found


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("template", MAIL_TEMPLATES)
def test_every_locale_reads_on_the_screen(
    browser: Any, pages: dict[tuple[str, str], Path], template: str, width: int
) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": False},
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for locale in LOCALES:
        browser.get(pages[(template, locale)].as_uri())
        found = browser.execute_script(MEASURE)
        browser.save_screenshot(str(SCREENSHOTS / f"{template}.{locale}.{width}.png"))
        where = f"{template}/{locale} at {width} px"
        assert found["scrollWidth"] <= found["width"], f"{where} scrolls sideways: {found}"
        assert found["clipped"] == [], where
        assert found["bodyText"] >= 16, where
        assert found["small"] == [], where
        assert found["contrast"] == [], where
        assert found["targets"] == [], where

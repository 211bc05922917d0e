"""Every page links a favicon, so that no browser requests /favicon.ico,
which does not exist and would get a 404."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

VIEWBOX = Path(__file__).resolve().parents[2]


class IconLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and "icon" in (values.get("rel") or "").split():
            self.hrefs.append(values.get("href") or "")


def icon_hrefs(page: str) -> list[str]:
    parser = IconLinks()
    parser.feed(page)
    return parser.hrefs


def assert_links_static_icon(page: str) -> None:
    hrefs = icon_hrefs(page)
    assert len(hrefs) == 1, hrefs
    href = hrefs[0]
    assert href.startswith(settings.STATIC_URL), href
    assert finders.find(href.removeprefix(settings.STATIC_URL)) is not None, href


class TestFaviconLink:
    def test_page_without_link_is_detected(self) -> None:
        assert icon_hrefs("<html><head><title>x</title></head></html>") == []
        with pytest.raises(AssertionError):
            assert_links_static_icon(
                '<link rel="icon" href="/static/viewbox/no-such-icon.svg">'
            )

    def test_staff_log_in_links_the_icon(self, db: None) -> None:
        response = Client().get(reverse("staff_log_in"))
        assert response.status_code == 200
        assert_links_static_icon(response.content.decode())

    def test_staff_pages_link_the_icon(self, staff_client) -> None:
        for url in (
            reverse("admin:index"),
            reverse("frontdesk:find_visit"),
            reverse("frontdesk:help_queue"),
            reverse("frontdesk:unmatched_images"),
        ):
            response = staff_client.get(url)
            assert response.status_code == 200, url
            assert_links_static_icon(response.content.decode())

    def test_patient_pages_link_the_icon(self, db: None) -> None:
        client = Client()
        start = client.get(reverse("viewer:start"))
        assert start.status_code == 200
        assert_links_static_icon(start.content.decode())
        missing = client.get("/no-such-page/")
        assert missing.status_code == 404
        assert_links_static_icon(missing.content.decode())

    def test_server_error_page_has_an_inline_icon(self) -> None:
        hrefs = icon_hrefs(render_to_string("500.html"))
        assert len(hrefs) == 1
        assert hrefs[0].startswith("data:image/svg+xml,<svg ")

    def test_page_templates_link_an_icon(self) -> None:
        templates = sorted(VIEWBOX.glob("*/templates/**/*.html"))
        assert templates
        for template in templates:
            text = template.read_text(encoding="utf-8")
            # Emails are HTML documents too, but no browser tab shows them.
            has_head = re.search(r"<head[\s>]", text) is not None
            if has_head and "email" not in template.parent.parts:
                assert 'rel="icon"' in text, template

"""Pages with wide tables or long words, in chromium on a 320-pixel screen."""

import re
import time
from typing import Any

import pytest

from viewbox.browser_fixtures import demo_code, needs_chromium, sign_in
from viewbox.frontdesk import totp
from viewbox.frontdesk.tests.test_browser_front_desk import create_demo_staff

pytestmark = [pytest.mark.browser, needs_chromium]

WIDTH = 320
PASSWORD = "quiet harbor lantern 42"


def page_width(page: Any) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def assert_inside(locator: Any) -> None:
    box = locator.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= WIDTH


class TestNarrowScreen:
    def test_pages_fit_320_pixels(self, demo_site, browser) -> None:
        base, codes = demo_site.base, demo_site.codes
        viewport = {"width": WIDTH, "height": 640}

        # A patient shares an exam under a nickname with no place to break.
        patient_context = browser.new_context(viewport=viewport)
        patient = patient_context.new_page()
        sign_in(
            patient,
            base,
            codes,
            "Alice",
            "California",
            "RadNet Los Angeles",
            "West Los Angeles",
        )
        patient.goto(base + "/share/")
        exams = patient.get_by_role("group", name="Exams to share")
        exams.get_by_role("checkbox").first.check()
        patient.get_by_label("Nickname").fill("x" * 60)
        patient.get_by_label("Password", exact=True).fill(PASSWORD)
        patient.get_by_label("Password again").fill(PASSWORD)
        patient.get_by_label("Expiration date").fill("2027-12-31")
        patient.get_by_label(re.compile("I understand that I am downloading")).check()
        patient.get_by_role("button", name="Generate Link").click()
        patient.get_by_role("heading", name="Your link is ready").wait_for()
        assert page_width(patient) <= WIDTH
        patient.goto(base + "/shares/")
        patient.get_by_role("heading", name="My shared links").wait_for()
        assert page_width(patient) <= WIDTH

        # A Get Help request with Alice's code, so that the request matches.
        code, birth = demo_code(codes, "Alice", "West Los Angeles")
        month, day, year = birth.split("/")
        name = re.search(r"^\s+(Alice \S+)$", codes, re.MULTILINE)
        assert name is not None
        patient.goto(base + "/")
        patient.get_by_role("link", name="California").click()
        patient.get_by_role("link", name="RadNet Los Angeles", exact=True).click()
        patient.get_by_role("link", name="Patient Portal Login").click()
        patient.get_by_role("link", name=re.compile("West Los Angeles")).click()
        patient.get_by_role("link", name="Enter I-Code").click()
        patient.get_by_role("link", name="Code expired? Get help").click()
        patient.get_by_label("Patient's full name").fill(name.group(1))
        patient.get_by_label("Month").fill(month)
        patient.get_by_label("Day").fill(day)
        patient.get_by_label("Year").fill(year)
        patient.get_by_label("I-Code").fill(code)
        patient.get_by_label("Your email address").fill("alice@example.com")
        patient.get_by_role("button", name="Send my request").click()
        patient_context.close()

        password, key = create_demo_staff(demo_site.env, "browser.narrow")
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(base + "/staff/frontdesk/help/")
        page.get_by_label("Username").fill("browser.narrow")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        step = totp.code_at_step(key, totp.time_step(time.time()))
        page.get_by_label("Code from your authenticator app").fill(step)
        page.get_by_role("button", name="Log in").click()

        assert page.url.endswith("/staff/frontdesk/help/")
        assert page_width(page) <= WIDTH
        assert_inside(page.get_by_role("button", name="Approve"))
        assert_inside(page.get_by_role("button", name="Decline"))

        page.goto(base + "/staff/frontdesk/")
        page.get_by_label("Patient name").fill("Alice")
        page.get_by_role("button", name="Find visits").click()
        page.get_by_role("heading", name="Visits").wait_for()
        assert page_width(page) <= WIDTH

        page.get_by_role("link", name=re.compile("Alice", re.IGNORECASE)).first.click()
        page.get_by_role("heading", name="I-Codes of this visit").wait_for()
        assert page.locator(".stacked-table tbody tr").count() >= 1
        assert page_width(page) <= WIDTH
        context.close()

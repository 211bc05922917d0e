"""Sign-up in chromium against the served demo, with the code read over SMTP."""

import re
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django.utils.formats import date_format

from viewbox.browser_fixtures import needs_chromium

pytestmark = [pytest.mark.browser, needs_chromium]

SIGN_UP = "/g/advanced-radiology/towson/sign-up/"


def fill_about_you(page, birth: str, phone: str = "(410) 555-0123") -> None:
    month, day, year = birth.split("/")
    page.get_by_label("Legal first name").fill("Barbara")
    page.get_by_label("Legal last name").fill("Sample")
    page.get_by_label("Month").fill(month)
    page.get_by_label("Day").fill(day)
    page.get_by_label("Year").fill(year)
    page.get_by_label("Sex").select_option("F")
    page.get_by_label("ZIP code").fill("21204")
    page.get_by_label("Phone number").fill(phone)
    page.get_by_role("button", name="Continue").click()


class TestSignUpInBrowser:
    def test_minor_is_refused(self, demo_site, browser) -> None:
        page = browser.new_page()
        page.goto(demo_site.base + SIGN_UP)
        today = date.today()
        fill_about_you(page, f"{today.month}/{min(today.day, 28)}/{today.year - 16}")
        page.get_by_role("heading", name="Accounts are for adults").wait_for()
        page.get_by_role("link", name="Enter I-Code").wait_for()
        page.close()

    def test_sign_up_shows_both_visits(self, demo_site, browser) -> None:
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        page.goto(demo_site.base + "/g/advanced-radiology/towson/")
        page.get_by_role("link", name="Create a new account").click()
        page.get_by_text("Step 1 of 4").wait_for()
        fill_about_you(page, "09/30/1975")

        # Step 2: the choices come from the demo patient's own visits.
        page.get_by_text("Step 2 of 4").wait_for()
        legends = page.locator("fieldset.question legend").all_inner_texts()
        assert len(legends) >= 3
        answers = self._right_answers(page, legends)
        for legend, label in answers:
            group = page.locator("fieldset.question", has_text=legend)
            group.get_by_label(label, exact=True).check()
        page.get_by_role("button", name="Continue").click()

        page.get_by_text("Step 3 of 4").wait_for()
        page.get_by_label("User ID").fill("barbara.browser")
        page.get_by_label("Email address").fill("barbara@example.com")
        page.get_by_label("Password", exact=True).fill("a long passphrase for tests")
        page.get_by_label("Password again").fill("a long passphrase for tests")
        page.get_by_role("button", name="Send me a code").click()

        page.get_by_text("Step 4 of 4").wait_for()
        message = demo_site.mail.wait_for(lambda m: m["To"] == "barbara@example.com")
        text = message.get_body(("plain",)).get_content()
        code = re.search(r"\b(\d{3}[ -]?\d{3})\b", text).group(1)
        page.get_by_label("Verification code").fill(code)
        page.get_by_role("button", name="Create my account").click()

        page.get_by_role("link", name="Log In").click()
        page.get_by_label("User ID").fill("barbara.browser")
        page.get_by_label("Password").fill("a long passphrase for tests")
        page.get_by_role("button", name="Log in").click()

        exams = page.locator(".exam-link__title").all_inner_texts()
        assert "MG SCREENING MAMMOGRAM BILATERAL" in exams
        assert "US ECHOCARDIOGRAM TRANSTHORACIC" in exams
        context.close()

    @staticmethod
    def _right_answers(page, legends: list[str]) -> list[tuple[str, str]]:
        """Return the right choices, from the demo's HL7 messages for Barbara Sample.

        Her visits were 3 and 60 days before the demo was loaded, at Towson
        and Columbia, both referred by Dr. Morgan Placeholder.
        """
        new_york = ZoneInfo("America/New_York")

        def day_of_service(days_ago: int) -> date:
            # Subtracted in UTC, as the demo does, then dated in Maryland.
            # In local time, an hour of daylight saving time can shift the day.
            return (
                (timezone.now() - timedelta(days=days_ago)).astimezone(new_york).date()
            )

        visits = [
            (day_of_service(3), "Towson", "MG SCREENING"),
            (day_of_service(60), "Columbia", "US ECHOCARDIOGRAM"),
        ]
        answers = []
        for legend in legends:
            labels = (
                page.locator("fieldset.question", has_text=legend)
                .locator("label")
                .all_inner_texts()
            )
            visit = next(
                (v for v in visits if date_format(v[0], "DATE_FORMAT") in legend), None
            )
            wanted = None
            if visit is not None:
                if legend.startswith("Which location"):
                    wanted = visit[1]
                elif legend.startswith("Which exam"):
                    wanted = visit[2]
                else:
                    wanted = "PLACEHOLDER"
            matching = [
                label for label in labels if wanted and wanted.upper() in label.upper()
            ]
            chosen = matching[0] if matching else "None of these"
            answers.append((legend, chosen))
        return answers

"""The demo in a patient's browser: gunicorn serving, chromium via Playwright."""

import re
from io import BytesIO

import pytest
from PIL import Image

from viewbox.browser_fixtures import demo_code, needs_chromium, sign_in

pytestmark = [pytest.mark.browser, needs_chromium]


class TestPatientWithICode:
    def test_patient_reaches_images_and_held_report(self, demo_site, browser) -> None:
        base, codes = demo_site.base, demo_site.codes
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        sign_in(
            page,
            base,
            codes,
            "Alice",
            "California",
            "RadNet Los Angeles",
            "West Los Angeles",
        )

        page.get_by_role("link", name=re.compile("CT HEAD WITHOUT CONTRAST")).click()
        page.get_by_text("DEMOCT1001").wait_for()
        page.get_by_role("link", name="Report").click()
        page.get_by_text("Your report is signed and will be available soon").wait_for()
        assert page.get_by_text("Abnormal head CT").count() == 0

        page.get_by_role("link", name="Images").click()
        tiles = page.locator(".tile__image")
        assert tiles.count() == 2
        tiles.first.click()
        image = page.locator("#frame-image")
        image.wait_for()
        source = image.evaluate("node => node.currentSrc")
        response = context.request.get(source)
        assert response.headers["content-type"] == "image/jpeg"
        picture = Image.open(BytesIO(response.body()))
        assert picture.format == "JPEG"
        assert max(picture.size) == 512
        assert picture.size == (512, 512)
        context.close()

    def test_released_report_and_multiframe_scrolling(self, demo_site, browser) -> None:
        base, codes = demo_site.base, demo_site.codes
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(
            page, base, codes, "Barbara", "Maryland", "Advanced Radiology", "Columbia"
        )

        page.get_by_role("link", name=re.compile("US ECHOCARDIOGRAM")).first.click()
        page.get_by_role("link", name="Report").click()
        page.get_by_text(
            "ADDENDUM: Trace mitral regurgitation & no other valve disease."
        ).wait_for()

        page.get_by_role("link", name="Images").click()
        page.locator(".tile__link").first.click()
        # The slider works once the viewer's script has set it up.
        page.locator(".image-viewer[data-ready='true']").wait_for()
        slider = page.get_by_label("Frame")
        with page.expect_response(lambda response: "/60/" in response.url) as frame:
            slider.fill("60")
        assert frame.value.status == 200
        picture = Image.open(BytesIO(frame.value.body()))
        assert picture.size == (640, 480)
        assert picture.mode == "RGB"
        context.close()

    def test_wrong_birth_date_is_refused_with_a_message(
        self, demo_site, browser
    ) -> None:
        base, codes = demo_site.base, demo_site.codes
        page = browser.new_page()
        code, _ = demo_code(codes, "Carlos")
        page.goto(base + "/g/kern-radiology/bakersfield/icode/")
        page.get_by_label("I-Code").fill(code)
        page.get_by_label("Month").fill("1")
        page.get_by_label("Day").fill("1")
        page.get_by_label("Year").fill("2001")
        page.get_by_role("button", name="See my exams").click()
        alert = page.get_by_role("alert")
        assert "The I-Code or date of birth is not right." in alert.inner_text()
        page.close()

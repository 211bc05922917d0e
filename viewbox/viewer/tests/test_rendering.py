"""Tests of render_jpeg and render_jpegs on real DICOM files from packages.

No Django database is needed: these are plain pytest tests.
"""

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import apply_color_lut, pixel_array

from viewbox.viewer import rendering
from viewbox.viewer.rendering import RenderError, render_jpeg, render_jpegs


def package_directory(name: str) -> Path:
    """Find an installed package without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    return Path(next(iter(spec.submodule_search_locations)))


PYDICOM_TEST_FILES = package_directory("pydicom") / "data" / "test_files"
PYDICOM_DATA = package_directory("data_store") / "data"
MAMMOGRAM = package_directory("mammograms") / "cases" / "sfm-benign-0" / "1-130.dcm"

# Below this standard deviation of its pixels an output counts as blank.
NOT_BLANK_STD = 10.0


def decode_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def render_array(source: Path, frame: int = 0) -> NDArray[np.float64]:
    """Render at quality 100, so comparisons see little JPEG noise."""
    image = decode_jpeg(render_jpeg(source, frame, quality=100))
    return np.asarray(image, dtype=np.float64)


def relabelled_copy(source: Path, tmp_path: Path, **elements: object) -> Path:
    dataset = dcmread(source)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    copy = tmp_path / source.name
    dataset.save_as(copy)
    return copy


class TestRejectedFiles:
    def test_non_dicom_file_is_rejected(self, tmp_path: Path) -> None:
        text_file = tmp_path / "report.txt"
        text_file.write_text("Not an image. " * 50)

        with pytest.raises(RenderError) as raised:
            render_jpeg(text_file)

        assert str(raised.value) == (
            "The file is not a DICOM file: the 'DICM' prefix or the File Meta "
            "Information is missing"
        )

    def test_truncated_pixel_data_is_rejected(self) -> None:
        with pytest.raises(RenderError) as raised:
            render_jpeg(PYDICOM_TEST_FILES / "MR_truncated.dcm")

        assert str(raised.value) == (
            "(7FE0,0010) Pixel Data is truncated: frame 0 needs 8192 bytes, but "
            "only 8130 are present"
        )

    def test_truncated_jpeg_2000_frame_is_rejected(self, tmp_path: Path) -> None:
        original = (PYDICOM_DATA / "693_J2KR.dcm").read_bytes()
        truncated = tmp_path / "693_J2KR_truncated.dcm"
        truncated.write_bytes(original[: len(original) // 2])

        with pytest.raises(RenderError) as raised:
            render_jpeg(truncated)

        assert str(raised.value) == (
            "Frame 0 of (7FE0,0010) Pixel Data could not be decoded as "
            "'JPEG 2000 Image Compression (Lossless Only)'"
        )

    def test_truncated_header_is_rejected(self, tmp_path: Path) -> None:
        original = (PYDICOM_DATA / "693_UNCI.dcm").read_bytes()
        truncated = tmp_path / "693_UNCI_truncated.dcm"
        truncated.write_bytes(original[:700])

        with pytest.raises(RenderError) as raised:
            render_jpeg(truncated)

        assert str(raised.value) == "The DICOM header could not be read: OSError"

    def test_frame_past_the_end_is_rejected(self) -> None:
        with pytest.raises(RenderError) as raised:
            render_jpeg(PYDICOM_DATA / "emri_small_jpeg_ls_lossless.dcm", frame=10)

        assert str(raised.value) == (
            "Frame index 10 is out of range: (0028,0008) Number of Frames is '10'"
        )

    @pytest.mark.parametrize("frame", [1, -1])
    def test_missing_frame_is_rejected(self, frame: int) -> None:
        with pytest.raises(RenderError) as raised:
            render_jpeg(PYDICOM_TEST_FILES / "MR_small.dcm", frame=frame)

        assert str(raised.value) == (
            f"Frame index {frame} is out of range: (0028,0008) Number of Frames "
            "is absent, so the file has one frame"
        )

    def test_sr_document_is_rejected(self) -> None:
        with pytest.raises(RenderError) as raised:
            render_jpeg(PYDICOM_TEST_FILES / "test-SR.dcm")

        assert str(raised.value) == (
            "The file has no (7FE0,0010) Pixel Data: (0008,0016) SOP Class UID is "
            "'1.2.840.10008.5.1.4.1.1.88.33' (Comprehensive SR Storage)"
        )

    @pytest.mark.parametrize(
        ("interpretation", "message"),
        [
            ("HSV", "(0028,0004) Photometric Interpretation 'HSV' is not supported"),
            # Free text is not quoted: it may be a name.
            (
                "TESTPATIENT ALICE",
                "(0028,0004) Photometric Interpretation is not a term of the standard",
            ),
        ],
    )
    def test_unsupported_photometric_interpretation_is_rejected(
        self, tmp_path: Path, interpretation: str, message: str
    ) -> None:
        source = relabelled_copy(
            PYDICOM_TEST_FILES / "MR_small.dcm",
            tmp_path,
            PhotometricInterpretation=interpretation,
        )

        with pytest.raises(RenderError) as raised:
            render_jpeg(source)

        assert str(raised.value) == message

    @pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
    def test_invalid_number_of_frames_is_rejected(self) -> None:
        with pytest.raises(RenderError) as raised:
            render_jpeg(PYDICOM_TEST_FILES / "badVR.dcm")

        assert str(raised.value) == (
            "(0028,0008) Number of Frames has an invalid value '1A'"
        )

    def test_message_omits_patient_data(self) -> None:
        source = PYDICOM_TEST_FILES / "test-SR.dcm"
        patient_name = str(dcmread(source).PatientName)

        with pytest.raises(RenderError) as raised:
            render_jpeg(source)

        assert patient_name
        assert patient_name not in str(raised.value)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"max_edge": 0}, "max_edge must be at least 1, not 0"),
            ({"quality": 0}, "quality must be between 1 and 100, not 0"),
            ({"quality": 101}, "quality must be between 1 and 100, not 101"),
        ],
    )
    def test_invalid_argument_raises_value_error(
        self, options: dict[str, int], message: str
    ) -> None:
        with pytest.raises(ValueError) as raised:
            render_jpeg(PYDICOM_TEST_FILES / "MR_small.dcm", **options)

        assert str(raised.value) == message


# (file, frame, full size as (width, height), Pillow mode)
RENDERED_CASES = {
    "CT uncompressed": (PYDICOM_DATA / "693_UNCI.dcm", 0, (512, 512), "L"),
    "CT JPEG 2000": (PYDICOM_DATA / "693_J2KR.dcm", 0, (512, 512), "L"),
    "MR JPEG 2000": (PYDICOM_DATA / "MR2_J2KR.dcm", 0, (1024, 1024), "L"),
    "CR MONOCHROME1 JPEG 2000": (
        PYDICOM_DATA / "RG1_J2KR.dcm",
        0,
        (1841, 1955),
        "L",
    ),
    "US multi-frame JPEG baseline YBR_FULL_422": (
        PYDICOM_DATA / "color3d_jpeg_baseline.dcm",
        60,
        (640, 480),
        "RGB",
    ),
    "US palette RLE": (PYDICOM_DATA / "OBXXXX1A_rle.dcm", 0, (800, 600), "RGB"),
    "US JPEG 2000 YBR_RCT": (PYDICOM_DATA / "US1_J2KR.dcm", 0, (640, 480), "RGB"),
    "Enhanced MR JPEG-LS": (
        PYDICOM_DATA / "emri_small_jpeg_ls_lossless.dcm",
        5,
        (64, 64),
        "L",
    ),
    "MG RLE": (MAMMOGRAM, 0, (2864, 4432), "L"),
    "MR big endian": (PYDICOM_TEST_FILES / "MR_small_bigendian.dcm", 0, (64, 64), "L"),
    "Enhanced CT functional groups": (
        PYDICOM_DATA / "eCT_Supplemental.dcm",
        1,
        (512, 512),
        "L",
    ),
    "deflated": (PYDICOM_TEST_FILES / "image_dfl.dcm", 0, (512, 512), "L"),
    "JPEG extended 12-bit": (
        PYDICOM_TEST_FILES / "JPGExtended.dcm",
        0,
        (256, 1024),
        "L",
    ),
    "VOI LUT Sequence": (PYDICOM_DATA / "vlut_04.dcm", 0, (512, 512), "L"),
    "Modality LUT Sequence": (PYDICOM_DATA / "mlut_18.dcm", 0, (512, 512), "L"),
    "RGB 16-bit": (PYDICOM_DATA / "SC_rgb_16bit.dcm", 0, (100, 100), "RGB"),
}


class TestRenderedOutput:
    @pytest.mark.parametrize("case", RENDERED_CASES)
    def test_full_size_output(self, case: str) -> None:
        source, frame, size, mode = RENDERED_CASES[case]

        image = decode_jpeg(render_jpeg(source, frame))

        assert image.size == size
        assert image.mode == mode
        assert np.asarray(image).std() > NOT_BLANK_STD

    @pytest.mark.parametrize("case", RENDERED_CASES)
    def test_max_edge_output(self, case: str) -> None:
        source, frame, (width, height), mode = RENDERED_CASES[case]
        max_edge = 300
        scale = min(1.0, max_edge / max(width, height))
        expected_size = (round(width * scale), round(height * scale))

        image = decode_jpeg(render_jpeg(source, frame, max_edge=max_edge))

        assert image.size == expected_size
        assert max(image.size) <= max_edge
        assert image.mode == mode
        assert np.asarray(image).std() > NOT_BLANK_STD

    def test_file_object_matches_path(self) -> None:
        source = PYDICOM_DATA / "color3d_jpeg_baseline.dcm"

        with source.open("rb") as file:
            from_file = render_jpeg(file, frame=60)

        assert from_file == render_jpeg(source, frame=60)


class TestGrayscale:
    def test_monochrome1_is_inverted(self, tmp_path: Path) -> None:
        # RG1_UNCR has the same pixels as RG1_J2KR, uncompressed. Relabelled
        # as MONOCHROME2 it gives the naive render, without inversion.
        naive_source = relabelled_copy(
            PYDICOM_DATA / "RG1_UNCR.dcm",
            tmp_path,
            PhotometricInterpretation="MONOCHROME2",
        )

        rendered = render_array(PYDICOM_DATA / "RG1_J2KR.dcm")
        naive = render_array(naive_source)

        # As intended, the air-filled left lung shows darker than the spine.
        lung = (slice(664, 704), slice(495, 535))
        spine = (slice(860, 900), slice(900, 940))
        assert rendered[lung].mean() < rendered[spine].mean() - 50
        assert naive[lung].mean() > naive[spine].mean() + 50
        assert np.abs(rendered + naive - 255).mean() < 2

    def test_jpeg_2000_matches_uncompressed(self) -> None:
        compressed = render_array(PYDICOM_DATA / "693_J2KR.dcm")
        uncompressed = render_array(PYDICOM_DATA / "693_UNCR.dcm")

        assert np.array_equal(compressed, uncompressed)

    @pytest.mark.parametrize(
        "variant", ["emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"]
    )
    def test_enhanced_mr_matches_uncompressed(self, variant: str) -> None:
        for frame in (0, 9):
            assert render_jpeg(PYDICOM_DATA / variant, frame) == render_jpeg(
                PYDICOM_DATA / "emri_small.dcm", frame
            )

    def test_frames_render_differently(self) -> None:
        source = PYDICOM_DATA / "emri_small_jpeg_ls_lossless.dcm"

        assert render_jpeg(source, 0) != render_jpeg(source, 9)

    def test_window_from_functional_groups_is_applied(self) -> None:
        source = PYDICOM_DATA / "eCT_Supplemental.dcm"
        # The Shared Functional Groups contain Rescale Intercept -1024 and a
        # window of center 49 and width 102. The top level has neither.
        stored = pixel_array(source, index=1).astype(np.float64)
        hounsfield = stored - 1024
        expected = np.clip((hounsfield - 48.5) / 101 + 0.5, 0, 1) * 255

        rendered = render_array(source, frame=1)

        assert np.abs(rendered - expected).mean() < 1.5

    @pytest.mark.parametrize(
        ("function", "to_fraction"),
        [
            ("LINEAR", lambda x: np.clip((x - 599.5) / 1599 + 0.5, 0, 1)),
            ("LINEAR_EXACT", lambda x: np.clip((x - 600) / 1600 + 0.5, 0, 1)),
            ("SIGMOID", lambda x: 1 / (1 + np.exp(-4 * (x - 600) / 1600))),
        ],
    )
    def test_voi_lut_function_follows_ps3_3(
        self, tmp_path: Path, function: str, to_fraction: object
    ) -> None:
        # MR_small has Window Center 600 and Window Width 1600.
        source = relabelled_copy(
            PYDICOM_TEST_FILES / "MR_small.dcm", tmp_path, VOILUTFunction=function
        )
        stored = pixel_array(source).astype(np.float64)
        assert callable(to_fraction)
        expected = to_fraction(stored) * 255

        rendered = render_array(source)

        assert np.abs(rendered - expected).mean() < 1.5

    def test_first_of_several_windows_is_applied(self, tmp_path: Path) -> None:
        source = relabelled_copy(
            PYDICOM_TEST_FILES / "MR_small.dcm",
            tmp_path,
            WindowCenter=[600, 100],
            WindowWidth=[1600, 50],
        )
        single = render_array(PYDICOM_TEST_FILES / "MR_small.dcm")

        assert np.abs(render_array(source) - single).mean() < 0.5

    def test_default_window_spans_display_range(self) -> None:
        rendered = render_array(MAMMOGRAM)

        assert np.percentile(rendered, 1) < 10
        assert np.percentile(rendered, 99.9) > 245


class TestColor:
    def test_jpeg_baseline_frame_has_sane_colour(self) -> None:
        source = PYDICOM_DATA / "color3d_jpeg_baseline.dcm"

        rendered = render_array(source, frame=60)

        # Most of the frame is black background. Read as RGB by mistake,
        # YCbCr black would show as green, because its chroma sits at 128.
        channel_medians = np.median(rendered.reshape(-1, 3), axis=0)
        assert channel_medians.max() < 10
        channel_means = rendered.reshape(-1, 3).mean(axis=0)
        assert np.ptp(channel_means) < 5
        assert rendered.std() > NOT_BLANK_STD
        assert render_jpeg(source, frame=60) != render_jpeg(source, frame=0)

    def test_ybr_full_422_matches_rgb_original(self) -> None:
        compressed = render_array(PYDICOM_TEST_FILES / "SC_rgb_dcmtk_+eb+cy+np.dcm")
        original = render_array(PYDICOM_DATA / "SC_rgb.dcm")

        assert np.abs(compressed - original).mean() < 6

    def test_ybr_rct_matches_rgb_original(self) -> None:
        compressed = render_jpeg(PYDICOM_DATA / "US1_J2KR.dcm")
        original = render_jpeg(PYDICOM_DATA / "US1_UNCR.dcm")

        assert compressed == original

    def test_palette_color_lut_is_applied(self) -> None:
        source = PYDICOM_DATA / "OBXXXX1A_rle.dcm"
        header = dcmread(source, stop_before_pixels=True)
        expected = apply_color_lut(pixel_array(source), header) >> 8

        rendered = render_array(source)

        assert np.abs(rendered - expected).mean() < 1.5

    def test_big_endian_palette_matches_little_endian(self) -> None:
        big_endian = render_jpeg(PYDICOM_DATA / "OBXXXX1A_expb.dcm")
        little_endian = render_jpeg(PYDICOM_DATA / "OBXXXX1A.dcm")

        assert big_endian == little_endian

    @pytest.mark.parametrize("bits", [16, 32])
    def test_wide_rgb_is_scaled_to_8_bits(self, bits: int) -> None:
        wide = render_jpeg(PYDICOM_DATA / f"SC_rgb_{bits}bit.dcm")
        narrow = render_jpeg(PYDICOM_DATA / "SC_rgb.dcm")

        assert wide == narrow


def downscaled_full_render(source: Path, size: tuple[int, int]) -> NDArray[np.float64]:
    """Render at full resolution, then downscale as the renderer does."""
    image = decode_jpeg(render_jpeg(source, quality=100))
    resized = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.float64)


def rendering_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "viewbox.viewer.rendering"
    ]


class TestRenderJpegs:
    @pytest.mark.parametrize(
        "case",
        [
            "CR MONOCHROME1 JPEG 2000",
            "US multi-frame JPEG baseline YBR_FULL_422",
            "US palette RLE",
            "MG RLE",
            "Enhanced CT functional groups",
        ],
    )
    def test_each_edge_matches_render_jpeg(self, case: str) -> None:
        source, frame, _, mode = RENDERED_CASES[case]
        edges = (256, 512, 1024, None)

        jpegs = render_jpegs(source, frame, edges, quality=100)

        assert list(jpegs) == list(edges)
        for edge in edges:
            single = decode_jpeg(render_jpeg(source, frame, edge, quality=100))
            batch = decode_jpeg(jpegs[edge])
            assert batch.size == single.size, edge
            assert batch.mode == single.mode == mode, edge
            difference = np.abs(
                np.asarray(batch, dtype=np.float64)
                - np.asarray(single, dtype=np.float64)
            )
            assert difference.mean() < 1.0, edge

    def test_frame_is_decoded_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls = []
        read_frame = rendering._read_frame

        def counting_read_frame(*args: Any) -> Any:
            calls.append(args[1:])
            return read_frame(*args)

        monkeypatch.setattr(rendering, "_read_frame", counting_read_frame)

        render_jpegs(PYDICOM_DATA / "RG1_UNCI.dcm", 0, (256, 512, 1024))

        # The largest edge decides how far the decode may reduce the frame.
        assert calls == [(0, 1024)]

    def test_repeated_edge_gives_one_entry(self) -> None:
        jpegs = render_jpegs(PYDICOM_DATA / "693_UNCI.dcm", 0, (256, 256, None))

        assert list(jpegs) == [256, None]

    def test_no_edges_give_empty_dict(self) -> None:
        assert render_jpegs(PYDICOM_DATA / "693_UNCI.dcm", 0, ()) == {}

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"edges": (256, 0)}, "every edge must be at least 1 or None, not 0"),
            (
                {"edges": (256,), "quality": 0},
                "quality must be between 1 and 100, not 0",
            ),
        ],
    )
    def test_invalid_argument_raises_value_error(
        self, options: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValueError) as raised:
            render_jpegs(PYDICOM_TEST_FILES / "MR_small.dcm", 0, **options)

        assert str(raised.value) == message


# (file, edge whose render decodes the frame at a reduced resolution, and
# limits of the mean and 99.9th percentile of the absolute difference from
# the full-resolution render downscaled). The percentile catches rims along
# sharp edges that a mean hides.
REDUCED_CASES = {
    "CR MONOCHROME1 15-bit JPEG 2000 lossless": (
        PYDICOM_DATA / "RG1_J2KR.dcm",
        512,
        (1.0, 40),
    ),
    "CR MONOCHROME1 JPEG 2000 lossy": (
        PYDICOM_DATA / "RG1_J2KI.dcm",
        256,
        (1.0, 40),
    ),
    "CR MONOCHROME1 10-bit JPEG 2000": (
        PYDICOM_DATA / "RG3_J2KR.dcm",
        256,
        (1.0, 40),
    ),
    "MR 12-bit JPEG 2000": (PYDICOM_DATA / "MR2_J2KR.dcm", 256, (1.5, 40)),
    "CT signed 16-bit JPEG 2000": (
        PYDICOM_TEST_FILES / "JPEG2000.dcm",
        256,
        (1.0, 40),
    ),
    # Ultrasound speckle is so fine that this comparison is loose even
    # without reduction: US1_UNCR, uncompressed, differs by a mean of 1.6 and
    # a 99.9th percentile of 60.
    "US YBR_RCT JPEG 2000": (PYDICOM_DATA / "US1_J2KR.dcm", 200, (4.0, 80)),
    "US YBR_FULL_422 JPEG baseline": (
        PYDICOM_DATA / "color3d_jpeg_baseline.dcm",
        256,
        (1.0, 40),
    ),
}


class TestReducedResolution:
    @pytest.mark.parametrize("case", REDUCED_CASES)
    def test_frame_is_decoded_smaller(self, case: str) -> None:
        source, edge, _ = REDUCED_CASES[case]

        with source.open("rb") as file:
            _, decoded = rendering._read_frame(file, 0, edge)

        height, width = decoded.pixels.shape[:2]
        full_width, full_height = decoded.full_size
        assert width <= (full_width + 1) // 2
        assert height <= (full_height + 1) // 2

    @pytest.mark.parametrize("case", REDUCED_CASES)
    def test_output_matches_full_resolution(
        self, case: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        source, edge, (mean_limit, percentile_limit) = REDUCED_CASES[case]

        reduced = decode_jpeg(render_jpeg(source, max_edge=edge, quality=100))
        expected = downscaled_full_render(source, reduced.size)

        assert max(reduced.size) == edge
        difference = np.abs(np.asarray(reduced, dtype=np.float64) - expected)
        assert difference.mean() < mean_limit
        assert np.percentile(difference, 99.9) < percentile_limit
        assert rendering_warnings(caplog) == []

    def test_monochrome1_tile_is_inverted(self) -> None:
        rendered = decode_jpeg(render_jpeg(PYDICOM_DATA / "RG1_J2KR.dcm", max_edge=512))
        tile = np.asarray(rendered, dtype=np.float64)

        # The regions of TestGrayscale.test_monochrome1_is_inverted, scaled
        # from 1955 to 512 rows.
        lung = (slice(174, 184), slice(130, 140))
        spine = (slice(225, 235), slice(236, 246))
        assert tile[lung].mean() < tile[spine].mean() - 50

    def test_large_edge_decodes_full_size(self) -> None:
        # 1024 of 1955 rows: a level-1 decode (978 rows) would be scaled up.
        source = PYDICOM_DATA / "RG1_J2KR.dcm"

        with source.open("rb") as file:
            _, decoded = rendering._read_frame(file, 0, 1024)

        assert decoded.pixels.shape == (1955, 1841)

    def test_sign_mismatch_decodes_full_size(self) -> None:
        # Pixel Representation is 1 but the codestream is unsigned, a case
        # that pydicom's decoders correct and the reduced decode leaves to them.
        source = PYDICOM_TEST_FILES / "J2K_pixelrep_mismatch.dcm"

        tile = render_jpegs(source, 0, (128,))[128]

        assert tile == render_jpegs(source, 0, (128, None))[128]

    def test_truncated_tile_is_rejected(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        original = (PYDICOM_DATA / "RG3_J2KR.dcm").read_bytes()
        truncated = tmp_path / "RG3_J2KR_truncated.dcm"
        truncated.write_bytes(original[: len(original) // 2])

        with pytest.raises(RenderError) as raised:
            render_jpeg(truncated, max_edge=256)

        assert str(raised.value) == (
            "Frame 0 of (7FE0,0010) Pixel Data could not be decoded as "
            "'JPEG 2000 Image Compression (Lossless Only)'"
        )
        assert rendering_warnings(caplog) == [
            "Reduced-resolution decoding of frame 0 failed with OSError, so the "
            "frame is decoded at full resolution"
        ]

"""Render one frame of a stored DICOM file as a JPEG for the patient portal.

Grayscale frames pass through the Modality LUT, then the VOI LUT or window
(PS3.3 C.11.1 and C.11.2), and MONOCHROME1 is inverted. Colour frames are
converted to 8-bit RGB. Only the requested frame is read and decoded, so
memory stays bounded by one frame whatever the number of frames in the file
(deflated files, which must be inflated whole, are the exception).

    with open("ct.dcm", "rb") as file:
        jpeg = render_jpeg(file, frame=0, max_edge=1024)

render_jpegs makes several sizes of one frame from a single decode:

    jpegs = render_jpegs("ct.dcm", frame=0, edges=(256, 512, 1024))
"""

import io
import logging
import math
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, Jpeg2KImagePlugin, JpegImagePlugin
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

# Imported from the defining modules: pydicom.pixels re-exports these
# without __all__, which mypy's strict mode rejects.
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import as_pixel_options, get_expected_length
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGBaseline8Bit

logger = logging.getLogger(__name__)

_GRAYSCALE: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
_PALETTE: Final = "PALETTE COLOR"
# Three-sample interpretations, shown as RGB: Pillow converts YBR_FULL and
# YBR_FULL_422, and the JPEG 2000 decoders already return YBR_ICT and YBR_RCT
# as RGB.
_COLOR: Final = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
# Every defined term of Photometric Interpretation (PS3.3 C.7.6.3.1.2),
# retired ones included.
_DEFINED_INTERPRETATIONS: Final = (
    _GRAYSCALE
    | _COLOR
    | {
        _PALETTE,
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "XYB",
    }
)

_YCBCR: Final = frozenset({"YBR_FULL", "YBR_FULL_422"})
_PIXEL_DATA_KEYWORDS: Final = {
    (0x7FE0, 0x0010): "PixelData",
    (0x7FE0, 0x0008): "FloatPixelData",
    (0x7FE0, 0x0009): "DoubleFloatPixelData",
}

# pydicom 3.0.2 tries pylibjpeg first, but Pillow's libjpeg-turbo decodes a
# 640x480 baseline JPEG frame in 2.9 ms instead of 7 ms.
_PREFERRED_PLUGINS: Final = {JPEGBaseline8Bit: "pillow"}

# Percentiles of the frame's values that bound the window when the file
# carries none, so that a few outliers do not flatten the contrast.
_DEFAULT_WINDOW_PERCENTILES: Final = (0.5, 99.5)
# The default window is estimated on a strided sample of about this many
# pixels, so its cost does not grow with the frame.
_WINDOW_SAMPLE_PIXELS: Final = 1 << 18

# Elements per np.take call in _look_up.
_LOOKUP_CHUNK: Final = 1 << 16

# Pillow first shrinks by an integer factor with box averaging (Image.reduce)
# while at least this ratio of resizing remains for the Lanczos filter.
_REDUCING_GAP: Final = 2.0

# A JPEG 2000 frame decoded at a reduced resolution keeps at least this
# ratio of resizing for the Lanczos filter. The wavelet's low-pass filter
# overshoots at sharp edges, and a narrow window turns that into bright
# rims: at 1.0 the 693_J2KR CT tile had a ring along the edge of its field
# of view, with 1.2% of its pixels off by more than 50 levels. At 1.5 no
# pixel of the pydicom-data JPEG 2000 files is.
_JPEG_2000_REDUCING_GAP: Final = 1.5

# Frames of these transfer syntaxes can be decoded at a reduced resolution:
# JPEG 2000 by dropping resolution levels of the wavelet transform, baseline
# JPEG by libjpeg's DCT scaling.
_REDUCIBLE_SYNTAXES: Final = frozenset({JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit})

# Marker codes of a JPEG 2000 codestream, which starts with SOC and then SIZ.
_JPEG_2000_SOC_SIZ: Final = b"\xff\x4f\xff\x51"
_JPEG_2000_SIZ: Final = 0xFF51
_JPEG_2000_COD: Final = 0xFF52
_JPEG_2000_COC: Final = 0xFF53
_JPEG_2000_SOT: Final = 0xFF90

# Raised by pydicom's frame reader and Pillow for frames they cannot decode
# at a reduced resolution. The full-resolution decoders then get the frame.
_REDUCED_DECODE_ERRORS: Final = (
    EOFError,
    OSError,
    ValueError,
    struct.error,
    Image.DecompressionBombError,
)

# pydicom and its decoding plugins raise all of these for corrupt or
# unsupported data. Any other exception is a bug and propagates.
_DECODER_ERRORS: Final = (
    AttributeError,
    EOFError,
    KeyError,
    NotImplementedError,
    OSError,
    RuntimeError,
    ValueError,
    struct.error,
)


class RenderError(Exception):
    """The file cannot be rendered as an image.

    The message names the DICOM tag and quotes the offending value. It never
    quotes patient data.
    """


@dataclass(frozen=True)
class _Window:
    """A VOI window in modality units (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str


def render_jpeg(
    source: str | os.PathLike[str] | BinaryIO,
    frame: int = 0,
    max_edge: int | None = None,
    quality: int = 85,
) -> bytes:
    """Render one frame (0-based) as JPEG bytes.

    The image is scaled down so that neither edge exceeds max_edge. It is
    never scaled up, and None keeps the full size.

    A file object must be seekable and is read from its start. Raises
    RenderError when the file cannot be rendered, OSError when a path cannot
    be opened, and ValueError for a max_edge below 1 or a quality outside
    1-100.
    """
    if max_edge is not None and max_edge < 1:
        raise ValueError(f"max_edge must be at least 1, not {max_edge}")
    return render_jpegs(source, frame, [max_edge], quality)[max_edge]


def render_jpegs(
    source: str | os.PathLike[str] | BinaryIO,
    frame: int,
    edges: Sequence[int | None],
    quality: int = 85,
) -> dict[int | None, bytes]:
    """Render one frame (0-based) as one JPEG per edge, decoding it once.

    Returns a dict from each distinct edge to JPEG bytes scaled as
    render_jpeg scales them for max_edge=edge, and an empty dict for no
    edges. When the largest edge is at most a half (baseline JPEG) or a
    third (JPEG 2000) of the frame's long side, the frame is decoded at a
    reduced resolution. That is up to 10 times faster and gives the same
    output sizes. On the pydicom-data files at edges from 150 to 1024, the
    mean difference from the full-resolution render is at most 2.6 of 255
    levels (US1_J2KR at 200), and below 1 at the portal's edge of 256.

    Raises as render_jpeg does, and ValueError for an edge below 1.
    """
    for edge in edges:
        if edge is not None and edge < 1:
            raise ValueError(f"every edge must be at least 1 or None, not {edge}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, not {quality}")
    if not edges:
        return {}

    largest_edge = None if None in edges else max(e for e in edges if e is not None)
    with _open_source(source) as file:
        header, decoded = _read_frame(file, frame, largest_edge)

    image = _to_image(decoded, header, frame)
    full_size, box = decoded.full_size, decoded.box
    del decoded
    jpegs: dict[int | None, bytes] = {}
    for edge in edges:
        if edge not in jpegs:
            resized = _resize(image, _output_size(full_size, edge), box)
            jpegs[edge] = _encode_jpeg(resized, quality)
    return jpegs


@dataclass(frozen=True)
class _DecodedFrame:
    pixels: NDArray[Any]
    # The decoders may change the colour space, for example JPEG 2000 YBR_RCT
    # comes out as RGB, so this can differ from the header's value.
    photometric_interpretation: str
    # (width, height) of the frame at full resolution, which pixels has
    # unless the frame was decoded at a reduced resolution.
    full_size: tuple[int, int]
    # Where the full frame lies in pixels, as (left, top, right, bottom) in
    # pixel units, when that is not the whole of pixels.
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class _PixelDataElement:
    keyword: str
    vr: str | None
    length: int


@contextmanager
def _open_source(source: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield file
    else:
        source.seek(0)
        yield source


def _read_frame(
    file: BinaryIO, frame: int, largest_edge: int | None
) -> tuple[Dataset, _DecodedFrame]:
    """Read the header and decode one frame, checking what can be checked first.

    largest_edge is the largest output edge that will be made from the frame,
    or None for full size. It allows decoding at a reduced resolution.
    """
    header = _read_header(file)
    transfer_syntax = UID(header.file_meta.TransferSyntaxUID)
    # A deflated dataset is one zlib stream, so there is no pixel data offset
    # to seek to: inflate the whole dataset instead.
    if transfer_syntax.is_deflated:
        return _read_deflated_frame(file, frame)

    element = _read_pixel_data_element(file, transfer_syntax)
    if element is None:
        raise _no_pixel_data(header)
    _check_image_pixel_module(header)
    _check_frame_index(header, frame)
    if not transfer_syntax.is_encapsulated:
        _check_native_length(file, header, frame, element.length)

    # The file is now positioned at the pixel data value, where the decoder
    # reads only the requested frame.
    if transfer_syntax in _REDUCIBLE_SYNTAXES and largest_edge is not None:
        reduced = _decode_reduced(file, header, transfer_syntax, frame, largest_edge)
        if reduced is not None:
            return header, reduced

    options = as_pixel_options(
        header, transfer_syntax_uid=transfer_syntax, pixel_keyword=element.keyword
    )
    if element.vr is not None:
        options["pixel_vr"] = element.vr
    return header, _decode(file, transfer_syntax, frame, options)


def _read_deflated_frame(file: BinaryIO, frame: int) -> tuple[Dataset, _DecodedFrame]:
    # NOTE: the whole inflated dataset, not one frame, stays in memory here.
    file.seek(0)
    dataset = dcmread(file)
    if "PixelData" not in dataset:
        raise _no_pixel_data(dataset)
    _check_image_pixel_module(dataset)
    _check_frame_index(dataset, frame)
    transfer_syntax = UID(dataset.file_meta.TransferSyntaxUID)
    return dataset, _decode(dataset, transfer_syntax, frame, {})


def _read_header(file: BinaryIO) -> Dataset:
    """Read every element before the pixel data, leaving the file positioned there."""
    try:
        header = dcmread(file, stop_before_pixels=True)
    except InvalidDicomError as error:
        raise RenderError(
            "The file is not a DICOM file: the 'DICM' prefix or the File Meta "
            "Information is missing"
        ) from error
    except (EOFError, OSError, ValueError, KeyError, struct.error) as error:
        # The exception text may quote element values, so only its type is
        # shown and the rest stays in the chained traceback.
        raise RenderError(
            f"The DICOM header could not be read: {type(error).__name__}"
        ) from error

    if "TransferSyntaxUID" not in header.file_meta:
        raise RenderError("(0002,0010) Transfer Syntax UID is missing")
    return header


def _read_pixel_data_element(
    file: BinaryIO, transfer_syntax: UID
) -> _PixelDataElement | None:
    """Read the element header at the file position (PS3.5 7.1).

    Returns None when the position has no pixel data element, for example
    at the end of an SR document. Leaves the file at the start of the value.
    """
    byte_order = "<" if transfer_syntax.is_little_endian else ">"
    tag = file.read(4)
    if len(tag) < 4:
        return None
    keyword = _PIXEL_DATA_KEYWORDS.get(struct.unpack(f"{byte_order}HH", tag))
    if keyword is None:
        return None

    # Explicit VR pixel data (OB, OW, OF, OD) has the VR and 2 reserved bytes
    # before its 4-byte length. Implicit VR has only the 4-byte length.
    vr = None
    if not transfer_syntax.is_implicit_VR:
        vr = file.read(4)[:2].decode("ascii", errors="replace")
    length_bytes = file.read(4)
    if len(length_bytes) < 4:
        # The file ends inside the element header, so the value is empty.
        return _PixelDataElement(keyword, vr, 0)
    (length,) = struct.unpack(f"{byte_order}L", length_bytes)
    return _PixelDataElement(keyword, vr, length)


def _check_image_pixel_module(header: Dataset) -> None:
    interpretation = header.get("PhotometricInterpretation")
    if interpretation is None:
        raise RenderError("(0028,0004) Photometric Interpretation is missing")

    expected_samples = 3 if interpretation in _COLOR else 1
    if interpretation not in _COLOR | _GRAYSCALE | {_PALETTE}:
        # Only a term of the standard is quoted: in a broken file the value
        # may be any text.
        if interpretation in _DEFINED_INTERPRETATIONS:
            raise RenderError(
                f"(0028,0004) Photometric Interpretation '{interpretation}' is not "
                "supported"
            )
        raise RenderError(
            "(0028,0004) Photometric Interpretation is not a term of the standard"
        )

    samples = header.get("SamplesPerPixel", 1)
    if samples != expected_samples:
        raise RenderError(
            f"(0028,0002) Samples per Pixel is '{samples}', but "
            f"{interpretation} needs {expected_samples}"
        )


def _check_frame_index(header: Dataset, frame: int) -> None:
    count = _number_of_frames(header)
    if 0 <= frame < count:
        return
    if "NumberOfFrames" in header:
        raise RenderError(
            f"Frame index {frame} is out of range: (0028,0008) Number of Frames "
            f"is '{header.NumberOfFrames}'"
        )
    raise RenderError(
        f"Frame index {frame} is out of range: (0028,0008) Number of Frames is "
        "absent, so the file has one frame"
    )


def _number_of_frames(header: Dataset) -> int:
    value = header.get("NumberOfFrames")
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise RenderError(
            f"(0028,0008) Number of Frames has an invalid value '{value}'"
        ) from None
    # pydicom's get_nr_frames also reads 0 as one frame.
    return max(count, 1)


def _no_pixel_data(header: Dataset) -> RenderError:
    sop_class = UID(header.get("SOPClassUID", ""))
    if not sop_class:
        return RenderError("The file has no (7FE0,0010) Pixel Data")
    return RenderError(
        "The file has no (7FE0,0010) Pixel Data: (0008,0016) SOP Class UID "
        f"is '{sop_class}' ({sop_class.name})"
    )


def _check_native_length(
    file: BinaryIO, header: Dataset, frame: int, length: int
) -> None:
    """Raise RenderError if uncompressed pixel data ends before the frame does.

    The file position is the start of the pixel data value. Compressed
    (encapsulated) frames are only checked by their decoder.
    """
    start = file.tell()
    file_size = file.seek(0, io.SEEK_END)
    file.seek(start)

    available = min(length, file_size - start)
    total = get_expected_length(header)
    needed = math.ceil(total * (frame + 1) / _number_of_frames(header))
    if available < needed:
        raise RenderError(
            f"(7FE0,0010) Pixel Data is truncated: frame {frame} needs {needed} "
            f"bytes, but only {available} are present"
        )


def _decode(
    source: BinaryIO | Dataset,
    transfer_syntax: UID,
    frame: int,
    options: dict[str, Any],
) -> _DecodedFrame:
    """Decode one frame without colour conversion, which Pillow does faster."""
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise RenderError(
            f"(0002,0010) Transfer Syntax UID '{transfer_syntax}' "
            f"({transfer_syntax.name}) is not supported"
        ) from None

    plugin = _PREFERRED_PLUGINS.get(transfer_syntax, "")
    if plugin not in decoder.available_plugins:
        plugin = ""
    try:
        pixels, properties = decoder.as_array(
            source, index=frame, raw=True, decoding_plugin=plugin, **options
        )
    except _DECODER_ERRORS as error:
        raise RenderError(
            f"Frame {frame} of (7FE0,0010) Pixel Data could not be decoded as "
            f"'{transfer_syntax.name}'"
        ) from error
    return _DecodedFrame(
        pixels,
        str(properties["photometric_interpretation"]),
        full_size=(pixels.shape[1], pixels.shape[0]),
    )


@dataclass(frozen=True)
class _Jpeg2000Component:
    precision: int
    signed: bool
    subsampled: bool


@dataclass(frozen=True)
class _Jpeg2000Header:
    """The image geometry and coding of a JPEG 2000 codestream.

    The fields come from the SIZ, COD and COC marker segments of the main
    header.
    """

    # Reference grid coordinates of the image area: XOsiz, YOsiz, Xsiz, Ysiz.
    left: int
    top: int
    right: int
    bottom: int
    components: tuple[_Jpeg2000Component, ...]
    # The minimum of the components' wavelet decomposition levels, which is
    # the maximum number of resolution levels that a decoder can drop.
    decomposition_levels: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.right - self.left, self.bottom - self.top)

    def reduced_size(self, level: int) -> tuple[int, int]:
        """Return the image size that OpenJPEG decodes with level levels dropped."""
        step = 1 << level
        width = -(-self.right // step) - -(-self.left // step)
        height = -(-self.bottom // step) - -(-self.top // step)
        return (width, height)


def _decode_reduced(
    file: BinaryIO,
    header: Dataset,
    transfer_syntax: UID,
    frame: int,
    largest_edge: int,
) -> _DecodedFrame | None:
    """Decode a compressed frame at a reduced size that still covers largest_edge.

    Returns None, with the file back at the pixel data value, when no
    reduction applies or Pillow cannot decode the frame, so that the caller
    decodes it at full resolution.
    """
    full_size = (int(header.get("Columns") or 0), int(header.get("Rows") or 0))
    if largest_edge * 2 > max(full_size):
        return None

    start = file.tell()
    target = _output_size(full_size, largest_edge)
    try:
        codestream = _read_encapsulated_frame(file, header, frame)
        if transfer_syntax == JPEGBaseline8Bit:
            decoded = _decode_jpeg_scaled(codestream, header, full_size, target)
        else:
            decoded = _decode_jpeg_2000_reduced(codestream, header, full_size, target)
    except _REDUCED_DECODE_ERRORS as error:
        logger.warning(
            "Reduced-resolution decoding of frame %d failed with %s, so the "
            "frame is decoded at full resolution",
            frame,
            type(error).__name__,
        )
        decoded = None

    if decoded is None:
        file.seek(start)
    return decoded


def _read_encapsulated_frame(file: BinaryIO, header: Dataset, frame: int) -> bytes:
    offsets = None
    if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
        offsets = (header.ExtendedOffsetTable, header.ExtendedOffsetTableLengths)
    return get_frame(
        file,
        frame,
        extended_offsets=offsets,
        number_of_frames=_number_of_frames(header),
    )


def _decode_jpeg_scaled(
    codestream: bytes,
    header: Dataset,
    full_size: tuple[int, int],
    target: tuple[int, int],
) -> _DecodedFrame | None:
    """Decode a baseline JPEG frame with libjpeg's DCT scaling to 1/2, 1/4 or 1/8."""
    image = Image.open(io.BytesIO(codestream), formats=("JPEG",))
    if not isinstance(image, JpegImagePlugin.JpegImageFile) or image.size != full_size:
        return None
    if image.mode != ("L" if header.get("SamplesPerPixel", 1) == 1 else "RGB"):
        return None

    # As pydicom's Pillow plugin does for the full-resolution decode, keep
    # the samples in the colour space they were compressed in, unless an
    # Adobe APP14 marker names a transform, so the header's Photometric
    # Interpretation still describes them.
    mode = None
    if image.mode == "RGB" and "adobe_transform" not in image.info:
        mode = "YCbCr"
    image.draft(mode, target)
    image.load()
    interpretation = str(header.PhotometricInterpretation)
    return _DecodedFrame(np.asarray(image), interpretation, full_size)


def _decode_jpeg_2000_reduced(
    codestream: bytes,
    header: Dataset,
    full_size: tuple[int, int],
    target: tuple[int, int],
) -> _DecodedFrame | None:
    """Decode a JPEG 2000 frame at the lowest resolution that suits target.

    Returns None for the layouts that this path does not handle and the
    full-resolution decoders do. These are components that differ in
    precision, signedness or sampling, colour of more than 8 bits (which
    Pillow narrows to 8), and a codestream whose signedness contradicts
    (0028,0103) Pixel Representation.
    """
    codestream_header = _read_jpeg_2000_header(codestream)
    if codestream_header is None or codestream_header.size != full_size:
        return None
    # An image offset on the reference grid would move the low-pass samples
    # that _jpeg_2000_reduced_box places. DICOM encoders write none.
    if (codestream_header.left, codestream_header.top) != (0, 0):
        return None
    covered = (
        math.ceil(target[0] * _JPEG_2000_REDUCING_GAP),
        math.ceil(target[1] * _JPEG_2000_REDUCING_GAP),
    )
    level = _jpeg_2000_reduction_level(codestream_header, covered)
    if level == 0:
        return None
    component = codestream_header.components[0]
    if component.subsampled or set(codestream_header.components) != {component}:
        return None

    interpretation = str(header.PhotometricInterpretation)
    if interpretation in _GRAYSCALE:
        pixel_representation = int(header.get("PixelRepresentation", 0))
        if component.precision > 16 or component.signed != bool(pixel_representation):
            return None
        samples, mode = 1, "L" if component.precision <= 8 else "I;16"
    elif component.precision != 8 or component.signed:
        return None
    else:
        samples, mode = 3, "RGB"
    if len(codestream_header.components) != samples:
        return None
    if interpretation in ("YBR_ICT", "YBR_RCT"):
        # OpenJPEG applies the inverse component transform, as for the
        # full-resolution decode.
        interpretation = "RGB"

    image = Image.open(io.BytesIO(codestream), formats=("JPEG2000",))
    if not isinstance(image, Jpeg2KImagePlugin.Jpeg2KImageFile) or image.mode != mode:
        return None
    image.reduce = level
    image.load()
    if interpretation in _GRAYSCALE:
        pixels = _undo_pillow_jpeg_2000_scaling(np.asarray(image), component)
    else:
        pixels = np.asarray(image)
    box = _jpeg_2000_reduced_box(full_size, image.size, level)
    return _DecodedFrame(pixels, interpretation, full_size, box)


def _read_jpeg_2000_header(codestream: bytes) -> _Jpeg2000Header | None:
    """Parse the main header of a JPEG 2000 codestream, or return None if none.

    Reads the marker segments from SOC up to the first SOT. Raises
    struct.error if a segment runs past the end of the data.
    """
    if not codestream.startswith(_JPEG_2000_SOC_SIZ):
        return None

    offset = 2
    size: tuple[int, int, int, int] | None = None
    components: list[_Jpeg2000Component] = []
    levels: list[int] = []
    while offset + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, offset)
        segment = offset + 4
        if marker == _JPEG_2000_SOT:
            break
        if marker == _JPEG_2000_SIZ:
            right, bottom, left, top = struct.unpack_from(
                ">4L", codestream, segment + 2
            )
            size = (left, top, right, bottom)
            (count,) = struct.unpack_from(">H", codestream, segment + 34)
            for index in range(count):
                ssiz, xrsiz, yrsiz = struct.unpack_from(
                    ">3B", codestream, segment + 36 + 3 * index
                )
                components.append(
                    _Jpeg2000Component(
                        precision=(ssiz & 0x7F) + 1,
                        signed=bool(ssiz & 0x80),
                        subsampled=(xrsiz, yrsiz) != (1, 1),
                    )
                )
        elif marker == _JPEG_2000_COD:
            # Scod (1 byte) and SGcod (4 bytes) come before the levels.
            levels.append(codestream[segment + 5])
        elif marker == _JPEG_2000_COC:
            # Ccoc takes 2 bytes when there are more than 256 components.
            index_length = 1 if len(components) < 257 else 2
            levels.append(codestream[segment + index_length + 1])
        offset += 2 + length

    if size is None or not components or not levels:
        return None
    return _Jpeg2000Header(*size, tuple(components), min(levels))


def _jpeg_2000_reduction_level(
    codestream_header: _Jpeg2000Header, covered: tuple[int, int]
) -> int:
    """Return the highest level whose reduced image is at least covered in size.

    NOTE: Pillow 13.0 rounds the reduced size to the nearest integer where
    OpenJPEG rounds up, and fails with "broken data stream" when the two
    differ (a width of 1841 at level 2 gives 460 against 461). Only levels
    where both agree are used, so such a frame decodes at a lower level.
    """
    level = 0
    for candidate in range(1, codestream_header.decomposition_levels + 1):
        width, height = codestream_header.reduced_size(candidate)
        if width < covered[0] or height < covered[1]:
            break
        half_step = 1 << candidate >> 1
        pillow_size = tuple(
            (length + half_step) >> candidate for length in codestream_header.size
        )
        if pillow_size == (width, height):
            level = candidate
    return level


def _jpeg_2000_reduced_box(
    full_size: tuple[int, int], reduced_size: tuple[int, int], level: int
) -> tuple[float, float, float, float]:
    """Return where a full frame lies in its JPEG 2000 image with level levels dropped.

    Each low-pass sample lies on the full-resolution pixel whose
    coordinates are multiples of 2**level, not in the middle of the
    2**level pixels it replaces. At level 1, OpenJPEG's output for the
    693_J2KR CT is about twice as close to the even pixels as to 2x2 means.
    Resizing from this box instead of the whole image removes that shift of
    up to half a reduced pixel. Pillow rejects a box past the image, so the
    far edges are clamped to it, a scale error below 1/(2 * reduced size).
    """
    step = 1 << level
    near = 0.5 - 0.5 / step
    far = [(length - 0.5) / step + 0.5 for length in full_size]
    return (
        near,
        near,
        min(far[0], reduced_size[0]),
        min(far[1], reduced_size[1]),
    )


def _undo_pillow_jpeg_2000_scaling(
    samples: NDArray[Any], component: _Jpeg2000Component
) -> NDArray[Any]:
    """Return the stored values of grayscale samples that Pillow decoded.

    Pillow offsets signed samples by 2**(precision - 1) and shifts every
    sample left to fill its 8- or 16-bit container, as pydicom 3.0.2's
    Pillow plugin also undoes.
    """
    container_bits = 8 * samples.dtype.itemsize
    values = samples.astype(np.int32) >> (container_bits - component.precision)
    if not component.signed:
        return values.astype(samples.dtype)
    values -= 1 << (component.precision - 1)
    return values.astype(f"i{samples.dtype.itemsize}")


def _to_image(decoded: _DecodedFrame, header: Dataset, frame: int) -> Image.Image:
    # Numpy indexing and Pillow both want native byte order, which big endian
    # files do not have.
    pixels = decoded.pixels
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))

    interpretation = decoded.photometric_interpretation
    if interpretation in _GRAYSCALE:
        gray = _to_display_gray(pixels, header, frame)
        return Image.fromarray(gray, mode="L")
    if interpretation == _PALETTE:
        return _palette_image(pixels, header)

    bits_stored = header.get("BitsStored", 8 * pixels.dtype.itemsize)
    rgb = _to_8_bits(pixels, bits_stored)
    if interpretation in _YCBCR:
        return Image.fromarray(rgb, mode="YCbCr").convert("RGB")
    return Image.fromarray(rgb, mode="RGB")


def _to_display_gray(
    pixels: NDArray[Any], header: Dataset, frame: int
) -> NDArray[np.uint8]:
    """Map stored values to 8-bit display values through the grayscale pipeline.

    Integer data of up to 16 bits goes through a lookup table with one entry
    per possible stored value, so the per-pixel work is a single gather.
    """
    modality = _functional_group(header, "PixelValueTransformationSequence", frame)
    voi = _functional_group(header, "FrameVOILUTSequence", frame)
    little_endian = UID(header.file_meta.TransferSyntaxUID).is_little_endian
    invert = header.PhotometricInterpretation == "MONOCHROME1"

    domain_size = 2 ** (8 * pixels.dtype.itemsize)
    # A frame smaller than the table is cheaper to compute pixel by pixel.
    if pixels.dtype.kind in "iu" and domain_size <= max(pixels.size, 256):
        # Index by the unsigned bit pattern, so a signed value v sits at
        # v mod 2**bits and no offset is needed per pixel.
        unsigned = pixels.view(f"u{pixels.dtype.itemsize}")
        domain = np.arange(domain_size, dtype=unsigned.dtype)
        values = _apply_modality_lut(domain.view(pixels.dtype), modality, little_endian)
        sample = values[unsigned[_strided_sample(unsigned)]]
        table = _apply_voi(values, voi, sample, little_endian, invert)
        return _look_up(table, unsigned)

    values = _apply_modality_lut(pixels, modality, little_endian)
    sample = values[_strided_sample(values)]
    return _apply_voi(values, voi, sample, little_endian, invert)


def _functional_group(header: Dataset, keyword: str, frame: int) -> Dataset:
    """Return the item of an enhanced multi-frame functional group for the frame.

    Enhanced objects (PS3.3 C.7.6.16) keep rescale and window in the Per-frame
    or Shared Functional Groups; other objects keep them at the top level.
    """
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(keyword):
        item: Dataset = per_frame[frame][keyword][0]
        return item
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(keyword):
        item = shared[0][keyword][0]
        return item
    return header


def _strided_sample(pixels: NDArray[Any]) -> tuple[slice, slice]:
    step = max(1, math.isqrt(pixels.size // _WINDOW_SAMPLE_PIXELS))
    return (slice(None, None, step), slice(None, None, step))


def _apply_modality_lut(
    pixels: NDArray[Any], item: Dataset, little_endian: bool
) -> NDArray[np.float32]:
    """Return modality values from the Modality LUT Sequence or the rescale."""
    if item.get("ModalityLUTSequence"):
        return _apply_lut_table(pixels, item.ModalityLUTSequence[0], little_endian)

    values = pixels.astype(np.float32)
    slope = _first_number(item, "RescaleSlope", 1.0)
    intercept = _first_number(item, "RescaleIntercept", 0.0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _apply_voi(
    values: NDArray[np.float32],
    item: Dataset,
    sample: NDArray[np.float32],
    little_endian: bool,
    invert: bool,
) -> NDArray[np.uint8]:
    """Map modality values to 0-255 for display (PS3.3 C.11.2).

    The VOI LUT Sequence wins over a window, as in pydicom's apply_voi_lut,
    and a frame with neither gets a default window.
    """
    if item.get("VOILUTSequence"):
        lut_item = item.VOILUTSequence[0]
        output_bits = int(lut_item.LUTDescriptor[2])
        fraction = _apply_lut_table(values, lut_item, little_endian)
        fraction /= np.float32(2**output_bits - 1)
        np.clip(fraction, 0.0, 1.0, out=fraction)
    else:
        window = _window_from_header(item) or _default_window(sample)
        fraction = _apply_window(values, window)

    if invert:
        fraction = 1.0 - fraction
    fraction *= np.float32(255.0)
    return np.rint(fraction).astype(np.uint8)


def _apply_lut_table(
    values: NDArray[Any], item: Dataset, little_endian: bool
) -> NDArray[np.float32]:
    """Map values through a LUT Descriptor and LUT Data pair (PS3.3 C.11.1.1.1).

    Values below the first mapped value take the first entry and values past
    the end take the last one.
    """
    entries, first_mapped, _ = (int(number) for number in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    else:
        table = np.asarray(data if isinstance(data, (list, MultiValue)) else [data])
    # A first entry count of 0 means 65536 entries.
    table = table[: entries or 65536].astype(np.float32)

    indexes = np.rint(values.astype(np.float32) - np.float32(first_mapped))
    np.clip(indexes, 0, len(table) - 1, out=indexes)
    return np.take(table, indexes.astype(np.intp))


def _window_from_header(item: Dataset) -> _Window | None:
    """Return the first window of the item, or None if it has none or an invalid one."""
    if item.get("WindowCenter") is None or item.get("WindowWidth") is None:
        return None
    center = _first_number(item, "WindowCenter", math.nan)
    width = _first_number(item, "WindowWidth", math.nan)
    function = str(item.get("VOILUTFunction") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning(
            "Unsupported (0028,1056) VOI LUT Function %r, using LINEAR", function
        )
        function = "LINEAR"

    # PS3.3 C.11.2.1.2 needs a width of at least 1 for LINEAR and above 0 for
    # the other functions.
    minimum_width_ok = width >= 1 if function == "LINEAR" else width > 0
    if math.isnan(center) or not minimum_width_ok:
        logger.warning(
            "Invalid window (0028,1050) %r, (0028,1051) %r, using the default",
            item.get("WindowCenter"),
            item.get("WindowWidth"),
        )
        return None
    return _Window(center, width, function)


def _first_number(item: Dataset, keyword: str, default: float) -> float:
    """Return the first value of a numeric element, or default if absent or invalid."""
    value = item.get(keyword)
    if isinstance(value, (list, MultiValue)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _default_window(sample: NDArray[np.float32]) -> _Window:
    """Return a LINEAR_EXACT window spanning the central 99% of the values."""
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return _Window(0.0, 1.0, "LINEAR_EXACT")
    low, high = (float(v) for v in np.percentile(finite, _DEFAULT_WINDOW_PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    width = max(high - low, 1e-6)
    return _Window((low + high) / 2, width, "LINEAR_EXACT")


def _apply_window(values: NDArray[np.float32], window: _Window) -> NDArray[np.float32]:
    """Return values mapped into 0-1 by the VOI LUT Function of PS3.3 C.11.2.1.2-3."""
    center = np.float32(window.center)
    width = np.float32(window.width)
    if window.function == "SIGMOID":
        exponent = (values - center) * np.float32(-4.0) / width
        return np.float32(1.0) / (np.float32(1.0) + np.exp(exponent))

    if window.function == "LINEAR_EXACT":
        fraction = (values - center) / width + np.float32(0.5)
    elif window.width == 1:
        # A LINEAR window of width 1 is a threshold at center - 0.5.
        return (values > center - np.float32(0.5)).astype(np.float32)
    else:
        fraction = (values - (center - np.float32(0.5))) / (width - np.float32(1.0))
        fraction += np.float32(0.5)
    return np.clip(fraction, 0.0, 1.0, out=fraction)


def _palette_image(pixels: NDArray[Any], header: Dataset) -> Image.Image:
    """Apply the Palette Color Lookup Table (PS3.3 C.7.9)."""
    unsigned = pixels.view(f"u{pixels.dtype.itemsize}")
    domain = np.arange(2 ** (8 * unsigned.dtype.itemsize), dtype=unsigned.dtype)
    table = apply_color_lut(domain, header)[:, :3]
    # TODO: drop once pydicom reads non-segmented Palette Color LUT Data in
    # the file's byte order; 3.0.2 reads it in the machine's.
    little_endian = UID(header.file_meta.TransferSyntaxUID).is_little_endian
    machine_little_endian = sys.byteorder == "little"
    if (
        "RedPaletteColorLookupTableData" in header
        and table.dtype.itemsize == 2
        and little_endian != machine_little_endian
    ):
        table = table.byteswap()
    table = _to_8_bits(table, 8 * table.dtype.itemsize)

    # Pillow's own palette mode maps 8-bit indexes in C, several times
    # faster than a numpy gather of RGB triplets.
    if unsigned.dtype == np.uint8:
        image = Image.fromarray(unsigned, mode="P")
        image.putpalette(table.tobytes())
        return image.convert("RGB")
    return Image.fromarray(_look_up(table, unsigned), mode="RGB")


def _look_up(table: NDArray[Any], indexes: NDArray[Any]) -> NDArray[Any]:
    """Return table[indexes], an array shaped like indexes plus the table's rows.

    np.take converts the whole index array to intp before the gather. In
    chunks that temporary stays in cache, which took a 12.7-megapixel
    mammogram from 42 ms to 13 ms.
    """
    out = np.empty(indexes.shape + table.shape[1:], dtype=table.dtype)
    flat_indexes = indexes.reshape(-1)
    flat_out = out.reshape((-1, *table.shape[1:]))
    for start in range(0, flat_indexes.size, _LOOKUP_CHUNK):
        stop = start + _LOOKUP_CHUNK
        np.take(table, flat_indexes[start:stop], axis=0, out=flat_out[start:stop])
    return out


def _to_8_bits(pixels: NDArray[Any], bits_stored: int) -> NDArray[np.uint8]:
    if pixels.dtype == np.uint8:
        return pixels
    shift = max(int(bits_stored) - 8, 0)
    return (pixels >> shift).astype(np.uint8)


def _output_size(full_size: tuple[int, int], max_edge: int | None) -> tuple[int, int]:
    """Return full_size scaled down to fit max_edge, or unchanged if it fits."""
    width, height = full_size
    if max_edge is None or max(width, height) <= max_edge:
        return full_size
    scale = max_edge / max(width, height)
    return (
        min(max_edge, max(1, round(width * scale))),
        min(max_edge, max(1, round(height * scale))),
    )


def _resize(
    image: Image.Image,
    size: tuple[int, int],
    box: tuple[float, float, float, float] | None,
) -> Image.Image:
    if image.size == size and box is None:
        return image
    return image.resize(
        size, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP
    )


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

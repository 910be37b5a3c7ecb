//! Image decoding and square preprocessing: decode → EXIF orientation → square crop (or
//! letterbox) → antialiased resize, producing RGB8 HWC buffers.
//!
//! * Decoding goes through `image` 0.25 (zune-jpeg for JPEG, `png`, `image-webp`, `gif`, `tiff`,
//!   BMP, ...). Every decoded colour type is converted to RGB8:
//!   - grayscale is replicated to three channels;
//!   - **alpha is dropped** (the stored colour under the alpha is kept), exactly like PIL's
//!     `Image.convert("RGB")`, so results match the usual `PIL.Image.open(p).convert("RGB")`
//!     loaders that detection baselines are trained with;
//!   - **16-bit samples are scaled**, `round(v * 255 / 65535)` (65535 → 255, 32768 → 128), not
//!     truncated to the low byte nor clipped (PIL clips `I;16` to 255);
//!   - float samples (HDR/EXR/TIFF) are clamped to [0, 1] and scaled to 0..=255;
//!   - CMYK JPEGs are converted to RGB by zune-jpeg (Adobe inverted-CMYK convention).
//! * The EXIF orientation (JPEG APP1, PNG `eXIf`, WebP `EXIF`, TIFF tag) is applied, so
//!   [`Decoded`] is upright and its `width`/`height` are the displayed ones.
//! * Truncated files are errors. For JPEG this is checked by walking the marker segments up
//!   to the end-of-image marker before decoding, because zune-jpeg (in the lenient mode `image`
//!   uses) silently pads missing entropy-coded data with grey.
//! * Resizing uses `fast_image_resize` (SIMD) with convolution filters whose support grows with
//!   the downscale factor, i.e. antialiased like PIL's `Image.resize` (`CatmullRom` is exactly
//!   PIL's `BICUBIC`, a = -0.5; `Bilinear` is PIL's `BILINEAR`, torchvision's default).
//!
//! Error messages never contain the file path; callers add it.

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageFormat};
use serde::{Deserialize, Serialize};

/// Largest decoded buffer (raw decoder output or RGB8) accepted: 512 MiB (~170 Mpx of RGB8),
/// the same default allocation limit as `image`'s reader. Protects against decompression bombs.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// Thread-local scratch buffers larger than this are freed after use instead of being kept.
const KEEP_SCRATCH_BYTES: usize = 64 << 20;

/// How a non-square image is made square.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Crop {
    /// Crop the largest centred square (the longer side loses `(long - short) / 2` pixels,
    /// rounded down, at the start), then resize it. The filter taps at the square's border
    /// see the neighbouring pixels outside it (PIL `resize(box=...)` semantics), so this
    /// equals torchvision's `Resize(size)` + `CenterCrop(size)` up to sub-pixel rounding.
    #[default]
    Center,
    /// Keep all content: resize so the longer side equals the target size and pad the rest
    /// with black bars, centred.
    Letterbox,
}

/// Resampling filter. All are antialiased: when downscaling, the kernel is stretched over the
/// source footprint of each output pixel (like PIL), so no aliasing from point sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Filter {
    /// Triangle filter: PIL `BILINEAR` (torchvision's `Resize` default).
    Bilinear,
    /// Catmull-Rom cubic (a = -0.5): PIL `BICUBIC`.
    #[default]
    CatmullRom,
    /// Lanczos, 3 lobes: PIL `LANCZOS`.
    Lanczos3,
}

impl From<Filter> for fr::FilterType {
    fn from(f: Filter) -> Self {
        match f {
            Filter::Bilinear => fr::FilterType::Bilinear,
            Filter::CatmullRom => fr::FilterType::CatmullRom,
            Filter::Lanczos3 => fr::FilterType::Lanczos3,
        }
    }
}

/// A decoded, upright (EXIF-oriented) RGB8 image.
#[derive(Clone, PartialEq, Eq)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    /// `"png"`, `"jpeg"`, `"webp"`, `"bmp"`, `"gif"`, `"tiff"`, `"ico"`, `"pnm"`, `"tga"`,
    /// `"qoi"`, `"hdr"`, `"exr"`, `"dds"`, `"farbfeld"`, ...
    pub format: &'static str,
    /// RGB8, row-major HWC, `width * height * 3` bytes. Empty when returned by [`process`] /
    /// [`process_into`], which do not keep the full-size image.
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("rgb_len", &self.rgb.len())
            .finish()
    }
}

/// Why an image could not be read. Messages are sentence fragments meant to follow
/// `"{path}: "`; they never contain the path themselves.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty file (0 bytes)")]
    Empty,
    /// No known image signature. Holds a rendering of the first bytes.
    #[error("unsupported format (not an image: starts with {0})")]
    NotAnImage(String),
    /// A recognised container this build cannot decode (AVIF, HEIF, JPEG XL, ...).
    #[error("unsupported format: {0}")]
    UnsupportedFormat(String),
    /// A known format using a feature the decoder lacks (e.g. arithmetic-coded JPEG).
    #[error("unsupported {} variant: {detail}", display_name(.format))]
    UnsupportedFeature { format: &'static str, detail: String },
    #[error("truncated or corrupt {}: {detail}", display_name(.format))]
    Corrupt { format: &'static str, detail: String },
    #[error(
        "{} image too large to decode: {width}x{height} needs more than the {} MiB limit",
        display_name(.format),
        MAX_DECODED_BYTES >> 20
    )]
    TooLarge {
        format: &'static str,
        width: u32,
        height: u32,
    },
    #[error("{} image has zero width or height ({width}x{height})", display_name(.format))]
    ZeroSize {
        format: &'static str,
        width: u32,
        height: u32,
    },
}

/// Format + displayed (EXIF-oriented) dimensions, from the headers only. Does not detect
/// truncated pixel data; [`decode`] does.
pub fn probe(bytes: &[u8]) -> Result<(u32, u32, &'static str), ImageError> {
    let format = sniff(bytes)?;
    let key = format_key(format);
    let (w, h, orientation) = if format == ImageFormat::Jpeg {
        let info = scan_jpeg(bytes, false).map_err(|detail| ImageError::Corrupt { format: key, detail })?;
        (info.width, info.height, info.orientation)
    } else {
        let mut dec = open_decoder(bytes, format)?;
        let (w, h) = dec.dimensions();
        (w, h, dec.orientation().unwrap_or(Orientation::NoTransforms))
    };
    if w == 0 || h == 0 {
        return Err(ImageError::ZeroSize {
            format: key,
            width: w,
            height: h,
        });
    }
    Ok(if swaps_axes(orientation) {
        (h, w, key)
    } else {
        (w, h, key)
    })
}

/// Fully decode to upright RGB8. Truncated or corrupt data is an error.
pub fn decode(bytes: &[u8]) -> Result<Decoded, ImageError> {
    let mut rgb = Vec::new();
    let (width, height, format) = decode_rgb(bytes, &mut rgb)?;
    Ok(Decoded {
        width,
        height,
        format,
        rgb,
    })
}

/// Square RGB8 (`size * size * 3` bytes, HWC) from a decoded image: crop (or letterbox) to a
/// square, then resize to `size` with `filter`.
pub fn to_square(img: &Decoded, size: u32, crop: Crop, filter: Filter) -> Vec<u8> {
    let mut out = vec![0u8; out_len(size)];
    to_square_into(img, size, crop, filter, &mut out);
    out
}

/// [`to_square`] into a caller-provided buffer of exactly `size * size * 3` bytes (e.g. a slot
/// of an output shard).
pub fn to_square_into(img: &Decoded, size: u32, crop: Crop, filter: Filter, out: &mut [u8]) {
    assert_eq!(
        img.rgb.len(),
        img.width as usize * img.height as usize * 3,
        "Decoded.rgb does not match its dimensions (was it emptied by `process`?)"
    );
    square_from_rgb(&img.rgb, img.width, img.height, size, crop, filter, out);
}

/// Decode + [`to_square`]. The returned [`Decoded`] carries width/height/format but an empty
/// `rgb`: the full-size image lives in a reused thread-local buffer.
pub fn process(bytes: &[u8], size: u32, crop: Crop, filter: Filter) -> Result<(Decoded, Vec<u8>), ImageError> {
    let mut out = vec![0u8; out_len(size)];
    let info = process_into(bytes, size, crop, filter, &mut out)?;
    Ok((info, out))
}

/// [`process`] writing into a caller-provided buffer of exactly `size * size * 3` bytes. In a
/// steady state (same-sized inputs on a thread) this allocates nothing but the decoder's own
/// internal state.
pub fn process_into(
    bytes: &[u8],
    size: u32,
    crop: Crop,
    filter: Filter,
    out: &mut [u8],
) -> Result<Decoded, ImageError> {
    assert_eq!(out.len(), out_len(size), "output buffer must be size*size*3 bytes");
    RGB_SCRATCH.with(|cell| {
        let mut rgb = cell.borrow_mut();
        let res = decode_rgb(bytes, &mut rgb);
        let res = res.map(|(width, height, format)| {
            square_from_rgb(&rgb, width, height, size, crop, filter, out);
            Decoded {
                width,
                height,
                format,
                rgb: Vec::new(),
            }
        });
        release_if_huge(&mut rgb);
        res
    })
}

fn out_len(size: u32) -> usize {
    size as usize * size as usize * 3
}

thread_local! {
    /// Decoded full-size RGB8 image, reused across `process` calls on a thread.
    static RGB_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Raw decoder output when it is not already RGB8 (gray, RGBA, 16-bit, ...).
    static RAW_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// `fast_image_resize` keeps its intermediate buffers between calls.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

fn release_if_huge(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_SCRATCH_BYTES {
        *buf = Vec::new();
    }
}

/// Sets `buf.len()` to `n` without re-zeroing when it already has that length (the decoder
/// overwrites every byte).
fn set_len(buf: &mut Vec<u8>, n: usize) {
    if buf.len() != n {
        buf.clear();
        buf.resize(n, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn decode_rgb(bytes: &[u8], rgb: &mut Vec<u8>) -> Result<(u32, u32, &'static str), ImageError> {
    let format = sniff(bytes)?;
    let key = format_key(format);
    // JPEG: structural check (catches truncation that zune-jpeg would pad silently) and EXIF
    // orientation in one cheap pass over the marker segments.
    let jpeg_orientation = if format == ImageFormat::Jpeg {
        let info = scan_jpeg(bytes, true).map_err(|detail| ImageError::Corrupt { format: key, detail })?;
        Some(info.orientation)
    } else {
        None
    };
    let mut dec = open_decoder(bytes, format)?;
    let orientation = match jpeg_orientation {
        Some(o) => o,
        // Unreadable metadata must not make a readable image fail.
        None => dec.orientation().unwrap_or(Orientation::NoTransforms),
    };
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(ImageError::ZeroSize {
            format: key,
            width: w,
            height: h,
        });
    }
    let color = dec.color_type();
    let raw_len = dec.total_bytes();
    let rgb_len = w as u64 * h as u64 * 3;
    if raw_len > MAX_DECODED_BYTES || rgb_len > MAX_DECODED_BYTES {
        return Err(ImageError::TooLarge {
            format: key,
            width: w,
            height: h,
        });
    }
    if color == ColorType::Rgb8 {
        set_len(rgb, rgb_len as usize);
        dec.read_image(rgb).map_err(|e| map_image_error(key, e))?;
    } else {
        RAW_SCRATCH.with(|cell| {
            let mut raw = cell.borrow_mut();
            set_len(&mut raw, raw_len as usize);
            let res = dec
                .read_image(&mut raw)
                .map_err(|e| map_image_error(key, e))
                .and_then(|()| {
                    set_len(rgb, rgb_len as usize);
                    to_rgb8(key, color, &raw, rgb)
                });
            release_if_huge(&mut raw);
            res
        })?;
    }
    let (w, h) = apply_orientation(orientation, w, h, rgb);
    Ok((w, h, key))
}

fn open_decoder(bytes: &[u8], format: ImageFormat) -> Result<impl ImageDecoder + '_, ImageError> {
    image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|e| map_image_error(format_key(format), e))
}

/// Converts any 8/16-bit or float decoder output to RGB8 (`rgb` already has the right length).
fn to_rgb8(format: &'static str, color: ColorType, raw: &[u8], rgb: &mut [u8]) -> Result<(), ImageError> {
    #[inline]
    fn u16_at(b: &[u8], i: usize) -> u8 {
        let v = u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]) as u32;
        ((v * 255 + 32767) / 65535) as u8
    }
    #[inline]
    fn f32_at(b: &[u8], i: usize) -> u8 {
        let v = f32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        // NaN → 0 (`clamp` keeps NaN, the `as` cast maps it to 0).
        (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
    }
    let px = rgb.chunks_exact_mut(3);
    match color {
        ColorType::Rgb8 => rgb.copy_from_slice(raw),
        ColorType::L8 => px.zip(raw).for_each(|(d, &v)| d.fill(v)),
        ColorType::La8 => px.zip(raw.chunks_exact(2)).for_each(|(d, s)| d.fill(s[0])),
        ColorType::Rgba8 => px
            .zip(raw.chunks_exact(4))
            .for_each(|(d, s)| d.copy_from_slice(&s[..3])),
        ColorType::L16 => px.zip(raw.chunks_exact(2)).for_each(|(d, s)| d.fill(u16_at(s, 0))),
        ColorType::La16 => px.zip(raw.chunks_exact(4)).for_each(|(d, s)| d.fill(u16_at(s, 0))),
        ColorType::Rgb16 | ColorType::Rgba16 => {
            let stride = if color == ColorType::Rgb16 { 6 } else { 8 };
            px.zip(raw.chunks_exact(stride)).for_each(|(d, s)| {
                d[0] = u16_at(s, 0);
                d[1] = u16_at(s, 1);
                d[2] = u16_at(s, 2);
            })
        }
        ColorType::Rgb32F | ColorType::Rgba32F => {
            let stride = if color == ColorType::Rgb32F { 12 } else { 16 };
            px.zip(raw.chunks_exact(stride)).for_each(|(d, s)| {
                d[0] = f32_at(s, 0);
                d[1] = f32_at(s, 1);
                d[2] = f32_at(s, 2);
            })
        }
        other => {
            return Err(ImageError::UnsupportedFeature {
                format,
                detail: format!("colour type {other:?}"),
            });
        }
    }
    Ok(())
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

fn apply_orientation(o: Orientation, w: u32, h: u32, rgb: &mut Vec<u8>) -> (u32, u32) {
    if o == Orientation::NoTransforms {
        return (w, h);
    }
    let buf = std::mem::take(rgb);
    let img = image::RgbImage::from_raw(w, h, buf).expect("RGB buffer matches its dimensions");
    let mut img = image::DynamicImage::ImageRgb8(img);
    img.apply_orientation(o);
    let img = img.into_rgb8(); // already RGB8: no conversion
    let dims = img.dimensions();
    *rgb = img.into_raw();
    dims
}

/// Identifies the format from the leading bytes, with clear errors for non-images.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match image::guess_format(bytes) {
        // AVIF decoding needs the `avif-native` (dav1d) feature, which is not built.
        Ok(ImageFormat::Avif) => Err(ImageError::UnsupportedFormat(
            "AVIF (no AVIF decoder in this build)".into(),
        )),
        Ok(f) => Ok(f),
        Err(_) => {
            if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
                let brand = String::from_utf8_lossy(&bytes[8..12]).into_owned();
                let what = match &bytes[8..12] {
                    b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" => "HEIF/HEIC image",
                    b"avif" | b"avis" => "AVIF image",
                    _ => "ISO media file (video?)",
                };
                return Err(ImageError::UnsupportedFormat(format!("{what} (brand {brand:?})")));
            }
            if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0cJXL ") {
                return Err(ImageError::UnsupportedFormat("JPEG XL".into()));
            }
            Err(ImageError::NotAnImage(describe_head(bytes)))
        }
    }
}

/// `3c 21 44 4f 43 54 59 50 "<!DOCTYPE"`-style rendering of the first bytes.
fn describe_head(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = bytes[..bytes.len().min(16)]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{} {:?}", hex.join(" "), text)
}

fn format_key(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        ImageFormat::Pnm => "pnm",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Tga => "tga",
        ImageFormat::Dds => "dds",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Ico => "ico",
        ImageFormat::Hdr => "hdr",
        ImageFormat::OpenExr => "exr",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Avif => "avif",
        ImageFormat::Qoi => "qoi",
        _ => "image",
    }
}

fn display_name(key: &str) -> &str {
    match key {
        "png" => "PNG",
        "jpeg" => "JPEG",
        "gif" => "GIF",
        "webp" => "WebP",
        "pnm" => "PNM",
        "tiff" => "TIFF",
        "tga" => "TGA",
        "dds" => "DDS",
        "bmp" => "BMP",
        "ico" => "ICO",
        "hdr" => "HDR",
        "exr" => "OpenEXR",
        "farbfeld" => "farbfeld",
        "avif" => "AVIF",
        "qoi" => "QOI",
        other => other,
    }
}

fn map_image_error(format: &'static str, e: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match e {
        E::Decoding(d) => {
            // The Display of `DecodingError` repeats the format ("Format error decoding Png: ..."):
            // keep only the underlying cause when there is one.
            let detail = match std::error::Error::source(&d) {
                Some(src) => src.to_string(),
                None => d.to_string(),
            };
            ImageError::Corrupt {
                format,
                detail: eof_hint(detail),
            }
        }
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Corrupt {
            format,
            detail: "unexpected end of data (file truncated?)".into(),
        },
        E::IoError(io) => ImageError::Corrupt {
            format,
            detail: eof_hint(io.to_string()),
        },
        E::Unsupported(u) => ImageError::UnsupportedFeature {
            format,
            detail: u.to_string(),
        },
        E::Limits(l) => ImageError::Corrupt {
            format,
            detail: format!("declared size exceeds limits: {l}"),
        },
        E::Parameter(p) => ImageError::Corrupt {
            format,
            detail: p.to_string(),
        },
        E::Encoding(x) => ImageError::Corrupt {
            format,
            detail: x.to_string(),
        },
    }
}

fn eof_hint(detail: String) -> String {
    let lower = detail.to_ascii_lowercase();
    if (lower.contains("eof") || lower.contains("end of file") || lower.contains("unexpected end"))
        && !lower.contains("truncated")
    {
        format!("{detail} (file truncated?)")
    } else {
        detail
    }
}

// ---------------------------------------------------------------------------------------------
// JPEG marker walk

struct JpegInfo {
    width: u32,
    height: u32,
    orientation: Orientation,
}

/// Walks the JPEG marker segments: frame size (first SOFn), EXIF orientation (first APP1
/// "Exif"), and with `full` that the file is complete, i.e. the end-of-image marker is reached
/// through well-formed segments and entropy-coded data. Data after EOI is allowed.
///
/// Fast path: a file that ends with `FF D9` and whose headers up to the first scan are intact
/// is complete (`FF D9` cannot occur inside entropy-coded data, which byte-stuffs `FF`, and a
/// truncation inside a header segment is caught by the segment lengths).
fn scan_jpeg(b: &[u8], full: bool) -> Result<JpegInfo, String> {
    const TRUNCATED: &str = "missing end-of-image marker (file truncated?)";
    let n = b.len();
    if n < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("missing start-of-image marker".into());
    }
    let ends_with_eoi = b[n - 2] == 0xFF && b[n - 1] == 0xD9;
    let mut info = JpegInfo {
        width: 0,
        height: 0,
        orientation: Orientation::NoTransforms,
    };
    let mut have_sof = false;
    let mut have_exif = false;
    let mut pos = 2;
    loop {
        // Next marker. Stray bytes between segments are skipped (libjpeg tolerates them too).
        match b[pos.min(n)..].iter().position(|&x| x == 0xFF) {
            Some(i) => pos += i,
            None => return Err(TRUNCATED.into()),
        }
        while pos < n && b[pos] == 0xFF {
            pos += 1;
        }
        if pos >= n {
            return Err(TRUNCATED.into());
        }
        let marker = b[pos];
        pos += 1;
        match marker {
            0xD9 => break,
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            0xD8 => return Err("unexpected second start-of-image marker".into()),
            _ => {}
        }
        if pos + 2 > n {
            return Err(TRUNCATED.into());
        }
        let len = u16::from_be_bytes([b[pos], b[pos + 1]]) as usize;
        if len < 2 {
            return Err(format!("invalid length {len} of segment FF{marker:02X}"));
        }
        let end = pos + len;
        if end > n {
            return Err(format!(
                "segment FF{marker:02X} runs past the end of the file (file truncated?)"
            ));
        }
        let body = &b[pos + 2..end];
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && !have_sof {
            if body.len() < 6 {
                return Err("frame header (SOF) too short".into());
            }
            info.height = u16::from_be_bytes([body[1], body[2]]) as u32;
            info.width = u16::from_be_bytes([body[3], body[4]]) as u32;
            have_sof = true;
        } else if marker == 0xE1 && !have_exif && body.starts_with(b"Exif\0\0") {
            have_exif = true;
            info.orientation = Orientation::from_exif_chunk(&body[6..]).unwrap_or(Orientation::NoTransforms);
        }
        pos = end;
        if marker == 0xDA {
            if !have_sof {
                return Err("scan before frame header (no SOF marker)".into());
            }
            if !full || ends_with_eoi {
                return Ok(info);
            }
            // Skip the entropy-coded data: up to the first FF not followed by 00 (stuffing),
            // D0..D7 (restart markers) or FF (fill).
            loop {
                match b[pos..].iter().position(|&x| x == 0xFF) {
                    Some(i) => pos += i,
                    None => return Err(TRUNCATED.into()),
                }
                match b.get(pos + 1) {
                    None => return Err(TRUNCATED.into()),
                    Some(0x00 | 0xD0..=0xD7) => pos += 2,
                    Some(0xFF) => pos += 1,
                    Some(_) => break,
                }
            }
        }
    }
    // Reached EOI.
    if !have_sof {
        return Err("no frame header (SOF marker) before end of image".into());
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------------
// Crop + resize

fn square_from_rgb(rgb: &[u8], w: u32, h: u32, size: u32, crop: Crop, filter: Filter, out: &mut [u8]) {
    assert_eq!(out.len(), out_len(size), "output buffer must be size*size*3 bytes");
    if size == 0 {
        return;
    }
    let src = fr::images::ImageRef::new(w, h, rgb, fr::PixelType::U8x3).expect("RGB buffer matches its dimensions");
    let alg = fr::ResizeAlg::Convolution(filter.into());
    let mut dst = fr::images::Image::from_slice_u8(size, size, out, fr::PixelType::U8x3).expect("output size checked");
    RESIZER.with(|r| {
        let mut resizer = r.borrow_mut();
        let side = w.min(h);
        if crop == Crop::Center || w == h {
            // The crop box is a resampling window over the whole image (PIL's
            // `resize(size, box=...)`): taps near its border read the pixels just outside it
            // instead of clamping at an artificial edge, like torchvision's
            // `Resize(size)` + `CenterCrop(size)` on the full image.
            let (left, top) = ((w - side) / 2, (h - side) / 2);
            let opts = fr::ResizeOptions::new()
                .resize_alg(alg)
                .crop(left as f64, top as f64, side as f64, side as f64);
            resizer.resize(&src, &mut dst, &opts).expect("pixel types match");
        } else {
            // Letterbox: the longer side becomes `size`, the shorter one is scaled (rounded,
            // at least 1 px) and centred between black bars. Resize-then-pad, so no black
            // bleeds into the content edges.
            let long = w.max(h) as u64;
            let short = ((side as u64 * size as u64 * 2 + long) / (2 * long)).clamp(1, size as u64) as u32;
            let (tw, th) = if w >= h { (size, short) } else { (short, size) };
            let (left, top) = ((size - tw) / 2, (size - th) / 2);
            dst.buffer_mut().fill(0);
            let mut view = fr::images::CroppedImageMut::new(&mut dst, left, top, tw, th).expect("box inside output");
            let opts = fr::ResizeOptions::new().resize_alg(alg);
            resizer.resize(&src, &mut view, &opts).expect("pixel types match");
        }
    });
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageEncoder, Rgb, RgbImage};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn jpeg(img: &RgbImage, quality: u8, exif: Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// Big-endian TIFF/EXIF block holding only an Orientation tag.
    fn exif_orientation(value: u16) -> Vec<u8> {
        let mut e = b"MM\0\x2a".to_vec();
        e.extend_from_slice(&8u32.to_be_bytes()); // IFD0 offset
        e.extend_from_slice(&1u16.to_be_bytes()); // one entry
        e.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        e.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        e.extend_from_slice(&1u32.to_be_bytes()); // count
        e.extend_from_slice(&value.to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        e
    }

    /// 16x12 test card: 4x4 blocks of distinct saturated colours (survive JPEG/GIF).
    fn card() -> RgbImage {
        const PALETTE: [[u8; 3]; 6] = [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [0, 255, 255],
            [255, 0, 255],
        ];
        RgbImage::from_fn(16, 12, |x, y| Rgb(PALETTE[((x / 4 + y / 4 * 4) % 6) as usize]))
    }

    fn px(d: &Decoded, x: u32, y: u32) -> [u8; 3] {
        let i = (y * d.width + x) as usize * 3;
        [d.rgb[i], d.rgb[i + 1], d.rgb[i + 2]]
    }

    fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
        a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= tol)
    }

    #[test]
    fn every_format_decodes() {
        let card = card();
        let dy = DynamicImage::ImageRgb8(card.clone());
        let cases: [(ImageFormat, &str, u8); 5] = [
            (ImageFormat::Png, "png", 0),
            (ImageFormat::Bmp, "bmp", 0),
            (ImageFormat::Tiff, "tiff", 0),
            (ImageFormat::WebP, "webp", 0), // lossless encoder
            (ImageFormat::Gif, "gif", 8),   // palette quantisation
        ];
        for (fmt, key, tol) in cases {
            let bytes = encode(&dy, fmt);
            let d = decode(&bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!((d.width, d.height, d.format), (16, 12, key));
            assert_eq!(d.rgb.len(), 16 * 12 * 3);
            for (x, y) in [(0, 0), (5, 1), (9, 6), (15, 11)] {
                assert!(
                    close(px(&d, x, y), card.get_pixel(x, y).0, tol),
                    "{key} at {x},{y}: {:?}",
                    px(&d, x, y)
                );
            }
            assert_eq!(probe(&bytes).unwrap(), (16, 12, key));
        }
        let bytes = jpeg(&card, 95, None);
        let d = decode(&bytes).unwrap();
        assert_eq!((d.width, d.height, d.format), (16, 12, "jpeg"));
        // Block centres are far enough from chroma-subsampling edges.
        assert!(close(px(&d, 1, 1), [255, 0, 0], 40), "{:?}", px(&d, 1, 1));
        assert!(close(px(&d, 9, 2), [0, 0, 255], 40), "{:?}", px(&d, 9, 2));
        assert_eq!(probe(&bytes).unwrap(), (16, 12, "jpeg"));
    }

    #[test]
    fn grayscale_becomes_rgb() {
        let gray = image::GrayImage::from_fn(6, 5, |x, _| image::Luma([x as u8 * 40]));
        let d = decode(&encode(&DynamicImage::ImageLuma8(gray.clone()), ImageFormat::Png)).unwrap();
        assert_eq!(px(&d, 3, 2), [120, 120, 120]);
        // Grayscale JPEG (single component).
        let flat = image::GrayImage::from_pixel(16, 16, image::Luma([77]));
        let d = decode(&encode(&DynamicImage::ImageLuma8(flat), ImageFormat::Jpeg)).unwrap();
        assert!(close(px(&d, 8, 8), [77, 77, 77], 1), "{:?}", px(&d, 8, 8));
        // Gray + alpha.
        let la = image::GrayAlphaImage::from_pixel(3, 3, image::LumaA([200, 10]));
        let d = decode(&encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png)).unwrap();
        assert_eq!(px(&d, 1, 1), [200, 200, 200]);
    }

    #[test]
    fn alpha_is_dropped_like_pil_convert_rgb() {
        let mut rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 1, image::Rgba([200, 100, 50, 128]));
        let d = decode(&encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png)).unwrap();
        assert_eq!(px(&d, 0, 0), [10, 20, 30]);
        assert_eq!(px(&d, 1, 1), [200, 100, 50]);
    }

    #[test]
    fn sixteen_bit_is_scaled_not_truncated() {
        let l16 = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, vec![65535u16, 32768, 257, 0]).unwrap();
        let d = decode(&encode(&DynamicImage::ImageLuma16(l16), ImageFormat::Png)).unwrap();
        assert_eq!(d.format, "png");
        assert_eq!(d.rgb, [255, 255, 255, 128, 128, 128, 1, 1, 1, 0, 0, 0]);
        let rgb16 = image::ImageBuffer::<Rgb<u16>, _>::from_raw(1, 1, vec![65535u16, 32768, 0]).unwrap();
        let d = decode(&encode(&DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)).unwrap();
        assert_eq!(d.rgb, [255, 128, 0]);
        let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(1, 1, vec![0u16, 65535, 32768, 0]).unwrap();
        let d = decode(&encode(&DynamicImage::ImageRgba16(rgba16), ImageFormat::Png)).unwrap();
        assert_eq!(d.rgb, [0, 255, 128]);
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 32x16 landscape: left half red, right half blue.
        let img = RgbImage::from_fn(32, 16, |x, _| if x < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        // 6 = rotate 90° clockwise for display: the left half ends up on top.
        let bytes = jpeg(&img, 95, Some(exif_orientation(6)));
        assert_eq!(probe(&bytes).unwrap(), (16, 32, "jpeg"));
        let d = decode(&bytes).unwrap();
        assert_eq!((d.width, d.height), (16, 32));
        assert!(close(px(&d, 8, 4), [255, 0, 0], 40), "top {:?}", px(&d, 8, 4));
        assert!(close(px(&d, 8, 28), [0, 0, 255], 40), "bottom {:?}", px(&d, 8, 28));
        // 8 = rotate 270° clockwise: the left half ends up at the bottom.
        let d = decode(&jpeg(&img, 95, Some(exif_orientation(8)))).unwrap();
        assert_eq!((d.width, d.height), (16, 32));
        assert!(close(px(&d, 8, 28), [255, 0, 0], 40), "bottom {:?}", px(&d, 8, 28));
        // PNG eXIf chunk, 3 = rotate 180°.
        let mut png = Vec::new();
        let mut enc = image::codecs::png::PngEncoder::new(&mut png);
        enc.set_exif_metadata(exif_orientation(3)).unwrap();
        enc.write_image(img.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let d = decode(&png).unwrap();
        assert_eq!((d.width, d.height), (32, 16));
        assert_eq!(px(&d, 0, 0), [0, 0, 255]);
        assert_eq!(px(&d, 31, 15), [255, 0, 0]);
    }

    /// Minimal baseline JPEG, 8x8, four components (Adobe APP14 transform 0 = CMYK), each a
    /// constant block: only DC coefficients, quantisation 1. `image` cannot write CMYK JPEGs.
    fn cmyk_jpeg(cmyk: [u8; 4]) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8];
        fn seg(j: &mut Vec<u8>, marker: u8, body: &[u8]) {
            j.extend_from_slice(&[0xFF, marker]);
            j.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
            j.extend_from_slice(body);
        }
        seg(&mut j, 0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00");
        let mut dqt = vec![0u8];
        dqt.extend_from_slice(&[1; 64]);
        seg(&mut j, 0xDB, &dqt);
        seg(
            &mut j,
            0xC0,
            &[8, 0, 8, 0, 8, 4, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 4, 0x11, 0],
        );
        // DC table 0: categories 0..=11, all 4-bit codes. AC table 0: only EOB, code "0".
        let mut dht = vec![0x00, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dht.extend(0..12u8);
        dht.extend_from_slice(&[0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00]);
        seg(&mut j, 0xC4, &dht);
        seg(&mut j, 0xDA, &[4, 1, 0x00, 2, 0x00, 3, 0x00, 4, 0x00, 0, 63, 0]);
        let mut bits: Vec<bool> = Vec::new();
        let mut put = |v: u32, n: u32| (0..n).rev().for_each(|i| bits.push(v >> i & 1 == 1));
        for c in cmyk {
            let dc = 8 * (c as i32 - 128); // DC of a constant block, orthonormal DCT
            let cat = if dc == 0 {
                0
            } else {
                32 - dc.unsigned_abs().leading_zeros()
            };
            put(cat, 4);
            put(
                if dc < 0 {
                    (dc - 1) as u32 & ((1 << cat) - 1)
                } else {
                    dc as u32
                },
                cat,
            );
            put(0, 1); // EOB
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        for byte in bits.chunks(8) {
            let v = byte.iter().fold(0u8, |a, &b| a << 1 | b as u8);
            j.push(v);
            if v == 0xFF {
                j.push(0);
            }
        }
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        // Adobe stores CMYK inverted: 255 = no ink. (C,M,Y,K) stored (255,0,0,255) = red.
        let d = decode(&cmyk_jpeg([255, 0, 0, 255])).unwrap();
        assert_eq!((d.width, d.height, d.format), (8, 8, "jpeg"));
        assert!(close(px(&d, 4, 4), [255, 0, 0], 2), "{:?}", px(&d, 4, 4));
        let d = decode(&cmyk_jpeg([255, 255, 255, 128])).unwrap();
        assert!(close(px(&d, 4, 4), [128, 128, 128], 2), "{:?}", px(&d, 4, 4));
    }

    #[test]
    fn truncated_files_are_errors() {
        let card = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 99])));
        let png = encode(&card, ImageFormat::Png);
        let jpg = jpeg(&card.to_rgb8(), 90, None);
        for (bytes, name) in [(&png, "PNG"), (&jpg, "JPEG")] {
            assert!(decode(bytes).is_ok());
            let n = bytes.len();
            for cut in [n - 1, n - 2, n - 20, n / 2, n / 3, 40, 20, 9] {
                if name == "PNG" && cut >= n - 12 {
                    continue; // only IEND missing: all pixel data present (tolerated, like PIL)
                }
                let err = decode(&bytes[..cut]).expect_err(&format!("{name} cut at {cut} of {n}"));
                let msg = err.to_string();
                assert!(
                    msg.starts_with(&format!("truncated or corrupt {name}: ")),
                    "{name} cut at {cut}: {msg}"
                );
            }
        }
        assert!(decode(&jpg[..jpg.len() - 2])
            .unwrap_err()
            .to_string()
            .contains("end-of-image"));
        // Other formats: a file cut in half fails too.
        for fmt in [ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::Tiff] {
            let bytes = encode(&card, fmt);
            let cut = &bytes[..bytes.len() / 2];
            assert!(decode(cut).is_err(), "{fmt:?} cut in half decoded");
        }
    }

    #[test]
    fn trailing_bytes_after_jpeg_eoi_are_fine() {
        let mut jpg = jpeg(&card(), 90, None);
        jpg.extend_from_slice(b"\0\0\0trailer");
        assert!(decode(&jpg).is_ok());
    }

    #[test]
    fn empty_and_garbage_inputs() {
        assert_eq!(decode(&[]).unwrap_err().to_string(), "empty file (0 bytes)");
        assert_eq!(probe(&[]).unwrap_err().to_string(), "empty file (0 bytes)");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..1000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let msg = decode(&random).unwrap_err().to_string();
        assert!(
            msg.starts_with("unsupported format (not an image: starts with "),
            "{msg}"
        );
        let msg = decode(b"<!DOCTYPE html><html>").unwrap_err().to_string();
        assert!(msg.contains("\"<!DOCTYPE html><\""), "{msg}");
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(decode(heic).unwrap_err().to_string().contains("HEIF"));
    }

    fn striped(w: u32, h: u32, inside: impl Fn(u32, u32) -> bool) -> Decoded {
        let img = RgbImage::from_fn(w, h, |x, y| {
            if inside(x, y) {
                Rgb([0, 255, 0])
            } else {
                Rgb([255, 0, 0])
            }
        });
        decoded_png(w, h, img.into_raw())
    }

    /// A decoded `w`x`h` PNG of these RGB bytes.
    fn decoded_png(w: u32, h: u32, rgb: Vec<u8>) -> Decoded {
        Decoded {
            width: w,
            height: h,
            format: "png",
            rgb,
        }
    }

    #[test]
    fn center_crop_takes_the_middle() {
        // Wide: 12x4 with the middle 4 columns green.
        let d = striped(12, 4, |x, _| (4..8).contains(&x));
        let out = to_square(&d, 4, Crop::Center, Filter::CatmullRom);
        assert!(out.chunks(3).all(|p| p == [0, 255, 0]), "{out:?}");
        // Tall, and downscaled: 20x60, red in the top and bottom 10 rows. Filter taps may read
        // a few pixels beyond the crop box (PIL `resize(box=..)` semantics), so the rows just
        // outside the middle 20 are green too.
        let d = striped(20, 60, |_, y| (10..50).contains(&y));
        for filter in [Filter::Bilinear, Filter::CatmullRom, Filter::Lanczos3] {
            let out = to_square(&d, 10, Crop::Center, filter);
            assert!(out.chunks(3).all(|p| p == [0, 255, 0]), "{filter:?}");
        }
    }

    #[test]
    fn letterbox_keeps_content_with_black_bars() {
        let d = decoded_png(8, 4, vec![255; 8 * 4 * 3]);
        let out = to_square(&d, 8, Crop::Letterbox, Filter::Bilinear);
        for y in 0..8 {
            let row = &out[y * 24..(y + 1) * 24];
            let want = if (2..6).contains(&y) { 255 } else { 0 };
            assert!(row.iter().all(|&v| v == want), "row {y}: {row:?}");
        }
        // Tall, downscaled: 10x40 → 16: content 4 px wide, columns 6..10.
        let d = decoded_png(10, 40, vec![200; 10 * 40 * 3]);
        let out = to_square(&d, 16, Crop::Letterbox, Filter::CatmullRom);
        for (i, p) in out.chunks(3).enumerate() {
            let x = i % 16;
            let want = if (6..10).contains(&x) { 200 } else { 0 };
            assert_eq!(p, [want; 3], "pixel {x},{}", i / 16);
        }
        // The centre stripe of a wide image survives letterboxing too.
        let d = striped(12, 4, |x, _| (4..8).contains(&x));
        let out = to_square(&d, 12, Crop::Letterbox, Filter::Bilinear);
        assert_eq!(&out[(5 * 12 + 6) * 3..(5 * 12 + 7) * 3], [0, 255, 0]);
        assert_eq!(&out[(5 * 12) * 3..(5 * 12 + 1) * 3], [255, 0, 0]);
        assert_eq!(&out[..3], [0, 0, 0]);
    }

    #[test]
    fn constant_image_stays_constant() {
        let c = [90u8, 140, 200];
        for (w, h) in [(37, 23), (23, 37), (5, 5), (300, 200)] {
            let d = decoded_png(w, h, c.repeat((w * h) as usize));
            for filter in [Filter::Bilinear, Filter::CatmullRom, Filter::Lanczos3] {
                for size in [1, 3, 16, 64] {
                    let out = to_square(&d, size, Crop::Center, filter);
                    assert_eq!(out.len(), (size * size * 3) as usize);
                    assert!(out.chunks(3).all(|p| p == c), "{w}x{h} → {size} {filter:?}");
                }
            }
        }
    }

    #[test]
    fn output_length_and_process_matches_decode_then_square() {
        let bytes = jpeg(&card(), 90, None);
        let d = decode(&bytes).unwrap();
        for size in [0, 1, 7, 16, 33] {
            for crop in [Crop::Center, Crop::Letterbox] {
                let a = to_square(&d, size, crop, Filter::CatmullRom);
                assert_eq!(a.len(), (size * size * 3) as usize);
                let (info, b) = process(&bytes, size, crop, Filter::CatmullRom).unwrap();
                assert_eq!((info.width, info.height, info.format), (16, 12, "jpeg"));
                assert!(info.rgb.is_empty());
                assert_eq!(a, b, "size {size} {crop:?}");
            }
        }
        // Same size and square: an exact copy.
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::from_fn(9, 9, |x, y| Rgb([x as u8, y as u8, 7]))),
            ImageFormat::Png,
        );
        let (_, out) = process(&png, 9, Crop::Center, Filter::Lanczos3).unwrap();
        assert_eq!(out, decode(&png).unwrap().rgb);
        assert!(process(&[], 8, Crop::Center, Filter::Bilinear).is_err());
    }
}

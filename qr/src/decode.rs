//! Finding and reading QR codes in images (PNG, JPEG) with `rqrr`.
//!
//! Photos are handled by converting to grayscale, bringing large images down to a size the
//! detector handles well, and retrying at other scales, inverted (light on dark) and at full
//! resolution when a pass reads nothing or leaves a symbol unread. The detector itself follows the finder patterns, so rotated and
//! slightly skewed codes read as they are. Several codes in one image are all returned.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage};

/// Images larger than this (longest side, pixels) are scaled down before the first pass.
pub const MAX_SIDE: u32 = 1600;

/// Why an image file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The file is not a PNG or JPEG image this tool can read.
    #[error("cannot decode image {path}: {reason} (expected a PNG or JPEG file)")]
    Image {
        /// The file.
        path: String,
        /// The image decoder's reason.
        reason: String,
    },
    /// No QR code was found in the image.
    #[error("no QR code found in {path}: expected at least one QR code with its three finder patterns and a light border")]
    NoCode {
        /// The file.
        path: String,
    },
    /// QR codes were found but none could be read.
    #[error("{count} QR code(s) found in {path} but none could be read ({reason}): the image may be blurred, cut or damaged")]
    Unreadable {
        /// The file.
        path: String,
        /// How many symbols were located.
        count: usize,
        /// The decoder's reason for the first one.
        reason: String,
    },
}

impl DecodeError {
    /// A short, stable identifier of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Read { .. } => "read",
            DecodeError::Image { .. } => "image",
            DecodeError::NoCode { .. } => "no_code",
            DecodeError::Unreadable { .. } => "unreadable",
        }
    }
}

/// What one image held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The text of each code read, in detection order, without repeats.
    pub texts: Vec<String>,
    /// Symbols that were located in the best pass but could not be read.
    pub unreadable: usize,
    /// The decoder's reason for the first unreadable symbol.
    pub first_failure: Option<String>,
}

/// One detection pass over a prepared grayscale image.
pub fn decode_once(gray: &GrayImage) -> Decoded {
    let mut prepared = rqrr::PreparedImage::prepare(gray.clone());
    let mut out = Decoded::default();
    for grid in prepared.detect_grids() {
        match grid.decode() {
            Ok((_, text)) => {
                if !out.texts.contains(&text) {
                    out.texts.push(text);
                }
            }
            Err(e) => {
                out.unreadable += 1;
                out.first_failure.get_or_insert_with(|| format!("{e:?}"));
            }
        }
    }
    out
}

/// Finds and reads every QR code in `img`, retrying at other scales and inverted when a pass
/// leaves symbols unread or finds none.
pub fn decode_image(img: &DynamicImage) -> Decoded {
    let full = img.to_luma8();
    let longest = full.width().max(full.height());
    let downscaled = longest > MAX_SIDE;
    let gray = if downscaled {
        scale(&full, MAX_SIDE as f32 / longest as f32)
    } else {
        full.clone()
    };
    let longest = gray.width().max(gray.height());
    let mut passes = vec![Pass::AsIs];
    if longest >= 200 {
        passes.push(Pass::Scale(0.5));
    }
    if longest <= 800 {
        passes.push(Pass::Scale(2.0));
    }
    passes.push(Pass::Invert);
    if downscaled {
        // A small code in a large photo may only be readable at full resolution.
        passes.push(Pass::Full);
    }
    let mut best = Decoded::default();
    for pass in passes {
        let result = match pass {
            Pass::AsIs => decode_once(&gray),
            Pass::Scale(f) => decode_once(&scale(&gray, f)),
            Pass::Full => decode_once(&full),
            Pass::Invert => {
                let mut inv = gray.clone();
                imageops::invert(&mut inv);
                decode_once(&inv)
            }
        };
        for t in result.texts {
            if !best.texts.contains(&t) {
                best.texts.push(t);
            }
        }
        if result.unreadable > 0 && best.first_failure.is_none() {
            best.first_failure = result.first_failure;
        }
        best.unreadable = if best.texts.is_empty() {
            best.unreadable.max(result.unreadable)
        } else {
            result.unreadable
        };
        if !best.texts.is_empty() && result.unreadable == 0 {
            break;
        }
    }
    if !best.texts.is_empty() && best.unreadable == 0 {
        best.first_failure = None;
    }
    best
}

/// One detection attempt on a transformed image.
#[derive(Clone, Copy)]
enum Pass {
    AsIs,
    Scale(f32),
    Invert,
    Full,
}

fn scale(g: &GrayImage, factor: f32) -> GrayImage {
    let w = ((g.width() as f32 * factor).round() as u32).max(1);
    let h = ((g.height() as f32 * factor).round() as u32).max(1);
    let filter = if factor < 1.0 {
        FilterType::Triangle
    } else {
        FilterType::Nearest
    };
    imageops::resize(g, w, h, filter)
}

/// Reads an image file (PNG or JPEG, recognised by content) and returns the codes in it; an
/// image with no readable code is an error. `unreadable` counts symbols found but not read
/// next to the ones that were.
pub fn decode_file(path: &Path) -> Result<Decoded, DecodeError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| DecodeError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| DecodeError::Image {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let decoded = decode_image(&img);
    if !decoded.texts.is_empty() {
        return Ok(decoded);
    }
    if decoded.unreadable > 0 {
        return Err(DecodeError::Unreadable {
            path: shown,
            count: decoded.unreadable,
            reason: decoded.first_failure.unwrap_or_default(),
        });
    }
    Err(DecodeError::NoCode { path: shown })
}

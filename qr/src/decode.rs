//! Finding and reading QR codes in images (PNG, JPEG) with `rqrr`.
//!
//! Photos are handled by converting to grayscale, bringing large images down to a size the
//! detector handles well, and retrying at other scales, inverted (light on dark) and at full
//! resolution when a pass reads nothing or leaves a symbol unread. The detector itself follows the finder patterns, so rotated and
//! slightly skewed codes read as they are. Several codes in one image are all returned: each
//! code read is erased and the image searched again, so codes side by side on a label sheet
//! do not hide each other.

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

/// At most this many detection rounds in one pass (each round erases what it read).
const MAX_ROUNDS: usize = 24;

/// One detection pass over a grayscale image.
///
/// The detector groups finder patterns three by three; when codes stand side by side (a sheet
/// of labels) it can group patterns of neighbouring codes and miss them. So every code read
/// is erased (painted white) and the image searched again, until a round reads nothing new.
pub fn decode_once(gray: &GrayImage) -> Decoded {
    let mut work: Option<GrayImage> = None;
    let mut out = Decoded::default();
    for _ in 0..MAX_ROUNDS {
        let image = work.as_ref().unwrap_or(gray);
        let mut prepared = rqrr::PreparedImage::prepare(image.clone());
        let mut read = Vec::new();
        let mut unreadable = 0;
        let mut failure = None;
        for grid in prepared.detect_grids() {
            match grid.decode() {
                Ok((_, text)) => read.push((text, grid.bounds)),
                Err(e) => {
                    unreadable += 1;
                    failure.get_or_insert_with(|| format!("{e:?}"));
                }
            }
        }
        out.unreadable = unreadable;
        out.first_failure = failure;
        let mut new = false;
        let canvas = work.get_or_insert_with(|| gray.clone());
        for (text, bounds) in read {
            erase(canvas, &bounds);
            if !out.texts.contains(&text) {
                out.texts.push(text);
                new = true;
            }
        }
        if !new {
            break;
        }
    }
    out
}

/// Paints white the quadrilateral `q` (corners in order), grown by a tenth around its centre
/// to take the quiet zone's edge along.
fn erase(img: &mut GrayImage, q: &[rqrr::Point; 4]) {
    let cx = q.iter().map(|p| p.x as f64).sum::<f64>() / 4.0;
    let cy = q.iter().map(|p| p.y as f64).sum::<f64>() / 4.0;
    let grown: Vec<(f64, f64)> = q
        .iter()
        .map(|p| (cx + (p.x as f64 - cx) * 1.1, cy + (p.y as f64 - cy) * 1.1))
        .collect();
    let clamp = |v: f64, max: u32| v.clamp(0.0, max.saturating_sub(1) as f64) as u32;
    let x0 = clamp(
        grown.iter().map(|p| p.0).fold(f64::MAX, f64::min),
        img.width(),
    );
    let x1 = clamp(
        grown.iter().map(|p| p.0).fold(f64::MIN, f64::max),
        img.width(),
    );
    let y0 = clamp(
        grown.iter().map(|p| p.1).fold(f64::MAX, f64::min),
        img.height(),
    );
    let y1 = clamp(
        grown.iter().map(|p| p.1).fold(f64::MIN, f64::max),
        img.height(),
    );
    // Inside a convex polygon: on the same side of every edge.
    let side = |i: usize, x: f64, y: f64| {
        let (ax, ay) = grown[i];
        let (bx, by) = grown[(i + 1) % 4];
        (bx - ax) * (y - ay) - (by - ay) * (x - ax)
    };
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let s: Vec<f64> = (0..4).map(|i| side(i, fx, fy)).collect();
            if s.iter().all(|v| *v >= 0.0) || s.iter().all(|v| *v <= 0.0) {
                img.put_pixel(x, y, image::Luma([255]));
            }
        }
    }
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

//! Drawing a code: the module matrix (via the `qrcode` crate, error-correction level M), then
//! PNG, SVG or a terminal drawing, always with the 4-module quiet zone QR readers need.

use std::fmt::Write as _;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{GrayImage, ImageEncoder, Luma};
use qrcode::{EcLevel, QrCode};

/// Width of the light border around a code, in modules (ISO/IEC 18004 asks for 4).
pub const QUIET_ZONE: usize = 4;

/// Default size of one module in PNG and SVG output, in pixels.
pub const DEFAULT_MODULE_PX: u32 = 8;

/// Why a code could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The text does not fit in a QR code at error-correction level M.
    #[error(
        "cannot encode {length} characters in a QR code at error-correction level M: {reason}"
    )]
    Encode {
        /// Length of the text in bytes.
        length: usize,
        /// The encoder's reason.
        reason: String,
    },
    /// The PNG encoder failed.
    #[error("cannot write PNG: {0}")]
    Png(String),
}

impl RenderError {
    /// A short, stable identifier of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::Encode { .. } => "encode",
            RenderError::Png(_) => "png",
        }
    }
}

/// The modules of a QR code, without quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    width: usize,
    dark: Vec<bool>,
}

impl Matrix {
    /// Encodes `text` at error-correction level M (15 % of the code may be damaged).
    ///
    /// An uppercase TR005 code uses the QR alphanumeric mode and fits in version 3 or 4.
    pub fn encode(text: &str) -> Result<Matrix, RenderError> {
        let code =
            QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(|e| {
                RenderError::Encode {
                    length: text.len(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Matrix {
            width: code.width(),
            dark: code
                .to_colors()
                .into_iter()
                .map(|c| c == qrcode::Color::Dark)
                .collect(),
        })
    }

    /// Number of modules on a side (21 for version 1, 4 more per version).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of modules on a side including the quiet zone on both sides.
    pub fn width_with_quiet_zone(&self) -> usize {
        self.width + 2 * QUIET_ZONE
    }

    /// Whether module (`x`, `y`) is dark; coordinates outside the symbol are light.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.width && self.dark[y * self.width + x]
    }

    /// The module size in pixels that fits the code with its quiet zone in `size_px` pixels
    /// (at least 1).
    pub fn module_px_for(&self, size_px: u32) -> u32 {
        (size_px / self.width_with_quiet_zone() as u32).max(1)
    }

    /// Draws the code with its quiet zone into `img` at (`left`, `top`), `module_px` pixels per
    /// module. `img` must be white and large enough.
    pub fn draw_into(&self, img: &mut GrayImage, left: u32, top: u32, module_px: u32) {
        let q = QUIET_ZONE as u32 * module_px;
        for y in 0..self.width {
            for x in 0..self.width {
                if !self.is_dark(x, y) {
                    continue;
                }
                let px = left + q + x as u32 * module_px;
                let py = top + q + y as u32 * module_px;
                for dy in 0..module_px {
                    for dx in 0..module_px {
                        img.put_pixel(px + dx, py + dy, Luma([0]));
                    }
                }
            }
        }
    }

    /// The code as a grayscale image with its quiet zone, `module_px` pixels per module.
    pub fn to_image(&self, module_px: u32) -> GrayImage {
        let side = self.width_with_quiet_zone() as u32 * module_px;
        let mut img = GrayImage::from_pixel(side, side, Luma([255]));
        self.draw_into(&mut img, 0, 0, module_px);
        img
    }

    /// The dark modules as an SVG path (in module units, quiet zone included), one sub-path per
    /// horizontal run.
    pub fn svg_path(&self, offset: usize) -> String {
        let mut d = String::new();
        for y in 0..self.width {
            let mut x = 0;
            while x < self.width {
                if !self.is_dark(x, y) {
                    x += 1;
                    continue;
                }
                let start = x;
                while x < self.width && self.is_dark(x, y) {
                    x += 1;
                }
                let _ = write!(
                    d,
                    "M{},{}h{}v1h-{}z",
                    start + offset,
                    y + offset,
                    x - start,
                    x - start
                );
            }
        }
        d
    }
}

/// Encodes a grayscale image as PNG (fast compression: labels are made by the thousand).
pub fn encode_png(img: &GrayImage) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(4096);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| RenderError::Png(e.to_string()))?;
    Ok(out)
}

/// `text` as a PNG, at most `size_px` pixels wide (whole pixels per module, at least 1), or
/// [`DEFAULT_MODULE_PX`] per module when `size_px` is `None`.
pub fn png(text: &str, size_px: Option<u32>) -> Result<Vec<u8>, RenderError> {
    let m = Matrix::encode(text)?;
    let module_px = size_px.map_or(DEFAULT_MODULE_PX, |s| m.module_px_for(s));
    encode_png(&m.to_image(module_px))
}

/// `text` as a standalone SVG document, `size_px` pixels wide (default: [`DEFAULT_MODULE_PX`]
/// per module). Crisp edges; scales to any size without loss.
pub fn svg(text: &str, size_px: Option<u32>) -> Result<String, RenderError> {
    let m = Matrix::encode(text)?;
    let n = m.width_with_quiet_zone();
    let size = size_px.unwrap_or(n as u32 * DEFAULT_MODULE_PX);
    Ok(format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{size}\" height=\"{size}\" ",
            "viewBox=\"0 0 {n} {n}\" shape-rendering=\"crispEdges\">\n",
            "<title>{title}</title>\n",
            "<rect width=\"{n}\" height=\"{n}\" fill=\"#fff\"/>\n",
            "<path fill=\"#000\" d=\"{d}\"/>\n",
            "</svg>\n"
        ),
        size = size,
        n = n,
        title = xml_escape(text),
        d = m.svg_path(QUIET_ZONE),
    ))
}

/// `text` drawn for a terminal: each character cell shows two modules with the upper-half block
/// `▀`, and explicit ANSI colours (black on bright white) so the code scans on dark and light
/// terminal themes alike. Quiet zone included.
pub fn ansi(text: &str) -> Result<String, RenderError> {
    const WHITE: u8 = 97;
    const BLACK: u8 = 30;
    let m = Matrix::encode(text)?;
    let n = m.width_with_quiet_zone();
    let q = QUIET_ZONE;
    let dark = |x: usize, y: usize| x >= q && y >= q && m.is_dark(x - q, y - q);
    let mut out = String::new();
    for row in (0..n).step_by(2) {
        for x in 0..n {
            let top = if dark(x, row) { BLACK } else { WHITE };
            let bottom = if row + 1 < n && dark(x, row + 1) {
                BLACK
            } else {
                WHITE
            };
            // Foreground draws the upper half, background (colour + 10) the lower half.
            let _ = write!(out, "\x1b[{top};{}m▀", bottom + 10);
        }
        out.push_str("\x1b[0m\n");
    }
    Ok(out)
}

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

//! Device labels from a join-server manifest: one SVG or PNG per device with its TR005 code
//! (with CheckSum) and its DevEUI printed beneath, plus an `index.html` sheet for A4 paper.
//!
//! The manifest is the CSV of `joinserver devices import`:
//! `dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token`. Only `dev_eui`,
//! `join_eui` and `owner_token` are read; the keys are never read into a label.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};

use crate::error::{Field, QrError};
use crate::font;
use crate::render::{self, Matrix, RenderError, QUIET_ZONE};
use crate::{DevEui, DeviceCode, ExtensionValue, JoinEui, ProfileId};

/// Pixels per module in PNG labels (and SVG label units).
pub const LABEL_MODULE_PX: u32 = 6;
/// Scale of the 5×7 font under PNG labels.
const TEXT_SCALE: u32 = 2;
/// Height of a text line in label pixels.
const LINE_H: u32 = (font::GLYPH_H + 3) * TEXT_SCALE;
const MARGIN: u32 = 12;

/// Why labels could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A file could not be read or written.
    #[error("{action} {path}: {reason}")]
    Io {
        /// "cannot read", "cannot write" or "cannot create".
        action: &'static str,
        /// The file or directory.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The manifest has no header line.
    #[error("manifest is empty: expected a header line with dev_eui and join_eui")]
    EmptyManifest,
    /// A required column is missing from the header.
    #[error("manifest line 1: expected a {column} column, found header {found:?}")]
    MissingColumn {
        /// The missing column.
        column: &'static str,
        /// The header line.
        found: String,
    },
    /// A row has the wrong number of fields.
    #[error("manifest line {line}: expected {expected} comma-separated fields, found {found}")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// Number of header columns.
        expected: usize,
        /// Number of fields in the row.
        found: usize,
    },
    /// A field of a row is invalid.
    #[error("manifest line {line}, column {column}: {reason}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// The column name.
        column: &'static str,
        /// What is wrong with it (shown in full in the message, so not an error `source`).
        reason: QrError,
    },
    /// Two rows have the same DevEUI (their labels would overwrite each other).
    #[error("manifest line {line}: DevEUI {dev_eui} repeated, expected each device once (first on line {first})")]
    DuplicateDevEui {
        /// 1-based line number of the repeat.
        line: usize,
        /// 1-based line number of the first occurrence.
        first: usize,
        /// The DevEUI.
        dev_eui: DevEui,
    },
    /// A label could not be drawn.
    #[error("DevEUI {dev_eui}: {reason}")]
    Render {
        /// The device.
        dev_eui: DevEui,
        /// The reason (shown in full in the message).
        reason: RenderError,
    },
}

impl LabelError {
    /// A short, stable identifier of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            LabelError::Io { .. } => "io",
            LabelError::EmptyManifest => "empty_manifest",
            LabelError::MissingColumn { .. } => "missing_column",
            LabelError::FieldCount { .. } => "field_count",
            LabelError::Field { .. } => "bad_field",
            LabelError::DuplicateDevEui { .. } => "duplicate_dev_eui",
            LabelError::Render { .. } => "render",
        }
    }
}

/// The label format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelFormat {
    /// Scalable vector labels (text as SVG `<text>`).
    Svg,
    /// Raster labels, 6 pixels per module, text in a built-in bitmap font.
    Png,
}

impl LabelFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            LabelFormat::Svg => "svg",
            LabelFormat::Png => "png",
        }
    }
}

/// The part of a manifest row a label uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDevice {
    /// 1-based line number in the manifest.
    pub line: usize,
    /// The DevEUI.
    pub dev_eui: DevEui,
    /// The JoinEUI.
    pub join_eui: JoinEui,
    /// The OwnerToken, when the row has one.
    pub owner_token: Option<ExtensionValue>,
}

impl ManifestDevice {
    /// The device's TR005 code with the given ProfileID.
    pub fn code(&self, profile_id: ProfileId) -> DeviceCode {
        let mut code = DeviceCode::new(self.join_eui, self.dev_eui, profile_id);
        code.owner_token = self.owner_token.clone();
        code
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(s)
}

fn hex_field<T>(
    line: usize,
    column: &'static str,
    field: Field,
    text: &str,
    make: fn(u64) -> T,
) -> Result<T, LabelError> {
    let err = |reason| LabelError::Field {
        line,
        column,
        reason,
    };
    let mut v = 0u64;
    for (i, c) in text.chars().enumerate() {
        let d = c.to_digit(16).ok_or_else(|| {
            err(QrError::HexDigit {
                field,
                position: i,
                found: c,
            })
        })?;
        v = (v << 4) | u64::from(d);
        if i >= 16 {
            break;
        }
    }
    if text.len() != 16 {
        return Err(err(QrError::hex_length(field, 0, 16, text)));
    }
    Ok(make(v))
}

/// Reads the devices of a manifest. Blank lines are skipped; DevEUIs must be unique.
pub fn read_manifest(text: &str) -> Result<Vec<ManifestDevice>, LabelError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    let header = loop {
        match lines.next() {
            None => return Err(LabelError::EmptyManifest),
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l,
        }
    };
    let columns: Vec<&str> = header.split(',').map(unquote).collect();
    let find = |name: &'static str| columns.iter().position(|c| *c == name);
    let missing = |column| LabelError::MissingColumn {
        column,
        found: header.to_owned(),
    };
    let dev_col = find("dev_eui").ok_or_else(|| missing("dev_eui"))?;
    let join_col = find("join_eui").ok_or_else(|| missing("join_eui"))?;
    let owner_col = find("owner_token");
    let mut devices = Vec::new();
    let mut seen: HashMap<DevEui, usize> = HashMap::new();
    for (i, raw) in lines {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split(',').map(unquote).collect();
        // Trailing optional columns may be left out entirely.
        let required = dev_col.max(join_col) + 1;
        if fields.len() > columns.len() || fields.len() < required {
            return Err(LabelError::FieldCount {
                line,
                expected: columns.len(),
                found: fields.len(),
            });
        }
        let dev_eui = hex_field(line, "dev_eui", Field::DevEui, fields[dev_col], DevEui::new)?;
        let join_eui = hex_field(
            line,
            "join_eui",
            Field::JoinEui,
            fields[join_col],
            JoinEui::new,
        )?;
        let owner_token = match owner_col.and_then(|c| fields.get(c)) {
            Some(t) if !t.is_empty() => {
                Some(ExtensionValue::new(Field::OwnerToken, t).map_err(|reason| {
                    LabelError::Field {
                        line,
                        column: "owner_token",
                        reason,
                    }
                })?)
            }
            _ => None,
        };
        if let Some(&first) = seen.get(&dev_eui) {
            return Err(LabelError::DuplicateDevEui {
                line,
                first,
                dev_eui,
            });
        }
        seen.insert(dev_eui, line);
        devices.push(ManifestDevice {
            line,
            dev_eui,
            join_eui,
            owner_token,
        });
    }
    Ok(devices)
}

/// Geometry shared by the SVG and PNG labels, in label pixels.
struct Layout {
    matrix: Matrix,
    width: u32,
    height: u32,
    qr_left: u32,
    text_top: u32,
}

fn layout(text: &str) -> Result<Layout, RenderError> {
    let matrix = Matrix::encode(text)?;
    let qr_side = matrix.width_with_quiet_zone() as u32 * LABEL_MODULE_PX;
    let text_w = font::text_width("0000000000000000", TEXT_SCALE) + 2 * MARGIN;
    let width = qr_side.max(text_w);
    Ok(Layout {
        qr_left: (width - qr_side) / 2,
        text_top: qr_side,
        height: qr_side + 2 * LINE_H + MARGIN,
        width,
        matrix,
    })
}

/// An SVG label: the code, then "DevEUI" and the DevEUI in monospace beneath it.
pub fn label_svg(code: &DeviceCode) -> Result<String, RenderError> {
    let text = code.to_string();
    let l = layout(&text)?;
    let dev = code.dev_eui.to_string();
    let cx = l.width / 2;
    let mut s = String::with_capacity(4096);
    let _ = write!(
        s,
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n",
            "<title>{title}</title>\n",
            "<rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>\n",
            "<path fill=\"#000\" shape-rendering=\"crispEdges\" transform=\"translate({x} 0) scale({m})\" d=\"{d}\"/>\n",
            "<text x=\"{cx}\" y=\"{y1}\" font-family=\"monospace\" font-size=\"{fs}\" text-anchor=\"middle\">DevEUI</text>\n",
            "<text x=\"{cx}\" y=\"{y2}\" font-family=\"monospace\" font-size=\"{fs}\" font-weight=\"bold\" text-anchor=\"middle\">{dev}</text>\n",
            "</svg>\n"
        ),
        w = l.width,
        h = l.height,
        title = render::xml_escape(&text),
        x = l.qr_left,
        m = LABEL_MODULE_PX,
        d = l.matrix.svg_path(QUIET_ZONE),
        cx = cx,
        y1 = l.text_top + LINE_H - 4,
        y2 = l.text_top + 2 * LINE_H - 4,
        fs = font::GLYPH_H * TEXT_SCALE + 2,
        dev = dev,
    );
    Ok(s)
}

/// A PNG label image: the code, then "DevEUI" and the DevEUI beneath it.
pub fn label_image(code: &DeviceCode) -> Result<GrayImage, RenderError> {
    let l = layout(&code.to_string())?;
    let mut img = GrayImage::from_pixel(l.width, l.height, Luma([255]));
    l.matrix.draw_into(&mut img, l.qr_left, 0, LABEL_MODULE_PX);
    let dev = code.dev_eui.to_string();
    for (i, line) in ["DevEUI", dev.as_str()].iter().enumerate() {
        let w = font::text_width(line, TEXT_SCALE);
        let top = l.text_top + i as u32 * LINE_H;
        font::draw_text(&mut img, line, (l.width - w) / 2, top, TEXT_SCALE);
    }
    Ok(img)
}

/// A PNG label, encoded.
pub fn label_png(code: &DeviceCode) -> Result<Vec<u8>, RenderError> {
    render::encode_png(&label_image(code)?)
}

/// The file name of a device's label.
pub fn label_file_name(dev_eui: DevEui, format: LabelFormat) -> String {
    format!("{dev_eui}.{}", format.extension())
}

/// An HTML sheet showing every label, laid out to print on A4 paper (4 labels across, 45 mm
/// wide, never split across pages).
pub fn index_html(devices: &[ManifestDevice], format: LabelFormat) -> String {
    let mut s = String::with_capacity(200 + devices.len() * 120);
    s.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>Device labels</title>\n<style>\n",
        "@page { size: A4 portrait; margin: 10mm; }\n",
        "html, body { margin: 0; background: #fff; }\n",
        ".sheet { display: grid; grid-template-columns: repeat(4, 45mm); gap: 4mm 3.3mm; width: 190mm; }\n",
        ".label { margin: 0; break-inside: avoid; page-break-inside: avoid; text-align: center; }\n",
        ".label img { width: 45mm; height: auto; display: block; }\n",
        "</style>\n</head>\n<body>\n<main class=\"sheet\">\n",
    ));
    for d in devices {
        let name = label_file_name(d.dev_eui, format);
        let _ = writeln!(
            s,
            "<figure class=\"label\"><img src=\"{name}\" alt=\"DevEUI {}\"></figure>",
            d.dev_eui
        );
    }
    s.push_str("</main>\n</body>\n</html>\n");
    s
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LabelError> {
    std::fs::write(path, bytes).map_err(|e| LabelError::Io {
        action: "cannot write",
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn write_one(
    dir: &Path,
    d: &ManifestDevice,
    profile_id: ProfileId,
    format: LabelFormat,
) -> Result<(), LabelError> {
    let code = d.code(profile_id);
    let render_err = |reason| LabelError::Render {
        dev_eui: d.dev_eui,
        reason,
    };
    let bytes = match format {
        LabelFormat::Svg => label_svg(&code).map_err(render_err)?.into_bytes(),
        LabelFormat::Png => label_png(&code).map_err(render_err)?,
    };
    write_file(&dir.join(label_file_name(d.dev_eui, format)), &bytes)
}

/// Writes one label per device and `index.html` into `dir` (created if needed), on `threads`
/// threads. Returns the path of `index.html`.
pub fn write_labels(
    devices: &[ManifestDevice],
    profile_id: ProfileId,
    format: LabelFormat,
    dir: &Path,
    threads: usize,
) -> Result<PathBuf, LabelError> {
    std::fs::create_dir_all(dir).map_err(|e| LabelError::Io {
        action: "cannot create",
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let threads = threads.clamp(1, 64);
    let chunk = devices.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .try_for_each(|d| write_one(dir, d, profile_id, format))
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    let index = dir.join("index.html");
    write_file(&index, index_html(devices, format).as_bytes())?;
    Ok(index)
}

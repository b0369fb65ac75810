//! A strict, zero-copy JSON reader for the PUSH_DATA body, the one hot path of the codec.
//!
//! It accepts exactly RFC 8259 JSON (the body is checked to be UTF-8 beforehand), reads the
//! `rxpk` objects field by field without building intermediate values, and hands the rarely
//! sent parts (`stat`, `rsig`, strings with escapes) to `serde_json` on their exact span.
//! Numbers are validated against the JSON grammar, then converted with the standard library
//! (correctly rounded floats, range-checked integers). Duplicate keys are refused, as
//! serde-derived structs do. Nesting is limited to [`MAX_DEPTH`].

use std::borrow::Cow;

use super::{CodingRate, DataRate, GwmpError, Modulation, RSig, RxPkIn, Stat};

/// Deepest nesting of arrays/objects accepted in skipped values.
pub(super) const MAX_DEPTH: usize = 64;

pub(super) struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

fn malformed(offset: usize, reason: &'static str) -> GwmpError {
    GwmpError::Malformed { offset, reason }
}

impl<'a> Reader<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Self {
            s,
            b: s.as_bytes(),
            i: 0,
        }
    }

    fn err(&self, reason: &'static str) -> GwmpError {
        malformed(self.i, reason)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8, reason: &'static str) -> Result<(), GwmpError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), GwmpError> {
        if self
            .b
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(word.as_bytes()))
        {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// A string; borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, GwmpError> {
        self.eat(b'"', "expected a string")?;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Fast scan to the next byte that needs a decision.
            let rest = self.b.get(self.i..).unwrap_or_default();
            self.i += rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(rest.len());
            match self.b.get(self.i) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    // Skip the escaped character; serde_json validates the escape below.
                    self.i += 2;
                }
                Some(&c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(_) => self.i += 1,
            }
        }
        let end = self.i;
        self.i += 1;
        // `start`/`end` sit next to ASCII quotes, so they are char boundaries of `s`.
        let raw = self.s.get(start..end).ok_or_else(|| self.err("string"))?;
        if escaped {
            let quoted = self
                .s
                .get(start - 1..end + 1)
                .ok_or_else(|| self.err("string"))?;
            serde_json::from_str::<String>(quoted)
                .map(Cow::Owned)
                .map_err(|_| malformed(start, "invalid escape in string"))
        } else {
            Ok(Cow::Borrowed(raw))
        }
    }

    /// A number token, validated against the JSON grammar.
    fn number(&mut self) -> Result<&'a str, GwmpError> {
        self.ws();
        let start = self.i;
        let digits = |r: &mut Self| {
            let d0 = r.i;
            while r.b.get(r.i).is_some_and(u8::is_ascii_digit) {
                r.i += 1;
            }
            r.i - d0
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.err("expected a number")),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(self.err("digit expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("digit expected in exponent"));
            }
        }
        Ok(&self.s[start..self.i])
    }

    fn int<T: std::str::FromStr>(&mut self, field: &'static str) -> Result<T, GwmpError> {
        let at = self.i;
        self.number()?
            .parse()
            .map_err(|_| malformed(at, field_int_reason(field)))
    }

    fn float(&mut self) -> Result<f64, GwmpError> {
        let at = self.i;
        let n: f64 = self
            .number()?
            .parse()
            .map_err(|_| malformed(at, "number"))?;
        if n.is_finite() {
            Ok(n)
        } else {
            Err(malformed(at, "number out of range"))
        }
    }

    /// `null` → `None`, otherwise `f`.
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, GwmpError>,
    ) -> Result<Option<T>, GwmpError> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    /// Skips any value, returning its exact text.
    fn skip_value(&mut self, depth: usize) -> Result<&'a str, GwmpError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let start = {
            self.ws();
            self.i
        };
        match self.peek() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{') => {
                self.i += 1;
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.string()?;
                        self.eat(b':', "expected ':'")?;
                        self.skip_value(depth + 1)?;
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or '}'")),
                        }
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.skip_value(depth + 1)?;
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or ']'")),
                        }
                    }
                }
            }
            Some(b't') => self.literal("true")?,
            Some(b'f') => self.literal("false")?,
            Some(b'n') => self.literal("null")?,
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
            }
            _ => return Err(self.err("expected a value")),
        }
        Ok(&self.s[start..self.i])
    }

    /// Calls `field` for each key of an object; `field` must consume the value.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &str) -> Result<(), GwmpError>,
    ) -> Result<(), GwmpError> {
        self.eat(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':', "expected ':'")?;
            field(self, &key)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    /// The end of the document: only whitespace may follow.
    fn end(&mut self) -> Result<(), GwmpError> {
        if self.peek().is_none() {
            Ok(())
        } else {
            Err(self.err("trailing characters after JSON"))
        }
    }
}

fn field_int_reason(field: &'static str) -> &'static str {
    match field {
        "tmst" => "tmst: expected an unsigned 32-bit integer",
        "tmms" => "tmms: expected an unsigned 64-bit integer",
        "chan" => "chan: expected an integer 0..=255",
        "rfch" => "rfch: expected an integer 0..=255",
        "stat" => "stat: expected a small integer",
        "rssi" => "rssi: expected a 32-bit integer",
        "jver" => "jver: expected an integer 0..=255",
        "brd" => "brd: expected an unsigned 32-bit integer",
        "aesk" => "aesk: expected an unsigned 32-bit integer",
        "size" => "size: expected an unsigned integer",
        _ => "expected an integer",
    }
}

/// Records a field, refusing a second occurrence.
fn set<T>(slot: &mut Option<T>, v: T, r: &Reader<'_>) -> Result<(), GwmpError> {
    if slot.is_some() {
        return Err(r.err("duplicate field"));
    }
    *slot = Some(v);
    Ok(())
}

/// Like [`set`] for optional fields whose JSON value may be `null`: tracks presence separately.
fn set_opt<T>(slot: &mut Option<Option<T>>, v: Option<T>, r: &Reader<'_>) -> Result<(), GwmpError> {
    set(slot, v, r)
}

fn datr(r: &mut Reader<'_>) -> Result<DataRate, GwmpError> {
    let at = r.i;
    if r.peek() == Some(b'"') {
        let s = r.string()?;
        DataRate::parse_lora(&s).ok_or(malformed(at, "datr: not SF5..12 with BW125/250/500"))
    } else {
        let n = r.number()?;
        let bitrate = n
            .parse::<u32>()
            .ok()
            .or_else(|| {
                // Some forwarders print the FSK rate as 50000.0.
                let f: f64 = n.parse().ok()?;
                (f.fract() == 0.0 && f > 0.0 && f <= f64::from(u32::MAX)).then_some(f as u32)
            })
            .filter(|&b| b > 0)
            .ok_or(malformed(at, "datr: not a positive FSK bit rate"))?;
        Ok(DataRate::Fsk { bitrate })
    }
}

fn modu(r: &mut Reader<'_>) -> Result<Modulation, GwmpError> {
    let at = r.i;
    match &*r.string()? {
        "LORA" => Ok(Modulation::Lora),
        "FSK" => Ok(Modulation::Fsk),
        _ => Err(malformed(at, "modu: expected \"LORA\" or \"FSK\"")),
    }
}

fn codr(r: &mut Reader<'_>) -> Result<CodingRate, GwmpError> {
    let at = r.i;
    match &*r.string()? {
        "4/5" => Ok(CodingRate::Cr4_5),
        "4/6" => Ok(CodingRate::Cr4_6),
        "4/7" => Ok(CodingRate::Cr4_7),
        "4/8" => Ok(CodingRate::Cr4_8),
        "OFF" => Ok(CodingRate::Off),
        _ => Err(malformed(at, "codr: expected 4/5..4/8 or OFF")),
    }
}

fn serde_span<T: serde::de::DeserializeOwned>(
    r: &mut Reader<'_>,
    reason: &'static str,
) -> Result<T, GwmpError> {
    let at = r.i;
    let span = r.skip_value(1)?;
    serde_json::from_str(span).map_err(|_| malformed(at, reason))
}

fn rxpk<'a>(r: &mut Reader<'a>) -> Result<RxPkIn<'a>, GwmpError> {
    let mut tmst = None;
    let mut time = None;
    let mut tmms = None;
    let mut chan = None;
    let mut rfch = None;
    let mut freq = None;
    let mut stat = None;
    let mut modu_ = None;
    let mut datr_ = None;
    let mut codr_ = None;
    let mut rssi = None;
    let mut lsnr = None;
    let mut jver = None;
    let mut rsig = None;
    let mut brd = None;
    let mut aesk = None;
    let mut size = None;
    let mut data = None;
    r.object(|r, key| match key {
        "tmst" => {
            let v = r.int("tmst")?;
            set(&mut tmst, v, r)
        }
        "time" => {
            let v = r.opt(|r| r.string().map(Cow::into_owned))?;
            set_opt(&mut time, v, r)
        }
        "tmms" => {
            let v = r.opt(|r| r.int("tmms"))?;
            set_opt(&mut tmms, v, r)
        }
        "chan" => {
            let v = r.opt(|r| r.int("chan"))?;
            set_opt(&mut chan, v, r)
        }
        "rfch" => {
            let v = r.opt(|r| r.int("rfch"))?;
            set_opt(&mut rfch, v, r)
        }
        "freq" => {
            let v = r.float()?;
            set(&mut freq, v, r)
        }
        "stat" => {
            let v = r.int("stat")?;
            set(&mut stat, v, r)
        }
        "modu" => {
            let v = modu(r)?;
            set(&mut modu_, v, r)
        }
        "datr" => {
            let v = datr(r)?;
            set(&mut datr_, v, r)
        }
        "codr" => {
            let v = r.opt(codr)?;
            set_opt(&mut codr_, v, r)
        }
        "rssi" => {
            let v = r.opt(|r| r.int("rssi"))?;
            set_opt(&mut rssi, v, r)
        }
        "lsnr" => {
            let v = r.opt(Reader::float)?;
            set_opt(&mut lsnr, v, r)
        }
        "jver" => {
            let v = r.opt(|r| r.int("jver"))?;
            set_opt(&mut jver, v, r)
        }
        "rsig" => {
            let v: Option<Vec<RSig>> = serde_span(r, "rsig: invalid array")?;
            set_opt(&mut rsig, v, r)
        }
        "brd" => {
            let v = r.opt(|r| r.int("brd"))?;
            set_opt(&mut brd, v, r)
        }
        "aesk" => {
            let v = r.opt(|r| r.int("aesk"))?;
            set_opt(&mut aesk, v, r)
        }
        "size" => {
            let v = r.int("size")?;
            set(&mut size, v, r)
        }
        "data" => {
            let v = r.string()?;
            set(&mut data, v, r)
        }
        _ => r.skip_value(1).map(drop),
    })?;
    let missing = GwmpError::MissingField;
    Ok(RxPkIn {
        tmst: tmst.ok_or(missing("tmst"))?,
        time: time.flatten(),
        tmms: tmms.flatten(),
        chan: chan.flatten(),
        rfch: rfch.flatten(),
        freq: freq.ok_or(missing("freq"))?,
        stat: stat.ok_or(missing("stat"))?,
        modu: modu_.ok_or(missing("modu"))?,
        datr: datr_.ok_or(missing("datr"))?,
        codr: codr_.flatten(),
        rssi: rssi.flatten(),
        lsnr: lsnr.flatten(),
        jver: jver.flatten(),
        rsig: rsig.flatten(),
        brd: brd.flatten(),
        aesk: aesk.flatten(),
        size: size.ok_or(missing("size"))?,
        data: data.ok_or(missing("data"))?,
    })
}

/// Reads a PUSH_DATA body, converting each rxpk with `convert` as soon as it is read.
pub(super) fn push_data<T>(
    body: &str,
    mut convert: impl FnMut(RxPkIn<'_>) -> Result<T, GwmpError>,
) -> Result<(Vec<T>, Option<Stat>), GwmpError> {
    let mut r = Reader::new(body);
    let mut rxpk_list: Option<Vec<T>> = None;
    let mut stat: Option<Option<Stat>> = None;
    r.object(|r, key| match key {
        "rxpk" => {
            let mut list = Vec::new();
            if r.peek() == Some(b'n') {
                r.literal("null")?;
            } else {
                r.eat(b'[', "rxpk: expected an array")?;
                if r.peek() == Some(b']') {
                    r.i += 1;
                } else {
                    loop {
                        list.push(convert(rxpk(r)?)?);
                        match r.peek() {
                            Some(b',') => r.i += 1,
                            Some(b']') => {
                                r.i += 1;
                                break;
                            }
                            _ => return Err(r.err("expected ',' or ']'")),
                        }
                    }
                }
            }
            set(&mut rxpk_list, list, r)
        }
        "stat" => {
            let v: Option<Stat> = serde_span(r, "stat: invalid object")?;
            set_opt(&mut stat, v, r)
        }
        _ => r.skip_value(1).map(drop),
    })?;
    r.end()?;
    Ok((rxpk_list.unwrap_or_default(), stat.flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(s: &str) -> bool {
        let mut r = Reader::new(s);
        r.skip_value(0).is_ok() && r.end().is_ok()
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        let cases = [
            "0",
            "-0",
            "1.5",
            "1e5",
            "1E+5",
            "-1.0e-3",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "\"a\"",
            "\"a\\u00e9\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\u{1}\"",
            "\"unterminated",
            "[]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "true",
            "tru",
            "nul",
            "null x",
            "[[[]]]",
            " {\"a\" : [ true , false , null ] } ",
        ];
        for c in cases {
            let serde_ok = serde_json::from_str::<serde_json::Value>(c).is_ok();
            assert_eq!(valid(c), serde_ok, "{c:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(!valid(&deep));
    }

    #[test]
    fn numbers_beyond_f64_are_json_but_not_values() {
        // RFC 8259 grammar allows any exponent: fine in an ignored field (fuzz finding)...
        let ok = r#"{"stat":{"lati(":48.3209e711184871452711}}"#;
        assert!(push_data(ok, |_| Ok(())).is_ok());
        // ...but not as a value the codec reads.
        let mut r = Reader::new("1e999");
        assert_eq!(r.float().unwrap_err().kind(), "json");
    }

    #[test]
    fn duplicate_fields_are_refused() {
        let body = r#"{"rxpk":[],"rxpk":[]}"#;
        assert_eq!(push_data(body, |_| Ok(())).unwrap_err().kind(), "json");
    }
}

//! The allowed-gateways file (`[gwmp] allowed_gateways_file`): one gateway EUI a line, as 16
//! hex digits; blank lines and lines starting with `#` are ignored. A pure parser and a thin
//! reader.

use std::collections::HashSet;
use std::path::Path;

use protocol::ids::GatewayEui;

/// The gateways allowed to use the server.
pub type AllowedGateways = HashSet<GatewayEui>;

/// Parses the file's text; the error names the first bad line (1-based).
pub fn parse(text: &str) -> Result<AllowedGateways, String> {
    let mut set = AllowedGateways::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let eui = line
            .parse::<GatewayEui>()
            .map_err(|_| format!("line {}: not a gateway EUI (16 hex digits)", i + 1))?;
        set.insert(eui);
    }
    Ok(set)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<AllowedGateways, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_euis_skipping_comments_and_blank_lines() {
        let set = parse("# gateways\n\nAA555A0000000001\n  aa555a0000000002  \n").unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&GatewayEui::new(0xAA55_5A00_0000_0001)));
        assert!(set.contains(&GatewayEui::new(0xAA55_5A00_0000_0002)));
    }

    #[test]
    fn names_the_first_bad_line() {
        assert_eq!(
            parse("AA555A0000000001\nnot-an-eui\n").unwrap_err(),
            "line 2: not a gateway EUI (16 hex digits)"
        );
        assert!(parse("AA555A00000000011\n").is_err(), "17 digits");
    }

    #[test]
    fn load_reads_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateways.txt");
        std::fs::write(&path, "0102030405060708\n").unwrap();
        assert_eq!(
            load(&path).unwrap(),
            AllowedGateways::from([GatewayEui::new(0x0102_0304_0506_0708)])
        );
        assert!(load(&dir.path().join("missing")).is_err());
    }
}

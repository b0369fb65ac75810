//! Recovery from the event file at start: the uplinks it shows delivered advance the counters,
//! so a crash between the event write and the counter commit neither loses nor repeats one.

use std::collections::HashMap;
use std::path::Path;

use protocol::ids::{DevAddr, DevEui};

use crate::store::stored::StoredSession;

/// The uplinks delivered per device according to the tail of the event file (the last
/// `tail_bytes`): the DevAddr and highest FCnt after the device's last join event. A partial
/// last line (a crash inside a write) is cut off the file.
pub fn recover_delivered(
    path: &Path,
    tail_bytes: u64,
) -> std::io::Result<HashMap<DevEui, (DevAddr, u32)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = HashMap::new();
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(tail_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut text = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut text)?;
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        tracing::warn!(
            bytes = text.len() - complete,
            "cutting a partial last line off the event file"
        );
        f.set_len(start + complete as u64)?;
        f.sync_data()?;
    }
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(rename = "type")]
        kind: String,
        dev_eui: DevEui,
        dev_addr: Option<DevAddr>,
        f_cnt: Option<u32>,
    }
    // The first line of a tail may be cut in the middle: skip it unless the tail is the file.
    let mut lines = text[..complete].split(|&b| b == b'\n');
    if start > 0 {
        lines.next();
    }
    for l in lines.filter(|l| !l.is_empty()) {
        let Ok(line) = serde_json::from_slice::<Line>(l) else {
            continue;
        };
        match (line.kind.as_str(), line.dev_addr, line.f_cnt) {
            ("join", _, _) => {
                out.remove(&line.dev_eui);
            }
            ("uplink", Some(addr), Some(fcnt)) => {
                let e = out.entry(line.dev_eui).or_insert((addr, fcnt));
                if e.0 != addr || fcnt > e.1 {
                    *e = (addr, fcnt);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Advances a stored session's FCntUp past the last uplink the event file shows delivered
/// for it (same DevAddr).
pub fn apply_delivered(delivered: &HashMap<DevEui, (DevAddr, u32)>, stored: &mut StoredSession) {
    if let Some(&(addr, fcnt)) = delivered.get(&stored.dev_eui) {
        if addr == stored.dev_addr && fcnt.wrapping_add(1) > stored.counters.f_cnt_up {
            stored.counters.f_cnt_up = fcnt.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::stored::tests::stored;

    #[test]
    fn delivered_uplinks_are_recovered_from_the_event_file_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let up = |d: &str, a: &str, f: u32| {
            format!(
                "{{\"type\":\"uplink\",\"dev_eui\":\"{d}\",\"dev_addr\":\"{a}\",\"f_cnt\":{f}}}\n"
            )
        };
        let mut text = String::new();
        text += &up("0000000000000001", "26000001", 7);
        text += &up("0000000000000001", "26000001", 8);
        text += &up("0000000000000002", "26000002", 3);
        text += "{\"type\":\"join\",\"dev_eui\":\"0000000000000002\",\"dev_addr\":\"26000009\"}\n";
        text += &up("0000000000000003", "26000003", 1);
        text += "{\"type\":\"uplink\",\"dev_eui\":\"00000000000000";
        std::fs::write(&p, &text).unwrap();
        let d = recover_delivered(&p, 1 << 20).unwrap();
        assert_eq!(d[&DevEui::new(1)], (DevAddr::new(0x2600_0001), 8));
        assert!(!d.contains_key(&DevEui::new(2)), "joined again since");
        assert_eq!(d[&DevEui::new(3)].1, 1);
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .ends_with("\"f_cnt\":1}\n"),
            "partial line cut"
        );
        let mut s = stored(1, 0x2600_0001);
        apply_delivered(&d, &mut s);
        assert_eq!(s.counters.f_cnt_up, 9);
        let mut other = stored(1, 0x2600_0777);
        apply_delivered(&d, &mut other);
        assert_eq!(other.counters.f_cnt_up, 0, "another session's address");
        assert!(recover_delivered(&dir.path().join("none"), 100)
            .unwrap()
            .is_empty());
    }
}

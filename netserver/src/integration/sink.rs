//! The event sink seam: where application events go. [`EventSink`] is the trait the write-ahead
//! emitter writes batches through; today's implementations are a file ([`FileEvents`]),
//! stdout ([`StdoutEvents`]), UDP ([`UdpEvents`]) and nowhere ([`Discard`]), and
//! [`ConfiguredSink`] is the one `data.events` names. MQTT and HTTP webhooks are added as
//! further implementations (and variants of [`ConfiguredSink`]).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};

/// Where application events go: one batch of JSON lines at a time, in order.
pub trait EventSink: std::fmt::Debug + Send + 'static {
    /// Whether the events can be read back at start (a file): they are then written before
    /// the counter commit, and the restart recovers from them
    /// ([`crate::integration::recover`]). Otherwise the commit comes first.
    fn readable_back(&self) -> bool {
        false
    }

    /// Writes the lines of a batch (each without its newline); `buf` is scratch space.
    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()>;
}

/// Events go nowhere (no integration configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl EventSink for Discard {
    fn write_batch(&mut self, _: &[&[u8]], _: &mut Vec<u8>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Events appended to a file, one JSON line each, `fdatasync`ed per batch.
#[derive(Debug)]
pub struct FileEvents(pub std::fs::File);

impl EventSink for FileEvents {
    fn readable_back(&self) -> bool {
        true
    }

    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        join_lines(lines, buf);
        self.0.write_all(buf)?;
        self.0.sync_data()
    }
}

/// Events on standard output, one JSON line each.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutEvents;

impl EventSink for StdoutEvents {
    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        join_lines(lines, buf);
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()
    }
}

/// `lines` into `buf`, each ended by a newline.
fn join_lines(lines: &[&[u8]], buf: &mut Vec<u8>) {
    buf.clear();
    for l in lines {
        buf.extend_from_slice(l);
        buf.push(b'\n');
    }
}

/// The sink `data.events` names.
#[derive(Debug)]
pub enum ConfiguredSink {
    /// Nowhere (no integration configured).
    Discard(Discard),
    /// Appended to a file.
    File(FileEvents),
    /// Standard output.
    Stdout(StdoutEvents),
    /// UDP datagrams to one address: one event per datagram, or packed.
    Udp(UdpEvents),
}

/// The UDP event sink: `udp://HOST:PORT` (one event per datagram) or
/// `udp://HOST:PORT?pack=BYTES` (as many whole JSON lines per datagram as fit in `BYTES`).
#[derive(Debug)]
pub struct UdpEvents {
    socket: UdpSocket,
    to: SocketAddr,
    /// 0: one event per datagram, without newline. Else the most bytes per datagram.
    pack: usize,
}

impl UdpEvents {
    /// The largest UDP payload over IPv4.
    pub const MAX_DATAGRAM: usize = 65_507;

    /// Parses `HOST:PORT[?pack=BYTES]` (what follows `udp://`) and binds a socket for it.
    fn open(spec: &str) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind};
        use std::net::ToSocketAddrs;
        let (addr, query) = spec.split_once('?').unwrap_or((spec, ""));
        let mut pack = 0;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let bytes = param
                .strip_prefix("pack=")
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "unknown parameter `{param}` in the UDP event sink (known: pack=BYTES)"
                        ),
                    )
                })?
                .parse::<usize>()
                .ok()
                .filter(|b| (1..=Self::MAX_DATAGRAM).contains(b))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "`{param}`: pack takes the most bytes per datagram, 1 to {}",
                            Self::MAX_DATAGRAM
                        ),
                    )
                })?;
            pack = bytes;
        }
        let to = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "address resolves to nothing"))?;
        let bind: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Ok(Self {
            socket: UdpSocket::bind(bind)?,
            to,
            pack,
        })
    }
}

impl EventSink for UdpEvents {
    /// Sends `lines`: one datagram each, or packed whole into datagrams of at most `pack`
    /// bytes, each line ended by a newline (a line longer than that goes alone).
    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self.pack == 0 {
            for l in lines {
                self.socket.send_to(l, self.to)?;
            }
            return Ok(());
        }
        buf.clear();
        for l in lines {
            if !buf.is_empty() && buf.len() + l.len() + 1 > self.pack {
                self.socket.send_to(buf, self.to)?;
                buf.clear();
            }
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        if !buf.is_empty() {
            self.socket.send_to(buf, self.to)?;
        }
        Ok(())
    }
}

impl ConfiguredSink {
    /// From the `data.events` setting: empty = discard, `-` = stdout,
    /// `udp://HOST:PORT[?pack=BYTES]`, or a file path (appended to, created if missing).
    pub fn open(spec: &str) -> std::io::Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(Self::Discard(Discard));
        }
        if spec == "-" {
            return Ok(Self::Stdout(StdoutEvents));
        }
        if let Some(addr) = spec.strip_prefix("udp://") {
            return UdpEvents::open(addr).map(Self::Udp);
        }
        // Events hold decrypted payloads: the file is 0600.
        let f = crate::ops::private::open_append(std::path::Path::new(spec))?;
        Ok(Self::File(FileEvents(f)))
    }

    fn sink(&mut self) -> &mut dyn EventSink {
        match self {
            Self::Discard(s) => s,
            Self::File(s) => s,
            Self::Stdout(s) => s,
            Self::Udp(s) => s,
        }
    }
}

impl EventSink for ConfiguredSink {
    fn readable_back(&self) -> bool {
        matches!(self, Self::File(_))
    }

    fn write_batch(&mut self, lines: &[&[u8]], buf: &mut Vec<u8>) -> std::io::Result<()> {
        self.sink().write_batch(lines, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_sink(query: &str) -> (ConfiguredSink, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let spec = format!("udp://{}{query}", rx.local_addr().unwrap());
        (ConfiguredSink::open(&spec).unwrap(), rx)
    }

    fn datagrams(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65_536];
        (0..n)
            .map(|_| {
                let (len, _) = rx.recv_from(&mut buf).unwrap();
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn udp_events_go_one_per_datagram_by_default() {
        let (mut sink, rx) = udp_sink("");
        let lines: [&[u8]; 3] = [b"{\"f_cnt\":1}", b"{\"f_cnt\":2}", b"{\"f_cnt\":3}"];
        sink.write_batch(&lines, &mut Vec::new()).unwrap();
        let got = datagrams(&rx, 3);
        assert_eq!(got, lines.map(<[u8]>::to_vec));
    }

    #[test]
    fn udp_events_are_packed_whole_into_datagrams_of_at_most_pack_bytes() {
        let (mut sink, rx) = udp_sink("?pack=40");
        // 12 + 1 bytes each: three fit in 40 bytes, a fourth would not.
        let short: Vec<Vec<u8>> = (0..7)
            .map(|i| format!("{{\"f_cnt\":{i:02}}}").into_bytes())
            .collect();
        let long = vec![b'x'; 50];
        let mut lines: Vec<&[u8]> = short.iter().map(Vec::as_slice).collect();
        lines.insert(4, &long);
        sink.write_batch(&lines, &mut Vec::new()).unwrap();
        let got: Vec<String> = datagrams(&rx, 4)
            .into_iter()
            .map(|d| String::from_utf8(d).unwrap())
            .collect();
        let line = |i: usize| format!("{{\"f_cnt\":{i:02}}}\n");
        assert_eq!(
            got,
            [
                line(0) + &line(1) + &line(2),
                line(3),
                format!("{}\n", "x".repeat(50)),
                line(4) + &line(5) + &line(6),
            ]
        );
        rx.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        assert!(rx.recv_from(&mut [0u8; 64]).is_err(), "no fifth datagram");
    }

    #[test]
    fn udp_sink_parameters_are_checked() {
        for (spec, needle) in [
            ("udp://127.0.0.1:9?pack=0", "1 to 65507"),
            ("udp://127.0.0.1:9?pack=70000", "1 to 65507"),
            ("udp://127.0.0.1:9?pack=many", "1 to 65507"),
            ("udp://127.0.0.1:9?batch=10", "unknown parameter `batch=10`"),
        ] {
            let e = ConfiguredSink::open(spec).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{spec}");
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
        assert!(matches!(
            ConfiguredSink::open("udp://127.0.0.1:9?pack=1472"),
            Ok(ConfiguredSink::Udp(UdpEvents { pack: 1472, .. }))
        ));
    }
}

//! The hardened accept loop over real sockets on 127.0.0.1: HTTPS with a self-signed certificate,
//! plain HTTP beside it on loopback only, silent and idle connections closed by the timeouts, the
//! connection limit, and shutdown.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use httpsec::serve::{self, Counters, Limits, Transport};
use httpsec::tls;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

struct Running {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Serves "hello <peer ip>" (after `delay`) on 127.0.0.1:0.
fn start(transport: Transport, limits: Limits, delay: Duration) -> Running {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let make = move |peer: SocketAddr| {
                hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "hello {}",
                        peer.ip()
                    )))))
                })
            };
            serve::serve(listener, transport, limits, c, make, async {
                let _ = rx.await;
            })
            .await;
        });
    });
    Running {
        addr,
        counters,
        stop: Some(tx),
        thread: Some(thread),
    }
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    tls::ensure_self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    (cert.clone(), tls::server_config(&cert, &key).unwrap())
}

fn https_agent(ca: &std::path::Path) -> ureq::Agent {
    let pem = std::fs::read(ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
    ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                .build(),
        )
        .build()
        .new_agent()
}

fn plain_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn https_with_the_self_signed_certificate_and_plain_http_beside_it_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, config) = self_signed(tmp.path());
    let transport = Transport::for_listener(
        "127.0.0.1:0".parse().unwrap(),
        Some(config.clone()),
        false,
        "",
    )
    .unwrap();
    let srv = start(transport, Limits::default(), Duration::ZERO);
    let body = https_agent(&ca)
        .get(&format!("https://127.0.0.1:{}/", srv.addr.port()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(body, "hello 127.0.0.1");
    // Without the certificate as a root, the client refuses the server.
    let e = ureq::get(&format!("https://127.0.0.1:{}/", srv.addr.port()))
        .call()
        .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("certificate")
            || matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_)),
        "{e}"
    );
    let plain = plain_get(srv.addr).unwrap();
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(plain.ends_with("hello 127.0.0.1"), "{plain}");

    // TLS only (what a non-loopback address gets): plain HTTP is closed unanswered.
    let tls_only = start(
        Transport::Tls {
            config,
            plain_too: false,
        },
        Limits::default(),
        Duration::ZERO,
    );
    let refused = plain_get(tls_only.addr).unwrap_or_default();
    assert_eq!(refused, "", "no HTTP answer in clear");
    assert_eq!(tls_only.counters.plain_refused.load(Ordering::Relaxed), 1);
}

#[test]
fn plain_http_is_refused_on_a_non_loopback_address_unless_chosen() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = self_signed(tmp.path());
    let public: SocketAddr = "0.0.0.0:8443".parse().unwrap();
    let e = Transport::for_listener(public, None, false, "[api] tls_cert and tls_key").unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("refusing to serve plain HTTP on 0.0.0.0:8443"),
        "{m}"
    );
    assert!(m.contains("[api] tls_cert and tls_key"), "{m}");
    assert!(m.contains("--insecure-http"), "{m}");
    let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
    assert!(Transport::for_listener(v6, None, false, "").is_err());
    assert!(matches!(
        Transport::for_listener(public, None, true, ""),
        Ok(Transport::Plain)
    ));
    assert!(matches!(
        Transport::for_listener(public, Some(config.clone()), false, ""),
        Ok(Transport::Tls {
            plain_too: false,
            ..
        })
    ));
    for lo in ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1"] {
        let lo: SocketAddr = lo.parse().unwrap();
        assert!(matches!(
            Transport::for_listener(lo, None, false, ""),
            Ok(Transport::Plain)
        ));
        assert!(matches!(
            Transport::for_listener(lo, Some(config.clone()), false, ""),
            Ok(Transport::Tls {
                plain_too: true,
                ..
            })
        ));
    }
}

#[test]
fn silent_and_idle_connections_are_closed_by_the_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, config) = self_signed(tmp.path());
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        max_connections: 1000,
    };
    for transport in [
        Transport::Plain,
        Transport::Tls {
            config,
            plain_too: true,
        },
    ] {
        let name = format!("{transport:?}");
        let srv = start(transport, limits, Duration::ZERO);
        // Connections that never send a byte.
        let mut silent: Vec<TcpStream> = (0..50)
            .map(|_| TcpStream::connect(srv.addr).unwrap())
            .collect();
        // A connection that sends half a request head and stops.
        let mut half = TcpStream::connect(srv.addr).unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();
        for s in &mut silent {
            assert!(
                closed_within(s, Duration::from_secs(5)),
                "{name}: still open"
            );
        }
        assert!(closed_within(&mut half, Duration::from_secs(5)), "{name}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name}");
        // Nothing stays held: the server counts no open connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.counters.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(srv.counters.open.load(Ordering::Relaxed), 0, "{name}");
    }
}

#[test]
fn a_keep_alive_connection_is_closed_after_the_idle_timeout_but_not_during_a_slow_request() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        max_connections: 10,
    };
    // Each answer takes longer than the idle timeout: a request in progress is not idleness.
    let srv = start(Transport::Plain, limits, Duration::from_millis(700));
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // Then the connection sits idle, kept alive by HTTP/1.1, until a timeout closes it (hyper's
    // header-read timer waiting for the next request, or the idle timer, whichever is first).
    let idle_since = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(idle_since.elapsed() < Duration::from_secs(2));
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 3,
    };
    let srv = start(Transport::Plain, limits, Duration::ZERO);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.counters.open.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut extra = TcpStream::connect(srv.addr).unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)));
    assert_eq!(srv.counters.refused_over_limit.load(Ordering::Relaxed), 1);
    drop(held);
    // Once they are gone, a new connection is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.counters.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(plain_get(srv.addr).unwrap().ends_with("hello 127.0.0.1"));
}

#[test]
fn shutdown_lets_a_request_in_progress_finish() {
    let srv = start(
        Transport::Plain,
        Limits::default(),
        Duration::from_millis(500),
    );
    let addr = srv.addr;
    let client = std::thread::spawn(move || plain_get(addr));
    std::thread::sleep(Duration::from_millis(150));
    drop(srv); // stops and joins the server thread
    let answer = client.join().unwrap().unwrap();
    assert!(answer.ends_with("hello 127.0.0.1"), "{answer}");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

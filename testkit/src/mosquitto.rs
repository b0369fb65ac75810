//! A real Mosquitto broker for the integration tests: Debian's `mosquitto` binary, started on a
//! free loopback port with a password file (no anonymous clients), optionally with TLS under a
//! test CA made here. A machine without Mosquitto fails the test with a message saying how to
//! install it; nothing is skipped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broker's user name in every test broker.
pub const USER: &str = "netserver";
/// Its password.
pub const PASSWORD: &str = "mqtt-test-password";

/// A running (or stopped) Mosquitto broker.
#[derive(Debug)]
pub struct Mosquitto {
    /// Its loopback port.
    pub port: u16,
    /// The CA certificate (PEM) its TLS certificate chains to, when it speaks TLS.
    pub ca_file: Option<PathBuf>,
    dir: PathBuf,
    child: Option<Child>,
}

/// The mosquitto binary: `MOSQUITTO`, or Debian's.
fn binary() -> PathBuf {
    let p = std::env::var_os("MOSQUITTO")
        .map_or_else(|| PathBuf::from("/usr/sbin/mosquitto"), PathBuf::from);
    assert!(
        p.exists(),
        "{} not found: these tests need a real Mosquitto broker (Debian: apt-get install mosquitto; \
         scripts/test.sh installs it), or MOSQUITTO=/path/to/mosquitto",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Mosquitto {
    /// Starts a broker with its files in `dir` (which must exist), with TLS if `tls`.
    pub fn start(dir: &Path, tls: bool) -> Self {
        let bin = binary();
        let passwd = dir.join("mosquitto.passwd");
        std::fs::write(&passwd, format!("{USER}:{PASSWORD}\n")).expect("password file");
        // Hash it in place (mosquitto 2 reads only hashed password files).
        let out = Command::new(bin.with_file_name("mosquitto_passwd"))
            .arg("-U")
            .arg(&passwd)
            .output()
            .or_else(|_| {
                Command::new("mosquitto_passwd")
                    .arg("-U")
                    .arg(&passwd)
                    .output()
            })
            .expect("mosquitto_passwd (package mosquitto) runs");
        assert!(
            out.status.success(),
            "mosquitto_passwd -U: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        set_mode(&passwd, 0o600);
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence true\n\
             persistence_location {}/\nuser root\nlog_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\n",
            passwd.display(),
            dir.display(),
            dir.join("mosquitto.log").display()
        );
        let ca_file = tls.then(|| {
            let (ca, cert, key) = test_certificates(dir);
            conf += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                ca.display(),
                cert.display(),
                key.display()
            );
            ca
        });
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("mosquitto.conf");
        let mut m = Self {
            port,
            ca_file,
            dir: dir.to_owned(),
            child: None,
        };
        m.resume();
        m
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Writes the password to a 0600 file in the broker's directory and returns its path.
    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.join("mqtt.password");
        std::fs::write(&p, PASSWORD).expect("password file");
        set_mode(&p, 0o600);
        p
    }

    /// Stops the broker (SIGTERM, and waits for it to exit).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Freezes the broker's process (SIGSTOP): its connections stay open and the kernel still
    /// accepts new ones, but nothing is answered until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen broker go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("the broker is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal)
            .expect("signal to the broker");
    }

    /// Starts the broker again on the same port, and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
                panic!("mosquitto exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on {}",
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A test CA, and a server certificate for 127.0.0.1 and `localhost` signed by it: the paths
/// of the CA certificate, the server certificate and its key (PEM).
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mosquitto test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("ca.pem");
    std::fs::write(&paths.1, cert.pem()).expect("server.pem");
    std::fs::write(&paths.2, key.serialize_pem()).expect("server.key");
    set_mode(&paths.2, 0o600);
    paths
}

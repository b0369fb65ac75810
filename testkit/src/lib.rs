//! Helpers for the tests that drive the real server binaries (a dev-dependency only).
//!
//! A test that fills a server's socket buffer must know two things the plain `kill -STOP` and
//! `send_to` calls do not tell it:
//! - that the server is stopped: `kill(2)` returns once the signal is queued, and a thread that
//!   is running stops only when it next returns to user space;
//! - that the kernel has handled the datagrams: `send_to` on loopback can leave them in the
//!   per-CPU backlog when the machine is busy, to be delivered (not dropped) after the server
//!   runs again.
//!
//! [`Stopped`] and [`wait_receive_drops`] wait for each of these, with a deadline.
//!
//! [`postgres`] starts a real PostgreSQL 15 on a temporary data directory for the tests of the
//! PostgreSQL backends, and takes it away and brings it back. [`alone::Alone`] lets a test of a
//! file run with none of the file's other tests beside it; [`cores::Cores`] lets the tests of a
//! file run all at once, each when its share of the machine's cores is free.

pub mod alone;
pub mod cores;
pub mod postgres;

use std::path::Path;
use std::time::{Duration, Instant};

pub mod mosquitto;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the waits here give the kernel before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// A process stopped with SIGSTOP: every one of its threads was seen in the stopped state. It is
/// continued (SIGCONT) by [`Stopped::resume`], or when this is dropped, so a failed assertion
/// does not leave it stopped.
#[derive(Debug)]
pub struct Stopped {
    pid: u32,
}

impl Stopped {
    /// Sends SIGSTOP to `pid` and returns once all its threads are stopped.
    ///
    /// # Panics
    /// If the signal cannot be sent, or the process is not stopped within 10 s.
    pub fn stop(pid: u32) -> Stopped {
        signal(pid, Signal::SIGSTOP);
        let stopped = Stopped { pid };
        let deadline = Instant::now() + DEADLINE;
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "process {pid} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        stopped
    }

    /// Continues the process.
    pub fn resume(self) {
        drop(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // The process may already be gone (a test that failed and killed it): nothing to do.
        let _ = kill(pid_of(self.pid), Signal::SIGCONT);
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a process id fits an i32"))
}

fn signal(pid: u32, sig: Signal) {
    kill(pid_of(pid), sig).unwrap_or_else(|e| panic!("{sig} to process {pid}: {e}"));
}

/// Whether every thread of `pid` is in state `T` (stopped) or `t` (tracing stop), from
/// `/proc/PID/task/*/stat`. False if the process has no readable thread.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        // "TID (COMM) STATE ...": COMM may hold spaces and parentheses, so split at the last ')'.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('T' | 't') => any = true,
            _ => return false,
        }
    }
    any
}

/// The inodes of the sockets process `pid` holds open, from the `socket:[INODE]` links in
/// `/proc/PID/fd`.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| socket_inode(&target))
        .collect()
}

fn socket_inode(link_target: &Path) -> Option<u64> {
    link_target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The kernel's receive-buffer drops at all UDP sockets of process `pid` (0 if it has none).
pub fn receive_drops(pid: u32) -> u64 {
    udpstat::receive_drops(&socket_inodes(pid)).unwrap_or(0)
}

/// Waits until the kernel has dropped at least `at_least` datagrams at the UDP sockets of `pid`.
///
/// # Panics
/// If the count stays below `at_least` for 10 s.
pub fn wait_receive_drops(pid: u32, at_least: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = receive_drops(pid);
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the kernel dropped only {n} datagrams at process {pid}'s UDP sockets, not {at_least}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn socket_links_are_parsed() {
        assert_eq!(socket_inode(Path::new("socket:[123456]")), Some(123_456));
        assert_eq!(socket_inode(Path::new("pipe:[123456]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert_eq!(socket_inode(Path::new("socket:[12x]")), None);
    }

    /// This process's own UDP socket is among its sockets.
    #[test]
    fn a_processs_own_socket_is_found() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = udpstat::socket_inode(&s).unwrap();
        assert!(socket_inodes(std::process::id()).contains(&inode));
    }

    /// A real child process: stopped, it is seen stopped; resumed, it runs and exits by itself.
    #[test]
    fn a_child_is_stopped_and_resumed() {
        let mut child = Command::new("sleep").arg("0.3").spawn().unwrap();
        let stopped = Stopped::stop(child.id());
        assert!(all_threads_stopped(child.id()));
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "a stopped sleep exited"
        );
        stopped.resume();
        assert!(child.wait().unwrap().success());
    }
}

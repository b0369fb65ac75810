//! Datagrams the kernel dropped at a UDP socket because its receive buffer was full: the
//! `drops` column of `/proc/net/udp` and `/proc/net/udp6` (Linux), matched by socket inode.
//!
//! The join server and network server export it as a metric; the simulator reports it for its own
//! sockets, so that a load test does not blame the servers for what it lost itself. Matching by
//! inode counts exactly the sockets asked about, not every socket on the same port. Hand-written:
//! no maintained crate reads this table, and the `protocol` crate does no I/O.

use std::os::fd::AsFd;

/// The inode of a socket, the key of its line in `/proc/net/udp`. `None` if `fstat` fails.
pub fn socket_inode(socket: impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(socket).ok().map(|st| st.st_ino)
}

/// The sum of the `drops` column of the lines of `table` (the text of `/proc/net/udp` or
/// `/proc/net/udp6`) whose socket inode is in `inodes`. Lines that do not parse are skipped.
pub fn drops_in(table: &str, inodes: &[u64]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = f.get(9)?.parse().ok()?;
            let drops: u64 = f.get(12)?.parse().ok()?;
            inodes.contains(&inode).then_some(drops)
        })
        .sum()
}

/// Receive-buffer drops of the sockets with these inodes so far, from `/proc/net/udp` and
/// `/proc/net/udp6`; `None` where neither can be read (not Linux, no `/proc`).
pub fn receive_drops(inodes: &[u64]) -> Option<u64> {
    let mut read_any = false;
    let mut sum = 0;
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(table) = std::fs::read_to_string(path) {
            read_any = true;
            sum += drops_in(&table, inodes);
        }
    }
    read_any.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_of_the_named_sockets_are_summed() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1111 2 0000000000000000 7
  124: 0100007F:9C40 0100007F:06A4 01 00000000:00000000 00:00000000 00000000     0        0 2222 2 0000000000000000 5
  125: 0100007F:9C41 0100007F:06A4 01 00000000:00000000 00:00000000 00000000     0        0 3333 2 0000000000000000 11
  garbage
";
        assert_eq!(drops_in(table, &[2222, 3333]), 16);
        assert_eq!(drops_in(table, &[1111]), 7);
        assert_eq!(drops_in(table, &[4444]), 0);
        assert_eq!(drops_in("", &[1111]), 0);
    }

    /// A real socket on 127.0.0.1 with a small receive buffer, sent more than it holds and never
    /// read: the kernel's count of what it dropped shows up against its inode.
    #[test]
    fn a_full_receive_buffer_is_counted() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .unwrap();
        let inode = socket_inode(&rx).unwrap();
        assert_eq!(receive_drops(&[inode]), Some(0));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[0u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        // On a busy machine the kernel may still hold some of them in its loopback backlog.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut drops = receive_drops(&[inode]).unwrap();
        while drops <= 100 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            drops = receive_drops(&[inode]).unwrap();
        }
        assert!(drops > 100, "{drops} drops");
        assert!(drops <= 200, "{drops} drops");
    }
}

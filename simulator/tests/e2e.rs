//! End to end against the real join server and network server, started in this process on
//! 127.0.0.1 ([`simulator::demo::Servers`]): real sockets between all three parts.

use std::path::Path;

use protocol::ids::NetId;
use protocol::version::MacVersion;
use simulator::demo::Servers;
use simulator::manifest::{self, Params, VersionMix};
use simulator::report::Report;
use simulator::run::{self, RunOptions};
use simulator::scenario::{Scenario, Traffic};

fn storm(manifest: &Path, servers: &Servers, seed: u64, report: &Path) -> Report {
    run::run(&RunOptions {
        manifest: manifest.to_owned(),
        netserver: servers.gwmp(),
        bind: "127.0.0.1".parse().unwrap(),
        gateways: 3,
        traffic: Traffic {
            scenario: Scenario::Storm,
            join_window_us: 2_000_000,
            duration_us: 60_000_000,
            uplink_interval_us: 60_000_000,
            confirmed_ratio: 0.0,
            payload_size: 12,
            loss: 0.0,
            heard_by: 2,
            data_rate: 5,
        },
        duration_given: true,
        seed,
        event_listen: None,
        report_json: Some(report.to_owned()),
        timeseries_csv: None,
        progress: false,
        print_table: false,
    })
    .unwrap()
}

fn assert_every_join_accepted_in_rx1(r: &Report, n: u64) {
    let j = &r.joins;
    assert_eq!(j.accepted, n, "{r:#?}");
    assert_eq!(j.attempted, n, "no retry was needed: {r:#?}");
    assert_eq!(j.accepted_rx1, n, "{r:#?}");
    assert_eq!(
        (j.failed, j.timed_out, j.missed_window),
        (0, 0, 0),
        "{r:#?}"
    );
    assert_eq!(r.downlinks.missed_window, 0);
    assert_eq!(r.downlinks.unmatched, 0);
    assert_eq!(r.gwmp.tx_ack_errors, 0, "no PULL_RESP came too late");
    assert_eq!(r.gwmp.pull_resp, n, "one Join-accept per device");
    assert_eq!(r.devices_joined_at_end, n);
    assert!(r.join_latency_ms.count == n && r.join_latency_ms.max > 0.0);
}

#[test]
fn storm_of_2000_mixed_devices_then_a_second_run_on_the_same_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("fleet.csv");
    let net_id = NetId::new(0).unwrap();
    let entries = manifest::generate(&Params {
        devices: 2000,
        seed: 42,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    for v in [MacVersion::V1_0_3, MacVersion::V1_0_4, MacVersion::V1_1] {
        assert!(
            entries.iter().filter(|e| e.mac_version == v).count() > 500,
            "{v}"
        );
    }
    manifest::write(&manifest_path, &entries).unwrap();
    let servers = Servers::start(&manifest_path, net_id, None).unwrap();

    // First storm: every join accepted, every Join-accept in RX1.
    let json = dir.path().join("first.json");
    let first = storm(&manifest_path, &servers, 1, &json);
    assert_every_join_accepted_in_rx1(&first, 2000);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["joins"]["accepted"], 2000);

    // The fleet state advanced: counters to 1, a JoinNonce recorded for every device.
    let state = manifest::read_state(&manifest::state_path(&manifest_path), &entries).unwrap();
    assert!(state
        .iter()
        .all(|s| s.dev_nonce == 1 && s.join_nonce.is_some()));

    // Second storm, same manifest, same traffic seed: the DevNonces advanced, so the join server
    // (which refuses a replayed or non-increasing DevNonce) accepts every join again, and the 1.1
    // devices accept the new, greater JoinNonces.
    let second = storm(&manifest_path, &servers, 1, &dir.path().join("second.json"));
    assert_every_join_accepted_in_rx1(&second, 2000);
    let state2 = manifest::read_state(&manifest::state_path(&manifest_path), &entries).unwrap();
    for (a, b) in state.iter().zip(&state2) {
        assert_eq!(b.dev_nonce, 2);
        assert!(
            b.join_nonce > a.join_nonce,
            "JoinNonce grows: {a:?} → {b:?}"
        );
    }
    servers.stop().unwrap();
}

#[test]
fn a_replayed_dev_nonce_is_refused_and_the_retry_joins() {
    // The counter-check above matters: roll the state back and the join server refuses the
    // replayed DevNonces (for 1.0.4/1.1 a non-increasing counter, for 1.0.3 a used value).
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("fleet.csv");
    let net_id = NetId::new(0).unwrap();
    let entries = manifest::generate(&Params {
        devices: 30,
        seed: 5,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    manifest::write(&manifest_path, &entries).unwrap();
    let servers = Servers::start(&manifest_path, net_id, None).unwrap();
    let first = storm(&manifest_path, &servers, 1, &dir.path().join("a.json"));
    assert_eq!(first.joins.accepted, 30);
    // Roll the fleet state back, as if it had never been saved.
    let fresh = vec![manifest::NonceState::default(); entries.len()];
    manifest::write_state(&manifest::state_path(&manifest_path), &entries, &fresh).unwrap();
    let r = run::run(&RunOptions {
        manifest: manifest_path.clone(),
        netserver: servers.gwmp(),
        bind: "127.0.0.1".parse().unwrap(),
        gateways: 1,
        traffic: Traffic {
            scenario: Scenario::Storm,
            join_window_us: 500_000,
            duration_us: 20_000_000,
            uplink_interval_us: 60_000_000,
            confirmed_ratio: 0.0,
            payload_size: 12,
            loss: 0.0,
            heard_by: 1,
            data_rate: 5,
        },
        duration_given: true,
        seed: 1,
        event_listen: None,
        report_json: None,
        timeseries_csv: None,
        progress: false,
        print_table: false,
    })
    .unwrap();
    // The first attempt of every device replays its DevNonce 0 (or its first random one): the
    // join server refuses it, nothing comes back and it times out. The retry, after the join
    // duty-cycle back-off, carries the next DevNonce and is accepted.
    assert_eq!(r.joins.timed_out, 30, "{r:#?}");
    assert_eq!(r.joins.attempted, 60, "{r:#?}");
    assert_eq!(r.joins.accepted, 30, "{r:#?}");
    let state = manifest::read_state(&manifest::state_path(&manifest_path), &entries).unwrap();
    assert!(state.iter().all(|s| s.dev_nonce == 2));
    servers.stop().unwrap();
}

#[test]
fn power_restore_rejoins_the_whole_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("fleet.csv");
    let net_id = NetId::new(0).unwrap();
    let entries = manifest::generate(&Params {
        devices: 300,
        seed: 11,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    manifest::write(&manifest_path, &entries).unwrap();
    let servers = Servers::start(&manifest_path, net_id, None).unwrap();
    let r = run::run(&RunOptions {
        manifest: manifest_path.clone(),
        netserver: servers.gwmp(),
        bind: "127.0.0.1".parse().unwrap(),
        gateways: 2,
        traffic: Traffic {
            scenario: Scenario::PowerRestore,
            join_window_us: 1_000_000,
            duration_us: 60_000_000,
            uplink_interval_us: 60_000_000,
            confirmed_ratio: 0.0,
            payload_size: 12,
            loss: 0.0,
            heard_by: 2,
            data_rate: 5,
        },
        duration_given: true,
        seed: 2,
        event_listen: None,
        report_json: None,
        timeseries_csv: None,
        progress: false,
        print_table: false,
    })
    .unwrap();
    // Two joins per device: before the outage and after it, all at once.
    assert_eq!(r.joins.accepted, 600, "{r:#?}");
    assert_eq!(r.devices_joined_at_end, 300);
    assert_eq!((r.joins.missed_window, r.joins.failed), (0, 0), "{r:#?}");
    let state = manifest::read_state(&manifest::state_path(&manifest_path), &entries).unwrap();
    assert!(
        state.iter().all(|s| s.dev_nonce >= 2),
        "the counters survived the outage"
    );
    servers.stop().unwrap();
}

#[test]
fn steady_uplinks_are_all_delivered_and_the_report_counts_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("fleet.csv");
    let net_id = NetId::new(0).unwrap();
    let entries = manifest::generate(&Params {
        devices: 300,
        seed: 13,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    manifest::write(&manifest_path, &entries).unwrap();
    let events = simulator::demo::free_udp_port().unwrap();
    let servers = Servers::start(&manifest_path, net_id, Some(events)).unwrap();
    let r = run::run(&RunOptions {
        manifest: manifest_path.clone(),
        netserver: servers.gwmp(),
        bind: "127.0.0.1".parse().unwrap(),
        gateways: 3,
        traffic: Traffic {
            scenario: Scenario::Steady,
            join_window_us: 1_000_000,
            duration_us: 12_000_000,
            uplink_interval_us: 2_000_000,
            confirmed_ratio: 0.2,
            payload_size: 12,
            loss: 0.0,
            heard_by: 3,
            data_rate: 5,
        },
        duration_given: true,
        seed: 3,
        event_listen: Some(events),
        report_json: None,
        timeseries_csv: None,
        progress: false,
        print_table: false,
    })
    .unwrap();
    servers.stop().unwrap();
    assert_eq!(r.joins.accepted, 300, "{r:#?}");
    let u = &r.uplinks;
    assert!(u.sent > 600, "{r:#?}");
    // Every uplink reached the event sink exactly once, though up to three gateways heard it.
    assert_eq!(u.delivered, Some(u.sent), "{r:#?}");
    assert_eq!((u.lost, u.duplicates), (0, 0), "{r:#?}");
    // Confirmed uplinks were acknowledged in their windows.
    assert!(u.confirmed > 0);
    assert_eq!(u.acked, u.confirmed, "{r:#?}");
    assert_eq!(r.downlinks.missed_window, 0, "{r:#?}");
}

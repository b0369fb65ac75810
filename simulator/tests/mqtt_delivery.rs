//! `simulator run --delivery mqtt://…` against the real join server and network server (in this
//! process, [`simulator::demo::Servers`]) publishing ChirpStack's MQTT events to a real Mosquitto
//! broker: the report's delivery count equals what a plain subscriber received, and the joins
//! arrive as ChirpStack `join` events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::ids::NetId;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use simulator::delivery::MqttDelivery;
use simulator::demo::Servers;
use simulator::manifest::{self, Params, VersionMix};
use simulator::net::EventListen;
use simulator::run::{self, RunOptions};
use simulator::scenario::{Scenario, Traffic};
use testkit::mosquitto::{Mosquitto, PASSWORD, USER};

/// Every (topic, JSON) a plain subscriber to `application/+/device/+/event/+` receives.
fn subscribe(broker: &Mosquitto) -> Arc<Mutex<Vec<(String, serde_json::Value)>>> {
    let mut o = MqttOptions::new("plain-subscriber", "127.0.0.1", broker.port);
    o.set_credentials(USER, PASSWORD);
    let (client, mut conn) = Client::new(o, 64);
    client
        .subscribe("application/+/device/+/event/+", QoS::AtLeastOnce)
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let (ready, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    sink.lock().unwrap().push((p.topic.clone(), v));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    wait.recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
    got
}

#[test]
fn the_mqtt_delivery_count_equals_what_a_plain_subscriber_received() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("fleet.csv");
    let net_id = NetId::new(0).unwrap();
    let entries = manifest::generate(&Params {
        devices: 40,
        seed: 5,
        versions: VersionMix::Mix,
        join_eui: manifest::DEFAULT_JOIN_EUI,
        home_net_id: net_id,
    });
    manifest::write(&manifest_path, &entries).unwrap();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, false);
    let password_file = broker.password_file();
    let plain = subscribe(&broker);

    let mut integration = netserver::integration::config::IntegrationConfig::default();
    integration.mqtt.url = broker.url();
    integration.mqtt.username = USER.into();
    integration.mqtt.password_file = password_file.display().to_string();
    let servers = Servers::start_integrated(&manifest_path, net_id, integration).unwrap();
    let delivery = MqttDelivery::parse(&format!(
        "mqtt://{USER}@127.0.0.1:{}?password_file={}",
        broker.port,
        password_file.display()
    ))
    .unwrap();
    let r = run::run(&RunOptions {
        manifest: manifest_path.clone(),
        netserver: servers.gwmp(),
        more_netservers: Vec::new(),
        bind: "127.0.0.1".parse().unwrap(),
        gateways: 2,
        traffic: Traffic {
            scenario: Scenario::Steady,
            join_window_us: 1_000_000,
            duration_us: 12_000_000,
            uplink_interval_us: 2_000_000,
            confirmed_ratio: 0.0,
            payload_size: 12,
            loss: 0.0,
            heard_by: 2,
            data_rate: 5,
            radio: Default::default(),
        },
        duration_given: true,
        seed: 5,
        event_listen: Some(EventListen::Mqtt(delivery)),
        report_json: None,
        timeseries_csv: None,
        progress: false,
        print_table: false,
        rekey: None,
        radio_model: None,
        forwarder: simulator::gateway::Forwarder::default(),
    })
    .unwrap();
    assert_eq!(r.joins.accepted, 40, "{r:#?}");
    let u = &r.uplinks;
    assert!(u.sent >= 40, "{r:#?}");
    assert_eq!(u.delivered, Some(u.sent), "{r:#?}");
    let distinct_ups = || {
        plain
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with("/event/up"))
            .map(|(_, v)| {
                (
                    v["deviceInfo"]["devEui"].as_str().unwrap().to_owned(),
                    v["fCnt"].as_u64().unwrap(),
                )
            })
            .collect::<HashSet<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (distinct_ups().len() as u64) < u.sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    servers.stop().unwrap();
    assert_eq!(Some(distinct_ups().len() as u64), u.delivered);
    // The joins, as ChirpStack `join` events with the new DevAddr.
    let joins: HashSet<String> = plain
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.ends_with("/event/join"))
        .map(|(_, v)| {
            assert_eq!(v["devAddr"].as_str().unwrap().len(), 8, "{v}");
            assert_eq!(
                v["deviceInfo"]["applicationId"],
                "00000000-0000-0000-0000-000000000000"
            );
            v["deviceInfo"]["devEui"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(joins.len(), 40);
}

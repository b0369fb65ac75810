//! Downlink commands in ChirpStack's shape, from MQTT:
//! `application/{application_id}/device/{dev_eui}/command/down` with
//! `{"devEui":"…","confirmed":false,"fPort":10,"data":"base64"}` (camelCase or snake_case,
//! numbers may be strings, base64 standard or URL-safe). A valid command goes into the same
//! per-device queue as the UDP and HTTP inputs ([`crate::integration::input::queue_downlink`]);
//! a refused one becomes a `log` event of the device, so the application sees why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use protocol::ids::DevEui;
use serde_json::Value;

use crate::integration::chirpstack::Applications;
use crate::integration::emitter::Emit;
use crate::integration::events::{rfc3339, LogLine};
use crate::integration::input::{queue_downlink, ValidDownlinkRequest, MAX_DOWNLINK_PAYLOAD};
use crate::integration::mqtt::CommandHandler;
use crate::state::State;

/// The `{application_id}` and `{dev_eui}` of a topic made from `template`, if it matches.
pub fn match_topic<'t>(template: &str, topic: &'t str) -> Option<(&'t str, &'t str)> {
    let (mut app, mut dev) = (None, None);
    let mut got = topic.split('/');
    for want in template.split('/') {
        let seg = got.next()?;
        match want {
            "{application_id}" => app = Some(seg),
            "{dev_eui}" => dev = Some(seg),
            w if w == seg => {}
            _ => return None,
        }
    }
    if got.next().is_some() {
        return None;
    }
    Some((app?, dev?))
}

/// Why a command was refused: the log event's code and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// ChirpStack's log code.
    pub code: &'static str,
    /// What is wrong.
    pub description: String,
}

impl Refusal {
    fn new(description: impl Into<String>) -> Self {
        Self {
            code: "UNKNOWN",
            description: description.into(),
        }
    }
}

/// Parses a command's payload for the device `topic_dev_eui` names.
pub fn parse_command(
    topic_dev_eui: DevEui,
    payload: &[u8],
) -> Result<ValidDownlinkRequest, Refusal> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| Refusal::new(format!("the command is not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| Refusal::new("the command is not a JSON object"))?;
    let field = |camel: &str, snake: &str| o.get(camel).or_else(|| o.get(snake));
    let dev_eui = field("devEui", "dev_eui")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new("devEui is missing"))?;
    if dev_eui.parse::<DevEui>().ok() != Some(topic_dev_eui) {
        return Err(Refusal::new(format!(
            "devEui {dev_eui:?} is not the topic's device"
        )));
    }
    if field("object", "object").is_some_and(|o| !o.is_null()) {
        return Err(Refusal::new(
            "`object` needs a payload codec, which this network server has none of: send `data`",
        ));
    }
    let confirmed = match field("confirmed", "confirmed") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => return Err(Refusal::new("confirmed is not a boolean")),
    };
    let f_port = match field("fPort", "f_port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|p| (1..=223).contains(p))
    .ok_or_else(|| Refusal::new("fPort must be 1..=223"))?;
    let data = field("data", "data").and_then(Value::as_str).unwrap_or("");
    let payload = decode_base64(data.trim())
        .ok_or_else(|| Refusal::new("data is not base64 (standard or URL-safe)"))?;
    if payload.len() > MAX_DOWNLINK_PAYLOAD {
        return Err(Refusal {
            code: "DOWNLINK_PAYLOAD_SIZE",
            description: format!(
                "payload of {} bytes exceeds {MAX_DOWNLINK_PAYLOAD}",
                payload.len()
            ),
        });
    }
    Ok(ValidDownlinkRequest {
        dev_eui: topic_dev_eui,
        f_port: f_port as u8,
        payload,
        confirmed,
    })
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// The MQTT command handler: checks, queues, and reports refusals as `log` events.
#[derive(Debug)]
pub struct MqttCommands {
    state: Arc<State>,
    template: String,
    applications: Applications,
}

impl MqttCommands {
    /// Commands on topics made from `template`, for devices of `applications`.
    pub fn new(state: Arc<State>, template: &str, applications: Applications) -> Self {
        Self {
            state,
            template: template.to_owned(),
            applications,
        }
    }

    /// The device's tenant: the owner its session names (none: the default application's).
    fn tenant(&self, dev_eui: DevEui) -> Option<String> {
        self.state
            .sessions
            .get(dev_eui)
            .and_then(|s| s.owner.as_deref().cloned())
    }

    fn handle(&self, app: &str, dev_eui: DevEui, payload: &[u8]) -> Result<(), Refusal> {
        let own = self.applications.of(self.tenant(dev_eui).as_deref());
        if app != own {
            return Err(Refusal::new(format!(
                "application {app} is not the device's"
            )));
        }
        let req = parse_command(dev_eui, payload)?;
        let answer = queue_downlink(&self.state, req);
        if answer.ok {
            Ok(())
        } else {
            Err(Refusal::new(answer.error.unwrap_or_default()))
        }
    }

    fn count(&self, result: &str) {
        self.state
            .metrics
            .integration
            .commands
            .with_label_values(&[result])
            .inc();
    }

    /// The device's `log` event of a refused command, through the event log.
    fn log_refusal(&self, dev_eui: DevEui, r: Refusal) {
        let line = LogLine {
            kind: "log".into(),
            dev_eui,
            level: "ERROR".into(),
            code: r.code.into(),
            description: format!("downlink command refused: {}", r.description),
            context: BTreeMap::new(),
            tenant: self.tenant(dev_eui),
            received_at: rfc3339(SystemTime::now()),
        };
        if let Ok(l) = serde_json::to_vec(&line) {
            self.state.data.emitter.emit(Emit {
                events: vec![l],
                ..Emit::default()
            });
        }
    }
}

impl CommandHandler for MqttCommands {
    fn command(&self, topic: &str, payload: &[u8]) {
        let Some((app, dev)) = match_topic(&self.template, topic) else {
            self.count("invalid_topic");
            return;
        };
        let Ok(dev_eui) = dev.parse::<DevEui>() else {
            self.count("invalid_topic");
            return;
        };
        match self.handle(app, dev_eui, payload) {
            Ok(()) => self.count("queued"),
            Err(r) => {
                self.count("refused");
                tracing::info!(%dev_eui, reason = %r.description, "MQTT downlink command refused");
                self.log_refusal(dev_eui, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integration::chirpstack::COMMAND_TOPIC;

    const DEV: DevEui = DevEui::new(0x70B3_D5FF_0000_0001);

    #[test]
    fn command_topics_are_matched_against_the_template() {
        assert_eq!(
            match_topic(
                COMMAND_TOPIC,
                "application/abc/device/70b3d5ff00000001/command/down"
            ),
            Some(("abc", "70b3d5ff00000001"))
        );
        for t in [
            "application/abc/device/70b3d5ff00000001/command/up",
            "application/abc/device/70b3d5ff00000001/command/down/x",
            "application/abc/device",
        ] {
            assert_eq!(match_topic(COMMAND_TOPIC, t), None, "{t}");
        }
    }

    #[test]
    fn commands_in_chirpstacks_shapes_are_accepted() {
        for body in [
            r#"{"devEui":"70b3d5ff00000001","confirmed":true,"fPort":10,"data":"AQID"}"#,
            r#"{"dev_eui":"70B3D5FF00000001","confirmed":"true","f_port":"10","data":"AQID"}"#,
            r#"{"devEui":"70b3d5ff00000001","confirmed":true,"fPort":10,"data":"AQID","id":"x"}"#,
        ] {
            let r = parse_command(DEV, body.as_bytes()).unwrap();
            assert_eq!(
                (r.f_port, r.payload.as_slice(), r.confirmed),
                (10, &[1u8, 2, 3][..], true),
                "{body}"
            );
        }
        let r = parse_command(
            DEV,
            br#"{"devEui":"70b3d5ff00000001","fPort":1,"data":"-_8"}"#,
        )
        .unwrap();
        assert_eq!((r.payload, r.confirmed), (vec![0xFB, 0xFF], false));
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason() {
        let long = format!(
            r#"{{"devEui":"70b3d5ff00000001","fPort":1,"data":"{}"}}"#,
            crate::integration::events::b64(&[0u8; 243])
        );
        for (body, needle) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"fPort":1,"data":""}"#, "devEui is missing"),
            (
                r#"{"devEui":"70b3d5ff00000002","fPort":1,"data":""}"#,
                "not the topic's device",
            ),
            (
                r#"{"devEui":"70b3d5ff00000001","fPort":0,"data":""}"#,
                "1..=223",
            ),
            (
                r#"{"devEui":"70b3d5ff00000001","fPort":1,"data":"!!"}"#,
                "not base64",
            ),
            (
                r#"{"devEui":"70b3d5ff00000001","fPort":1,"object":{"a":1}}"#,
                "codec",
            ),
            (long.as_str(), "exceeds 242"),
        ] {
            let e = parse_command(DEV, body.as_bytes()).unwrap_err();
            assert!(e.description.contains(needle), "{body}: {e:?}");
        }
        assert_eq!(
            parse_command(DEV, long.as_bytes()).unwrap_err().code,
            "DOWNLINK_PAYLOAD_SIZE"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_commands_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_command(DEV, &body);
        }
    }
}

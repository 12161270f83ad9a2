//! The header catalogue: what the simulated events carry beyond their state (the caller's
//! identity, channel variables, SIP headers and SDP, CDR variables), and the events that are not
//! part of a call (`sofia::register`, `BACKGROUND_JOB`, `HEARTBEAT`, `RE_SCHEDULE`).

use super::*;

/// Channel-State-Number of a `CS_*` state.
pub(super) fn state_number(state: &str) -> u64 {
    const STATES: [&str; 13] = [
        "CS_NEW",
        "CS_INIT",
        "CS_ROUTING",
        "CS_SOFT_EXECUTE",
        "CS_EXECUTE",
        "CS_EXCHANGE_MEDIA",
        "CS_PARK",
        "CS_CONSUME_MEDIA",
        "CS_HIBERNATE",
        "CS_RESET",
        "CS_HANGUP",
        "CS_REPORTING",
        "CS_DESTROY",
    ];
    STATES.iter().position(|s| *s == state).unwrap_or(0) as u64
}

pub(super) fn q850(cause: &str) -> &'static str {
    match cause {
        "USER_BUSY" => "17",
        "NO_ANSWER" => "19",
        "CALL_REJECTED" => "21",
        _ => "16",
    }
}

impl Call {
    pub(super) fn caller_pairs(&self, leg: &Leg) -> Vec<(&'static str, String)> {
        let (name, number) = self.caller;
        let t = |v: i64| v.to_string();
        vec![
            ("Caller-Direction", leg.direction().into()),
            ("Caller-Logical-Direction", leg.direction().into()),
            ("Caller-Dialplan", "xml".into()),
            ("Caller-Caller-ID-Name", name.into()),
            ("Caller-Caller-ID-Number", number.into()),
            ("Caller-Orig-Caller-ID-Name", name.into()),
            ("Caller-Orig-Caller-ID-Number", number.into()),
            ("Caller-Callee-ID-Name", "Outbound Call".into()),
            ("Caller-Callee-ID-Number", "esl".into()),
            ("Caller-ANI", number.into()),
            ("Caller-Destination-Number", self.kind.destination().into()),
            ("Caller-Unique-ID", leg.uuid.clone()),
            ("Caller-Source", "mod_loopback".into()),
            ("Caller-Context", "esl".into()),
            ("Caller-Channel-Name", leg.channel_name.clone()),
            ("Caller-Profile-Index", "1".into()),
            ("Caller-Profile-Created-Time", t(leg.created_us)),
            ("Caller-Channel-Created-Time", t(leg.created_us)),
            ("Caller-Channel-Answered-Time", t(leg.answered_us)),
            ("Caller-Channel-Progress-Time", "0".into()),
            ("Caller-Channel-Progress-Media-Time", "0".into()),
            ("Caller-Channel-Hangup-Time", t(leg.hangup_us)),
            ("Caller-Channel-Transfer-Time", "0".into()),
            ("Caller-Channel-Resurrect-Time", "0".into()),
            ("Caller-Channel-Bridged-Time", "0".into()),
            ("Caller-Channel-Last-Hold", "0".into()),
            ("Caller-Channel-Hold-Accum", "0".into()),
            ("Caller-Screen-Bit", "true".into()),
            ("Caller-Privacy-Hide-Name", "false".into()),
            ("Caller-Privacy-Hide-Number", "false".into()),
        ]
    }

    pub(super) fn var_pairs(&self, leg: &Leg) -> Vec<(&'static str, String)> {
        let (name, number) = self.caller;
        let mut v: Vec<(&'static str, String)> = vec![
            ("variable_direction", leg.direction().into()),
            ("variable_uuid", leg.uuid.clone()),
            ("variable_session_id", leg.session_id.to_string()),
            ("variable_channel_name", leg.channel_name.clone()),
            ("variable_read_codec", "PCMA".into()),
            ("variable_read_rate", "8000".into()),
            ("variable_write_codec", "PCMA".into()),
            ("variable_write_rate", "8000".into()),
            ("variable_origination_uuid", if leg.outbound { leg.uuid.clone() } else { leg.other_uuid.clone() }),
            ("variable_origination_caller_id_number", number.into()),
            ("variable_origination_caller_id_name", name.into()),
            ("variable_other_loopback_leg_uuid", leg.other_uuid.clone()),
            ("variable_loopback_leg", if leg.outbound { "A" } else { "B" }.into()),
            ("variable_call_uuid", leg.uuid.clone()),
        ];
        if self.unicode_vars {
            v.push(("variable_esl_tag", "a;b c=d&e f%20g/ü€😀".into()));
            v.push(("variable_esl_note", "Grüße, 東京 & «quotes» 100% sure?".into()));
            v.push(("variable_esl_exported", "a=b&c=d e+f/g".into()));
            v.push(("variable_esl_tabs", "a\tb".into()));
            // Values that hold a literal %XX (an escaped SIP user part, as carriers send):
            // the plain format passes them through unencoded, so only JSON carries them exactly.
            v.push(("variable_sip_from_user", "%2B15551234".into()));
            v.push(("variable_esl_percent", "100%25 a%20b".into()));
        }
        if leg.answered_us > 0 {
            v.push(("variable_endpoint_disposition", "ANSWER".into()));
        }
        if self.sip_vars && (leg.hangup_us > 0 || self.size.padding() > 0) {
            sip_vars(leg, &mut v);
        }
        if leg.hangup_us > 0 {
            self.cdr_vars(leg, &mut v);
        }
        {
            for i in 0..self.size.padding() {
                v.push((
                    padding_name(i),
                    format!("{i:02} lorem ipsum dolor sit amet, consectetur adipiscing elit 100% {}", leg.uuid),
                ));
            }
        }
        v
    }

    pub(super) fn cdr_vars(&self, leg: &Leg, v: &mut Vec<(&'static str, String)>) {
        let cause = leg.hangup_cause.unwrap_or("NORMAL_CLEARING");
        let start = leg.created_us;
        let answer = leg.answered_us;
        let end = leg.hangup_us;
        let bill = if answer > 0 { end - answer } else { 0 };
        let stamp = |us: i64| {
            if us > 0 {
                crate::wire::format_dates(us / 1_000_000).0
            } else {
                String::new()
            }
        };
        let (name, number) = self.caller;
        let mut push = |k: &'static str, val: String| v.push((k, val));
        push("variable_current_application", "park".into());
        push("variable_hangup_cause", cause.into());
        push("variable_hangup_cause_q850", q850(cause).into());
        push("variable_digits_dialed", "none".into());
        push("variable_start_stamp", stamp(start));
        push("variable_profile_start_stamp", stamp(start));
        if answer > 0 {
            push("variable_answer_stamp", stamp(answer));
        }
        push("variable_end_stamp", stamp(end));
        for (k, us) in [
            ("variable_start_epoch", start),
            ("variable_profile_start_epoch", start),
            ("variable_answer_epoch", answer),
            ("variable_end_epoch", end),
        ] {
            push(k, (us / 1_000_000).to_string());
        }
        for (k, us) in [
            ("variable_start_uepoch", start),
            ("variable_profile_start_uepoch", start),
            ("variable_answer_uepoch", answer),
            ("variable_end_uepoch", end),
        ] {
            push(k, us.to_string());
        }
        for k in [
            "variable_bridge_epoch",
            "variable_bridge_uepoch",
            "variable_last_hold_epoch",
            "variable_last_hold_uepoch",
            "variable_hold_accum_seconds",
            "variable_hold_accum_usec",
            "variable_hold_accum_ms",
            "variable_resurrect_epoch",
            "variable_resurrect_uepoch",
            "variable_progress_epoch",
            "variable_progress_uepoch",
            "variable_progress_media_epoch",
            "variable_progress_media_uepoch",
        ] {
            push(k, "0".into());
        }
        push("variable_last_app", "park".into());
        push("variable_caller_id", format!("\"{name}\" <{number}>"));
        let dur = end - start;
        for (k, val) in [
            ("variable_duration", dur / 1_000_000),
            ("variable_billsec", bill / 1_000_000),
            ("variable_progresssec", 0),
            ("variable_answersec", (answer - start).max(0) / 1_000_000),
            ("variable_waitsec", (answer - start).max(0) / 1_000_000),
            ("variable_progress_mediasec", 0),
            ("variable_flow_billsec", bill / 1_000_000),
            ("variable_mduration", dur / 1000),
            ("variable_billmsec", bill / 1000),
            ("variable_progressmsec", 0),
            ("variable_answermsec", (answer - start).max(0) / 1000),
            ("variable_waitmsec", (answer - start).max(0) / 1000),
            ("variable_progress_mediamsec", 0),
            ("variable_flow_billmsec", bill / 1000),
            ("variable_uduration", dur),
            ("variable_billusec", bill),
            ("variable_progressusec", 0),
            ("variable_answerusec", (answer - start).max(0)),
            ("variable_waitusec", (answer - start).max(0)),
            ("variable_progress_mediausec", 0),
            ("variable_flow_billusec", bill),
        ] {
            push(k, val.to_string());
        }
        push("variable_is_loopback", "1".into());
    }
}

/// SIP-ish variables (an SDP with CRLFs, SIP headers) that make some calls' events big.
pub(super) fn sip_vars(leg: &Leg, v: &mut Vec<(&'static str, String)>) {
    let sdp = format!(
        "v=0\r\no=FreeSWITCH 1795370000 1795370001 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 16384 RTP/AVP 8 0 101 13\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=rtpmap:13 CN/8000\r\na=ptime:20\r\na=sendrecv\r\n\
         a=rtcp:16385 IN IP4 127.0.0.1\r\na=x-call:{}\r\n",
        leg.uuid
    );
    v.push(("variable_switch_r_sdp", sdp.clone()));
    v.push(("variable_switch_l_sdp", sdp));
    v.push(("variable_sip_call_id", format!("{}@127.0.0.1", leg.other_uuid)));
    v.push(("variable_sip_from_uri", "1000@127.0.0.1:5060".into()));
    v.push(("variable_sip_to_uri", "park@127.0.0.1:5060;transport=udp".into()));
    v.push(("variable_sip_contact_uri", "mod_sofia@127.0.0.1:5060".into()));
    v.push(("variable_sip_user_agent", "FreeSWITCH-mod_sofia/1.11.1-release~64bit".into()));
    v.push((
        "variable_sip_allow",
        "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, INFO, UPDATE, REGISTER, REFER, NOTIFY".into(),
    ));
    v.push(("variable_sip_h_X-Account", "acct=42&plan=gold+extra; note=\"100% ok\"".into()));
    v.push(("variable_rtp_local_sdp_str", "m=audio 16384 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\n".into()));
    v.push(("variable_rtp_use_codec_string", "PCMA,PCMU,G722,OPUS".into()));
    v.push(("variable_rtp_audio_in_raw_bytes", "160320".into()));
    v.push(("variable_rtp_audio_in_media_bytes", "160320".into()));
    v.push(("variable_rtp_audio_in_packet_count", "1002".into()));
    v.push(("variable_rtp_audio_out_raw_bytes", "159840".into()));
    v.push(("variable_rtp_audio_out_packet_count", "999".into()));
    v.push(("variable_rtp_audio_in_mos", "4.50".into()));
    v.push(("variable_rtp_audio_in_quality_percentage", "100.00".into()));
}

pub(super) fn call_state_number(call_state: &str) -> u64 {
    match call_state {
        "DOWN" => 0,
        "DIALING" => 1,
        "RINGING" => 2,
        "EARLY" => 3,
        "ACTIVE" => 4,
        "HELD" => 5,
        "RING_WAIT" => 6,
        "HANGUP" => 7,
        _ => 8,
    }
}

/// A `CUSTOM sofia::register` event.
pub(super) fn register_event(ids: &mut Rng) -> SimEvent {
    let user = 1000 + ids.below(50);
    let items = vec![
        Item::H("profile-name", Val::Static("internal")),
        Item::H("from-user", Val::Owned(user.to_string())),
        Item::H("from-host", Val::Static("127.0.0.1")),
        Item::H("presence-hosts", Val::Static("127.0.0.1")),
        Item::H("contact", Val::Owned(format!("\"Desk {user}\" <sip:{user}@192.0.2.10:5060;transport=udp>"))),
        Item::H("call-id", Val::Owned(ids.uuid_v4())),
        Item::H("rpid", Val::Static("unknown")),
        Item::H("status", Val::Static("Registered(UDP)")),
        Item::H("expires", Val::Num(3600)),
        Item::H("to-user", Val::Owned(user.to_string())),
        Item::H("to-host", Val::Static("127.0.0.1")),
        Item::H("network-ip", Val::Static("192.0.2.10")),
        Item::H("network-port", Val::Num(5060)),
        Item::H("username", Val::Owned(user.to_string())),
        Item::H("realm", Val::Static("127.0.0.1")),
        Item::H("user-agent", Val::Static("Zoë Phone/2.0 (東京)")),
    ];
    let calling = ("sofia_reg.c", "sofia_reg_handle_register_token", 2136);
    SimEvent {
        name: "CUSTOM",
        subclass: Some("sofia::register"),
        calling,
        sequence: 0,
        items,
        body: None,
        traffic: true,
    }
}

/// A `BACKGROUND_JOB` event as `mod_event_socket`'s `api_exec` fires it.
pub fn background_job(job_uuid: &str, command: &str, arg: &str, body: String) -> SimEvent {
    let mut items = vec![
        Item::H("Job-UUID", Val::Owned(job_uuid.to_owned())),
        Item::H("Job-Command", Val::Owned(command.to_owned())),
    ];
    if !arg.is_empty() {
        items.push(Item::H("Job-Command-Arg", Val::Owned(arg.to_owned())));
    }
    let calling = ("mod_event_socket.c", "api_exec", 1569);
    SimEvent { name: "BACKGROUND_JOB", subclass: None, calling, sequence: 0, items, body: Some(body), traffic: false }
}

/// The `HEARTBEAT` and `RE_SCHEDULE` events FreeSWITCH fires every 20 s.
pub fn heartbeat(uptime_us: i64, sessions: u64, calls_started: u64, heartbeat_secs: u64) -> [SimEvent; 2] {
    let items = vec![
        Item::H("Event-Info", Val::Static("System Ready")),
        Item::H("Up-Time", Val::Owned(uptime_text(uptime_us))),
        Item::H("FreeSWITCH-Version", Val::Static("1.11.1-release~64bit")),
        Item::H("Uptime-msec", Val::Num((uptime_us / 1000) as u64)),
        Item::H("Session-Count", Val::Num(sessions)),
        Item::H("Max-Sessions", Val::Num(3000)),
        Item::H("Session-Per-Sec", Val::Num(2000)),
        Item::H("Session-Per-Sec-Last", Val::Num(0)),
        Item::H("Session-Per-Sec-Max", Val::Num(1500)),
        Item::H("Session-Per-Sec-FiveMin", Val::Num(0)),
        Item::H("Session-Since-Startup", Val::Num(calls_started * 2)),
        Item::H("Session-Peak-Max", Val::Num(sessions)),
        Item::H("Session-Peak-FiveMin", Val::Num(sessions)),
        Item::H("Idle-CPU", Val::Static("98.333333")),
    ];
    let beat = SimEvent {
        name: "HEARTBEAT",
        subclass: None,
        calling: ("switch_core.c", "send_heartbeat", 95),
        sequence: 0,
        items,
        body: None,
        traffic: true,
    };
    let next_run = (now_us() / 1_000_000) as u64 + heartbeat_secs;
    let items = vec![
        Item::H("Task-ID", Val::Num(1)),
        Item::H("Task-Desc", Val::Static("heartbeat")),
        Item::H("Task-Group", Val::Static("core")),
        Item::H("Task-Runtime", Val::Num(next_run)),
    ];
    let schedule = SimEvent {
        name: "RE_SCHEDULE",
        subclass: None,
        calling: ("switch_scheduler.c", "switch_scheduler_execute", 73),
        sequence: 0,
        items,
        body: None,
        traffic: true,
    };
    [beat, schedule]
}

/// `0 years, 0 days, 0 hours, 9 minutes, 39 seconds, 436 milliseconds, 94 microseconds`.
pub fn uptime_text(uptime_us: i64) -> String {
    let us = uptime_us.max(0);
    let secs = us / 1_000_000;
    format!(
        "{} years, {} days, {} hours, {} minutes, {} seconds, {} milliseconds, {} microseconds",
        secs / (365 * 86_400),
        secs % (365 * 86_400) / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
        us % 1_000_000 / 1000,
        us % 1000
    )
}

//! A call's script (the steps of its two legs, with their delays) and the events its steps
//! become, modelled on the loopback calls of the plain capture.

use super::headers::{call_state_number, register_event, state_number};
use super::*;

impl Leg {
    pub(super) fn new(
        uuid: String,
        other_uuid: String,
        channel_name: String,
        outbound: bool,
        session_id: u64,
        now: i64,
    ) -> Leg {
        let empty = Block::new(Vec::new());
        Leg {
            uuid,
            other_uuid,
            channel_name,
            outbound,
            session_id,
            state: "CS_NEW",
            call_state: "DOWN",
            answer_state: "ringing",
            hangup_cause: None,
            created_us: now,
            answered_us: 0,
            hangup_us: 0,
            app_uuid: String::new(),
            ident: empty.clone(),
            codec: empty.clone(),
            caller: empty.clone(),
            vars: empty,
        }
    }

    pub(super) fn direction(&self) -> &'static str {
        if self.outbound {
            "outbound"
        } else {
            "inbound"
        }
    }
}

const CALLING_STATE: Calling = ("switch_channel.c", "switch_channel_perform_set_running_state", 2409);

impl Call {
    pub(super) fn register(ids: &mut Rng) -> Call {
        let mut steps = VecDeque::new();
        steps.push_back((0, What::Register));
        Call {
            kind: Kind::Register,
            size: EventSize::Avg,
            legs: Vec::new(),
            steps,
            job_uuid: ids.uuid_v4(),
            job_arg: String::new(),
            caller: CALLERS[0],
            unicode_vars: false,
            array_header: false,
            sip_vars: false,
            cause: "NORMAL_CLEARING",
            conf_uuid: String::new(),
        }
    }

    /// Fills `steps` with the lifecycle of this call (delays in virtual microseconds).
    pub(super) fn script(&mut self, rng: &mut Rng) {
        let s = &mut self.steps;
        let mut push = |delay: u64, what: What| s.push_back((delay, what));
        let fast = |rng: &mut Rng| rng.range(20, 400);
        push(0, What::Api);
        for what in [
            What::Codec(0),
            What::Outgoing(0),
            What::State(0, "CS_INIT"),
            What::Codec(1),
            What::Create(0),
            What::Originate(0),
            What::State(0, "CS_ROUTING"),
            What::State(0, "CS_CONSUME_MEDIA"),
            What::State(1, "CS_INIT"),
            What::Create(1),
            What::CallState(1, "RINGING"),
            What::State(1, "CS_ROUTING"),
            What::State(1, "CS_EXECUTE"),
        ] {
            push(fast(rng), what);
        }
        if matches!(self.kind, Kind::Busy | Kind::NoAnswer) {
            let (cause, ring) = match self.kind {
                Kind::Busy => ("USER_BUSY", rng.range(50_000, 400_000)),
                _ => ("NO_ANSWER", rng.range(2_000_000, 4_000_000)),
            };
            self.cause = cause;
            push(ring, What::Hangup(1, cause));
            for what in [
                What::State(1, "CS_HANGUP"),
                What::CallState(1, "HANGUP"),
                What::Hangup(0, cause),
                What::State(0, "CS_HANGUP"),
                What::CallState(0, "HANGUP"),
                What::State(1, "CS_REPORTING"),
                What::HangupComplete(1),
                What::State(0, "CS_REPORTING"),
                What::HangupComplete(0),
                What::Destroy(1),
                What::State(1, "CS_DESTROY"),
                What::Destroy(0),
                What::State(0, "CS_DESTROY"),
                What::BgJob,
            ] {
                push(fast(rng), what);
            }
            return;
        }
        push(rng.range(200_000, 3_000_000), What::Execute(1, App::Answer));
        for what in [
            What::Answer(0),
            What::CallState(0, "ACTIVE"),
            What::Answer(1),
            What::CallState(1, "ACTIVE"),
            What::ExecComplete(1, App::Answer),
            What::BgJob,
            What::CallUpdate(0),
            What::State(0, "CS_EXECUTE"),
        ] {
            push(fast(rng), what);
        }
        let last_app = match self.kind {
            Kind::Tone => {
                push(fast(rng), What::Execute(1, App::Playback));
                push(fast(rng), What::PlaybackStart(1));
                push(rng.range(1_000_000, 3_000_000), What::PlaybackStop(1));
                push(fast(rng), What::ExecComplete(1, App::Playback));
                push(fast(rng), What::Execute(1, App::Park));
                push(fast(rng), What::Park(1));
                App::Park
            }
            Kind::Conference => {
                push(fast(rng), What::Execute(1, App::Conference));
                push(fast(rng), What::Conf(1, "add-member"));
                push(fast(rng), What::Conf(1, "floor-change"));
                push(rng.range(100_000, 900_000), What::Conf(1, "start-talking"));
                push(rng.range(500_000, 2_000_000), What::Conf(1, "stop-talking"));
                App::Conference
            }
            _ => {
                push(fast(rng), What::Execute(1, App::Park));
                push(fast(rng), What::Park(1));
                App::Park
            }
        };
        if self.kind == Kind::Dtmf {
            for digit in ["1", "2", "3", "4", "#"] {
                push(rng.range(150_000, 400_000), What::Dtmf(1, digit));
            }
        }
        push(rng.range(1_000_000, 8_000_000), What::Hangup(0, "NORMAL_CLEARING"));
        let mut tail =
            vec![What::State(0, "CS_HANGUP"), What::CallState(0, "HANGUP"), What::Hangup(1, "NORMAL_CLEARING")];
        match last_app {
            App::Park => tail.push(What::Unpark(1)),
            App::Conference => tail.push(What::Conf(1, "del-member")),
            _ => {}
        }
        tail.extend([
            What::ExecComplete(1, last_app),
            What::State(0, "CS_REPORTING"),
            What::HangupComplete(0),
            What::State(1, "CS_HANGUP"),
            What::CallState(1, "HANGUP"),
            What::State(1, "CS_REPORTING"),
            What::HangupComplete(1),
            What::Destroy(1),
            What::State(1, "CS_DESTROY"),
            What::Destroy(0),
            What::State(0, "CS_DESTROY"),
        ]);
        for what in tail {
            push(fast(rng), what);
        }
    }

    /// Applies `what` to the call state and builds its event.
    pub(super) fn event(&mut self, what: What, ids: &mut Rng) -> SimEvent {
        match what {
            What::Api => self.api_event(),
            What::BgJob => self.bgjob_event(),
            What::Register => register_event(ids),
            What::Codec(l) => self.codec_event(l),
            What::Outgoing(l) => self.leg_event(
                "CHANNEL_OUTGOING",
                ("switch_core_session.c", "switch_core_session_outgoing_channel", 768),
                l,
                Vec::new(),
                false,
                Vec::new(),
            ),
            What::State(l, state) => {
                self.legs[l].state = state;
                self.leg_event("CHANNEL_STATE", CALLING_STATE, l, Vec::new(), false, Vec::new())
            }
            What::Create(l) => {
                self.legs[l].state = "CS_INIT";
                self.leg_event(
                    "CHANNEL_CREATE",
                    ("switch_core_state_machine.c", "switch_core_session_run", 626),
                    l,
                    Vec::new(),
                    true,
                    Vec::new(),
                )
            }
            What::Originate(l) => self.leg_event(
                "CHANNEL_ORIGINATE",
                ("switch_core_state_machine.c", "switch_core_session_run", 632),
                l,
                Vec::new(),
                true,
                Vec::new(),
            ),
            What::CallState(l, call_state) => self.callstate_event(l, call_state),
            What::Execute(l, app) => {
                self.legs[l].app_uuid = ids.uuid_v4();
                let post = self.app_items(l, app, false);
                self.leg_event(
                    "CHANNEL_EXECUTE",
                    ("switch_core_session.c", "switch_core_session_exec", 2949),
                    l,
                    Vec::new(),
                    true,
                    post,
                )
            }
            What::ExecComplete(l, app) => {
                let post = self.app_items(l, app, true);
                self.leg_event(
                    "CHANNEL_EXECUTE_COMPLETE",
                    ("switch_core_session.c", "switch_core_session_exec", 2972),
                    l,
                    Vec::new(),
                    true,
                    post,
                )
            }
            What::Answer(l) => self.answer_event(l),
            What::CallUpdate(l) => self.leg_event(
                "CALL_UPDATE",
                ("switch_channel.c", "switch_channel_flip_cid", 3279),
                l,
                vec![Item::H("Direction", Val::Static("RECV"))],
                true,
                Vec::new(),
            ),
            What::Park(l) => self.leg_event(
                "CHANNEL_PARK",
                ("switch_ivr.c", "switch_ivr_park", 1002),
                l,
                Vec::new(),
                true,
                Vec::new(),
            ),
            What::Unpark(l) => self.leg_event(
                "CHANNEL_UNPARK",
                ("switch_ivr.c", "switch_ivr_park", 1213),
                l,
                Vec::new(),
                true,
                Vec::new(),
            ),
            What::PlaybackStart(l) => self.playback_event(l, false),
            What::PlaybackStop(l) => self.playback_event(l, true),
            What::Dtmf(l, digit) => {
                let post = vec![
                    Item::H("DTMF-Digit", Val::Static(digit)),
                    Item::H("DTMF-Duration", Val::Num(2000)),
                    Item::H("DTMF-Source", Val::Static(if digit == "#" { "APP" } else { "RTP" })),
                ];
                self.leg_event(
                    "DTMF",
                    ("switch_channel.c", "switch_channel_dequeue_dtmf", 678),
                    l,
                    Vec::new(),
                    false,
                    post,
                )
            }
            What::Conf(l, action) => self.conference_event(l, action),
            What::Hangup(l, cause) => self.hangup_event(l, cause),
            What::HangupComplete(l) => {
                let pre = vec![Item::H("Hangup-Cause", Val::Static(self.cause))];
                let mut ev = self.leg_event(
                    "CHANNEL_HANGUP_COMPLETE",
                    ("switch_core_state_machine.c", "switch_core_session_reporting_state", 943),
                    l,
                    pre,
                    true,
                    Vec::new(),
                );
                if self.legs[l].outbound && self.array_header {
                    ev.items.push(Item::H(
                        "variable_esl_list",
                        Val::Array(vec!["alpha".into(), "beta gamma".into(), "Zoë".into()]),
                    ));
                }
                ev
            }
            What::Destroy(l) => self.leg_event(
                "CHANNEL_DESTROY",
                ("switch_core_session.c", "switch_core_session_perform_destroy", 1588),
                l,
                Vec::new(),
                true,
                Vec::new(),
            ),
        }
    }

    /// The common shape of a channel event: state, identity, codec, caller profile, variables.
    pub(super) fn leg_event(
        &self,
        name: &'static str,
        calling: Calling,
        l: usize,
        pre: Vec<Item>,
        with_vars: bool,
        post: Vec<Item>,
    ) -> SimEvent {
        let leg = &self.legs[l];
        let mut items = pre;
        items.reserve(12 + post.len());
        items.push(Item::H("Channel-State", Val::Static(leg.state)));
        items.push(Item::H("Channel-Call-State", Val::Static(leg.call_state)));
        items.push(Item::H("Channel-State-Number", Val::Num(state_number(leg.state))));
        items.push(Item::Block(leg.ident.clone()));
        items.push(Item::H("Answer-State", Val::Static(leg.answer_state)));
        if let Some(cause) = leg.hangup_cause {
            items.push(Item::H("Hangup-Cause", Val::Static(cause)));
        }
        let full = match self.size {
            EventSize::Small => matches!(name, "CHANNEL_CREATE" | "CHANNEL_HANGUP_COMPLETE"),
            _ => true,
        };
        if full {
            items.push(Item::Block(leg.codec.clone()));
            items.push(Item::Block(leg.caller.clone()));
            if with_vars || self.size.padding() > 0 {
                items.push(Item::Block(leg.vars.clone()));
            }
        }
        items.extend(post);
        SimEvent { name, subclass: None, calling, sequence: 0, items, body: None, traffic: true }
    }

    pub(super) fn codec_event(&self, l: usize) -> SimEvent {
        let leg = &self.legs[l];
        let items = vec![
            Item::H("Channel-State", Val::Static(leg.state)),
            Item::H("Channel-Call-State", Val::Static(leg.call_state)),
            Item::H("Channel-State-Number", Val::Num(state_number(leg.state))),
            Item::Block(leg.ident.clone()),
            Item::H("Answer-State", Val::Static(leg.answer_state)),
            Item::Block(leg.codec.clone()),
            Item::H("channel-read-codec-name", Val::Static("PCMA")),
            Item::H("channel-read-codec-rate", Val::Num(8000)),
            Item::H("channel-read-codec-bit-rate", Val::Num(64000)),
        ];
        let calling = ("switch_core_codec.c", "switch_core_session_set_read_codec", 300);
        SimEvent { name: "CODEC", subclass: None, calling, sequence: 0, items, body: None, traffic: true }
    }

    pub(super) fn callstate_event(&mut self, l: usize, call_state: &'static str) -> SimEvent {
        let original = std::mem::replace(&mut self.legs[l].call_state, call_state);
        let pre = vec![
            Item::H("Original-Channel-Call-State", Val::Static(original)),
            Item::H("Channel-Call-State-Number", Val::Num(call_state_number(call_state))),
        ];
        let calling = ("switch_channel.c", "switch_channel_perform_set_callstate", 302);
        self.leg_event("CHANNEL_CALLSTATE", calling, l, pre, false, Vec::new())
    }

    pub(super) fn answer_event(&mut self, l: usize) -> SimEvent {
        let leg = &mut self.legs[l];
        leg.answer_state = "answered";
        leg.answered_us = now_us();
        self.rebuild_blocks(l);
        let mut post = Vec::new();
        if self.array_header {
            post.push(Item::H(
                "variable_esl_list",
                Val::Array(vec!["alpha".into(), "beta gamma".into(), "Zoë".into()]),
            ));
        }
        let calling = ("switch_channel.c", "switch_channel_perform_mark_answered", 3848);
        self.leg_event("CHANNEL_ANSWER", calling, l, Vec::new(), true, post)
    }

    pub(super) fn hangup_event(&mut self, l: usize, cause: &'static str) -> SimEvent {
        let leg = &mut self.legs[l];
        leg.answer_state = "hangup";
        leg.hangup_cause = Some(cause);
        leg.hangup_us = now_us();
        self.rebuild_blocks(l);
        let calling = ("switch_channel.c", "switch_channel_perform_hangup", 3447);
        self.leg_event("CHANNEL_HANGUP", calling, l, Vec::new(), true, Vec::new())
    }

    pub(super) fn playback_event(&self, l: usize, stop: bool) -> SimEvent {
        let path = App::Playback.data().unwrap_or_default();
        let mut post = vec![
            Item::H("Playback-File-Type", Val::Static("tone_stream")),
            Item::H("Playback-File-Path", Val::Static(path)),
        ];
        let (name, line) = if stop {
            post.push(Item::H("Playback-Status", Val::Static("done")));
            ("PLAYBACK_STOP", 2023)
        } else {
            ("PLAYBACK_START", 1649)
        };
        self.leg_event(name, ("switch_ivr_play_say.c", "switch_ivr_play_file", line), l, Vec::new(), true, post)
    }

    pub(super) fn app_items(&self, l: usize, app: App, complete: bool) -> Vec<Item> {
        let mut post = Vec::with_capacity(6);
        if let Some(data) = app.data() {
            post.push(Item::H("variable_current_application_data", Val::Static(data)));
        }
        post.push(Item::H("variable_current_application", Val::Static(app.name())));
        post.push(Item::H("Application", Val::Static(app.name())));
        if let Some(data) = app.data() {
            post.push(Item::H("Application-Data", Val::Static(data)));
        }
        if complete {
            post.push(Item::H("Application-Response", Val::Static("_none_")));
        }
        post.push(Item::H("Application-UUID", Val::Owned(self.legs[l].app_uuid.clone())));
        post
    }

    pub(super) fn conference_event(&self, l: usize, action: &'static str) -> SimEvent {
        let leg = &self.legs[l];
        let mut items = vec![
            Item::H("Conference-Name", Val::Static("esltest")),
            Item::H("Conference-Domain", Val::Static("127.0.0.1")),
            Item::H("Conference-Size", Val::Num(1)),
            Item::H("Conference-Ghosts", Val::Num(0)),
            Item::H("Conference-Profile-Name", Val::Static("esl")),
            Item::H("Conference-Unique-ID", Val::Owned(self.conf_uuid.clone())),
            Item::H("Channel-State", Val::Static(leg.state)),
            Item::H("Channel-Call-State", Val::Static(leg.call_state)),
            Item::H("Channel-State-Number", Val::Num(state_number(leg.state))),
            Item::Block(leg.ident.clone()),
            Item::H("Answer-State", Val::Static(leg.answer_state)),
            Item::Block(leg.caller.clone()),
            Item::H("Member-ID", Val::Num(leg.session_id % 1000)),
            Item::H("Member-Type", Val::Static("member")),
            Item::H("Action", Val::Static(action)),
        ];
        if action == "floor-change" {
            items.push(Item::H("Old-ID", Val::Static("none")));
            items.push(Item::H("New-ID", Val::Num(leg.session_id % 1000)));
        }
        let calling = ("conference_member.c", "conference_member_add", 962);
        SimEvent {
            name: "CUSTOM",
            subclass: Some("conference::maintenance"),
            calling,
            sequence: 0,
            items,
            body: None,
            traffic: true,
        }
    }

    pub(super) fn api_event(&self) -> SimEvent {
        let items = vec![
            Item::H("API-Command", Val::Static("originate")),
            Item::H("API-Command-Argument", Val::Owned(self.job_arg.clone())),
        ];
        let calling = ("switch_loadable_module.c", "switch_api_execute", 2954);
        SimEvent { name: "API", subclass: None, calling, sequence: 0, items, body: None, traffic: true }
    }

    pub(super) fn bgjob_event(&self) -> SimEvent {
        let body = match self.kind {
            Kind::Busy | Kind::NoAnswer => format!("-ERR {}\n", self.cause),
            _ => format!("+OK {}\n", self.legs[0].uuid),
        };
        let mut ev = background_job(&self.job_uuid, "originate", &self.job_arg, body);
        ev.traffic = true;
        ev
    }

    /// Rebuilds the shared header blocks of leg `l` from its current state.
    pub(super) fn rebuild_blocks(&mut self, l: usize) {
        let leg = &self.legs[l];
        let ident = Block::new(vec![
            ("Channel-Name", leg.channel_name.clone()),
            ("Unique-ID", leg.uuid.clone()),
            ("Call-Direction", leg.direction().into()),
            ("Presence-Call-Direction", leg.direction().into()),
            ("Channel-HIT-Dialplan", (!leg.outbound).to_string()),
            ("Channel-Call-UUID", leg.uuid.clone()),
        ]);
        let codec = Block::new(vec![
            ("Channel-Read-Codec-Name", "PCMA".into()),
            ("Channel-Read-Codec-Rate", "8000".into()),
            ("Channel-Read-Codec-Bit-Rate", "64000".into()),
            ("Channel-Write-Codec-Name", "PCMA".into()),
            ("Channel-Write-Codec-Rate", "8000".into()),
            ("Channel-Write-Codec-Bit-Rate", "64000".into()),
        ]);
        let caller = Block::new(self.caller_pairs(leg));
        let vars = Block::new(self.var_pairs(leg));
        let leg = &mut self.legs[l];
        leg.ident = ident;
        leg.codec = codec;
        leg.caller = caller;
        leg.vars = vars;
    }
}

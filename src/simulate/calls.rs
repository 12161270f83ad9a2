//! Call traffic: interleaved two-leg call lifecycles, modelled on the loopback calls of
//! `esl-captures/plain.esl`, plus the events around them (the `API` / `BACKGROUND_JOB` pair of
//! the `bgapi originate` that starts each call, `sofia::register` and `conference::maintenance`
//! CUSTOM events, heartbeats).
//!
//! Calls run on a virtual clock in microseconds: each call is a script of steps with delays, and a
//! heap hands out the next step of whichever call is due first, so events of one call stay in
//! order while calls interleave. The driver decides how virtual time maps to real time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use super::wire::{Block, Calling, Item, Rng, SimEvent, Val};
use crate::envelope::now_us;

/// How big the channel events are (`--event-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EventSize {
    /// ~1 KB: channel events carry only the channel state and identity.
    Small,
    /// ~2.3 KB, like real FreeSWITCH channel events.
    #[default]
    Avg,
    /// ~4.7 KB of entry JSON: every channel event carries a dozen more percent-encoded
    /// variables.
    Medium,
    /// ~6 KB: every channel event carries a long variable list.
    Large,
    /// ~10 KB of entry JSON, like a CHANNEL_HANGUP_COMPLETE with its channel variables: every
    /// channel event carries a very long variable list.
    Xl,
}

impl EventSize {
    /// Padding variables added to every channel event's variable list.
    fn padding(self) -> usize {
        match self {
            EventSize::Small | EventSize::Avg => 0,
            EventSize::Medium => 12,
            EventSize::Large => 24,
            EventSize::Xl => 60,
        }
    }
}

/// `variable_sim_padding_NN`: distinct names, since an entry keeps only the first of a name.
fn padding_name(i: usize) -> &'static str {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..EventSize::Xl.padding())
            .map(|i| &*Box::leak(format!("variable_sim_padding_{i:02}").into_boxed_str()))
            .collect()
    });
    names[i]
}

/// Caller names and numbers; several need percent-encoding or are not ASCII.
const CALLERS: &[(&str, &str)] = &[
    ("Alice Martin", "1001"),
    ("Zoë O'Brien & co: 100%", "+4915112345678"),
    ("東京 Office", "+81312345678"),
    ("Smith+Jones Ltd", "1003"),
    ("Bob", "1004"),
    ("Grüße, «quotes» 100% sure?", "1005"),
    ("Carol #7; <desk>", "1006"),
    ("Dave", "1007"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Park,
    Tone,
    Dtmf,
    Busy,
    NoAnswer,
    Conference,
    Register,
}

impl Kind {
    fn pick(rng: &mut Rng) -> Kind {
        match rng.below(100) {
            0..=37 => Kind::Park,
            38..=62 => Kind::Tone,
            63..=77 => Kind::Dtmf,
            78..=85 => Kind::Busy,
            86..=92 => Kind::NoAnswer,
            _ => Kind::Conference,
        }
    }

    fn destination(self) -> &'static str {
        match self {
            Kind::Park | Kind::Dtmf | Kind::Register => "park",
            Kind::Tone => "tone",
            Kind::Busy => "busy",
            Kind::NoAnswer => "ring",
            Kind::Conference => "conf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Answer,
    Park,
    Playback,
    Conference,
}

impl App {
    fn name(self) -> &'static str {
        match self {
            App::Answer => "answer",
            App::Park => "park",
            App::Playback => "playback",
            App::Conference => "conference",
        }
    }

    fn data(self) -> Option<&'static str> {
        match self {
            App::Playback => Some("tone_stream://%(200,100,440);loops=5"),
            App::Conference => Some("esltest@esl"),
            _ => None,
        }
    }
}

/// One step of a call script; `usize` is the leg (0 = A, outbound; 1 = B, inbound).
#[derive(Debug, Clone, Copy)]
enum What {
    Api,
    BgJob,
    Register,
    Codec(usize),
    Outgoing(usize),
    State(usize, &'static str),
    Create(usize),
    Originate(usize),
    CallState(usize, &'static str),
    Execute(usize, App),
    ExecComplete(usize, App),
    Answer(usize),
    CallUpdate(usize),
    Park(usize),
    Unpark(usize),
    PlaybackStart(usize),
    PlaybackStop(usize),
    Dtmf(usize, &'static str),
    Conf(usize, &'static str),
    Hangup(usize, &'static str),
    HangupComplete(usize),
    Destroy(usize),
}

/// A channel: its identity and the state its events report.
#[derive(Debug)]
struct Leg {
    uuid: String,
    other_uuid: String,
    channel_name: String,
    outbound: bool,
    session_id: u64,
    state: &'static str,
    call_state: &'static str,
    answer_state: &'static str,
    hangup_cause: Option<&'static str>,
    created_us: i64,
    answered_us: i64,
    hangup_us: i64,
    app_uuid: String,
    ident: Rc<Block>,
    codec: Rc<Block>,
    caller: Rc<Block>,
    vars: Rc<Block>,
}

#[derive(Debug)]
struct Call {
    kind: Kind,
    size: EventSize,
    legs: Vec<Leg>,
    steps: VecDeque<(u64, What)>,
    job_uuid: String,
    job_arg: String,
    caller: (&'static str, &'static str),
    unicode_vars: bool,
    array_header: bool,
    sip_vars: bool,
    cause: &'static str,
    conf_uuid: String,
}

/// What the traffic generator needs to know.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub cps: f64,
    pub calls: Option<u64>,
    pub size: EventSize,
    pub seed: u64,
}

/// The call generator.
pub struct Traffic {
    cfg: TrafficConfig,
    rng: Rng,
    ids: Rng,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    calls: HashMap<u64, Call>,
    next_call_at: u64,
    next_id: u64,
    calls_started: u64,
    session_id: u64,
    started_us: i64,
}

impl Traffic {
    pub fn new(cfg: TrafficConfig) -> Traffic {
        let rng = Rng::new(cfg.seed);
        Traffic {
            cfg,
            rng,
            ids: Rng::from_entropy(),
            heap: BinaryHeap::new(),
            calls: HashMap::new(),
            next_call_at: 0,
            next_id: 0,
            calls_started: 0,
            session_id: 1,
            started_us: now_us(),
        }
    }

    pub fn calls_started(&self) -> u64 {
        self.calls_started
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    fn may_start_call(&self) -> bool {
        self.cfg.calls.is_none_or(|max| self.calls_started < max) && self.cfg.cps > 0.0
    }

    /// Virtual time of the next event, `None` when the traffic is over (`calls` reached).
    pub fn next_due(&self) -> Option<u64> {
        let step = self.heap.peek().map(|Reverse((at, _))| *at);
        let start = self.may_start_call().then_some(self.next_call_at);
        match (step, start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event in virtual-time order (its sequence is set by the caller).
    pub fn next_event(&mut self) -> Option<SimEvent> {
        loop {
            let step_at = self.heap.peek().map(|Reverse((at, _))| *at);
            if self.may_start_call() && step_at.is_none_or(|at| self.next_call_at <= at) {
                self.start_call();
                continue;
            }
            let Reverse((at, id)) = self.heap.pop()?;
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            let Some((_, what)) = call.steps.pop_front() else {
                self.calls.remove(&id);
                continue;
            };
            let event = call.event(what, &mut self.ids);
            match call.steps.front() {
                Some((delay, _)) => self.heap.push(Reverse((at + delay, id))),
                None => {
                    self.calls.remove(&id);
                }
            }
            return Some(event);
        }
    }

    fn start_call(&mut self) {
        let at = self.next_call_at;
        // Poisson arrivals at `cps`.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let gap = -(1.0 - u).ln() / self.cfg.cps * 1e6;
        self.next_call_at = at + gap.clamp(1.0, 60e6) as u64;
        self.calls_started += 1;
        if self.rng.chance(25) {
            let register = Call::register(&mut self.ids);
            self.schedule(at, register);
        }
        let call = self.new_call();
        self.schedule(at, call);
    }

    fn schedule(&mut self, at: u64, call: Call) {
        let id = self.next_id;
        self.next_id += 1;
        let first = call.steps.front().map(|(d, _)| *d).unwrap_or(0);
        self.heap.push(Reverse((at + first, id)));
        self.calls.insert(id, call);
    }

    fn new_call(&mut self) -> Call {
        let kind = Kind::pick(&mut self.rng);
        let caller = *self.rng.pick(CALLERS);
        let a_uuid = self.ids.uuid_v4();
        let b_uuid = self.ids.uuid_v4();
        let now = now_us();
        let dest = kind.destination();
        let mut legs = Vec::with_capacity(2);
        for (i, (uuid, other)) in [(&a_uuid, &b_uuid), (&b_uuid, &a_uuid)].into_iter().enumerate() {
            let outbound = i == 0;
            let channel_name = format!("loopback/{dest}-{}", if outbound { 'a' } else { 'b' });
            self.session_id += 1;
            legs.push(Leg::new(uuid.clone(), other.clone(), channel_name, outbound, self.session_id, now));
        }
        let job_arg = format!(
            "{{origination_uuid={a_uuid},origination_caller_id_number={},origination_caller_id_name='{}'}}loopback/{dest}/esl &park",
            caller.1, caller.0
        );
        let mut call = Call {
            kind,
            size: self.cfg.size,
            legs,
            steps: VecDeque::new(),
            job_uuid: self.ids.uuid_v4(),
            job_arg,
            caller,
            unicode_vars: self.rng.chance(30),
            array_header: self.rng.chance(20),
            sip_vars: self.rng.chance(35),
            cause: "NORMAL_CLEARING",
            conf_uuid: self.ids.uuid_v4(),
        };
        call.script(&mut self.rng);
        for leg in 0..2 {
            call.rebuild_blocks(leg);
        }
        call
    }

    /// Uptime since the generator started, for HEARTBEAT and `api status`.
    pub fn uptime_us(&self) -> i64 {
        now_us() - self.started_us
    }
}

/// Channel-State-Number of a `CS_*` state.
fn state_number(state: &str) -> u64 {
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

fn q850(cause: &str) -> &'static str {
    match cause {
        "USER_BUSY" => "17",
        "NO_ANSWER" => "19",
        "CALL_REJECTED" => "21",
        _ => "16",
    }
}

impl Leg {
    fn new(uuid: String, other_uuid: String, channel_name: String, outbound: bool, session_id: u64, now: i64) -> Leg {
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

    fn direction(&self) -> &'static str {
        if self.outbound {
            "outbound"
        } else {
            "inbound"
        }
    }
}

const CALLING_STATE: Calling = ("switch_channel.c", "switch_channel_perform_set_running_state", 2409);

impl Call {
    fn register(ids: &mut Rng) -> Call {
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
    fn script(&mut self, rng: &mut Rng) {
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
    fn event(&mut self, what: What, ids: &mut Rng) -> SimEvent {
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
    fn leg_event(
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

    fn codec_event(&self, l: usize) -> SimEvent {
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

    fn callstate_event(&mut self, l: usize, call_state: &'static str) -> SimEvent {
        let original = std::mem::replace(&mut self.legs[l].call_state, call_state);
        let pre = vec![
            Item::H("Original-Channel-Call-State", Val::Static(original)),
            Item::H("Channel-Call-State-Number", Val::Num(call_state_number(call_state))),
        ];
        let calling = ("switch_channel.c", "switch_channel_perform_set_callstate", 302);
        self.leg_event("CHANNEL_CALLSTATE", calling, l, pre, false, Vec::new())
    }

    fn answer_event(&mut self, l: usize) -> SimEvent {
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

    fn hangup_event(&mut self, l: usize, cause: &'static str) -> SimEvent {
        let leg = &mut self.legs[l];
        leg.answer_state = "hangup";
        leg.hangup_cause = Some(cause);
        leg.hangup_us = now_us();
        self.rebuild_blocks(l);
        let calling = ("switch_channel.c", "switch_channel_perform_hangup", 3447);
        self.leg_event("CHANNEL_HANGUP", calling, l, Vec::new(), true, Vec::new())
    }

    fn playback_event(&self, l: usize, stop: bool) -> SimEvent {
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

    fn app_items(&self, l: usize, app: App, complete: bool) -> Vec<Item> {
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

    fn conference_event(&self, l: usize, action: &'static str) -> SimEvent {
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

    fn api_event(&self) -> SimEvent {
        let items = vec![
            Item::H("API-Command", Val::Static("originate")),
            Item::H("API-Command-Argument", Val::Owned(self.job_arg.clone())),
        ];
        let calling = ("switch_loadable_module.c", "switch_api_execute", 2954);
        SimEvent { name: "API", subclass: None, calling, sequence: 0, items, body: None, traffic: true }
    }

    fn bgjob_event(&self) -> SimEvent {
        let body = match self.kind {
            Kind::Busy | Kind::NoAnswer => format!("-ERR {}\n", self.cause),
            _ => format!("+OK {}\n", self.legs[0].uuid),
        };
        let mut ev = background_job(&self.job_uuid, "originate", &self.job_arg, body);
        ev.traffic = true;
        ev
    }

    /// Rebuilds the shared header blocks of leg `l` from its current state.
    fn rebuild_blocks(&mut self, l: usize) {
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

    fn caller_pairs(&self, leg: &Leg) -> Vec<(&'static str, String)> {
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

    fn var_pairs(&self, leg: &Leg) -> Vec<(&'static str, String)> {
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

    fn cdr_vars(&self, leg: &Leg, v: &mut Vec<(&'static str, String)>) {
        let cause = leg.hangup_cause.unwrap_or("NORMAL_CLEARING");
        let start = leg.created_us;
        let answer = leg.answered_us;
        let end = leg.hangup_us;
        let bill = if answer > 0 { end - answer } else { 0 };
        let stamp = |us: i64| {
            if us > 0 {
                super::wire::format_dates(us / 1_000_000).0
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
fn sip_vars(leg: &Leg, v: &mut Vec<(&'static str, String)>) {
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

fn call_state_number(call_state: &str) -> u64 {
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
fn register_event(ids: &mut Rng) -> SimEvent {
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

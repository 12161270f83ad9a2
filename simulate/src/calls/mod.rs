//! Call traffic: interleaved two-leg call lifecycles, modelled on the loopback calls of
//! `esl-captures/plain.esl`, plus the events around them (the `API` / `BACKGROUND_JOB` pair of
//! the `bgapi originate` that starts each call, `sofia::register` and `conference::maintenance`
//! CUSTOM events, heartbeats).
//!
//! Calls run on a virtual clock in microseconds: each call is a script of steps with delays, and a
//! heap hands out the next step of whichever call is due first, so events of one call stay in
//! order while calls interleave. The driver decides how virtual time maps to real time.
//!
//! This file is the traffic: the calls' types and the scheduler ([`Traffic`]). Each call's
//! script and the events its steps become are in `script`; the headers those events carry
//! (caller, channel variables, SIP, CDR) and the non-call events are in `headers`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use super::wire::{Block, Calling, Item, Rng, SimEvent, Val};
use eslstream::envelope::now_us;

mod headers;
mod script;

pub use headers::{background_job, heartbeat, uptime_text};

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

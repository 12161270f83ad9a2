//! What goes where: which events the agent subscribes to, and which stream each event is
//! written to (`EVENTS_TO_PUBLISH` → jobs stream, `EVENTS_TO_PUSH` → events stream).

use std::sync::Arc;

use crate::envelope::StreamTarget;
use crate::esl::event::EventMeta;

/// A set of event names as configured: `ALL`, plain names, `CUSTOM` (every subclass) and
/// `CUSTOM::<subclass>`.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventSet {
    all: bool,
    any_custom: bool,
    names: Vec<String>,
    subclasses: Vec<String>,
}

impl EventSet {
    pub(crate) fn new(list: &[String]) -> EventSet {
        let mut set = EventSet::default();
        for item in list {
            match item.as_str() {
                "ALL" => set.all = true,
                "CUSTOM" => set.any_custom = true,
                other => match other.strip_prefix("CUSTOM::") {
                    Some(sub) => set.subclasses.push(sub.to_owned()),
                    None => set.names.push(other.to_owned()),
                },
            }
        }
        set
    }

    /// Whether an event with this name (and subclass, for CUSTOM) is in the set.
    pub(crate) fn contains(&self, name: &str, subclass: &str) -> bool {
        if self.all {
            return true;
        }
        if name == "CUSTOM" {
            self.any_custom || self.subclasses.iter().any(|s| s == subclass)
        } else {
            self.names.iter().any(|n| n == name)
        }
    }
}

/// Routes events to streams and builds the subscription command.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    publish: EventSet,
    push: EventSet,
    subscription: String,
    /// `STREAM_EVENTS` and `STREAM_JOBS`.
    events: Arc<StreamTarget>,
    jobs: Arc<StreamTarget>,
}

impl Router {
    pub(crate) fn new(
        publish: &[String],
        push: &[String],
        events: Arc<StreamTarget>,
        jobs: Arc<StreamTarget>,
    ) -> Router {
        Router {
            publish: EventSet::new(publish),
            push: EventSet::new(push),
            subscription: subscription(publish, push),
            events,
            jobs,
        }
    }

    /// The stream an event belongs to, or `None` when it is not written.
    pub(crate) fn route(&self, meta: &EventMeta) -> Option<&Arc<StreamTarget>> {
        let is_job = self.publish.contains(&meta.name, &meta.subclass)
            && (meta.name != "BACKGROUND_JOB" || meta.calling_function == "api_exec");
        if is_job {
            Some(&self.jobs)
        } else if self.push.contains(&meta.name, &meta.subclass) {
            Some(&self.events)
        } else {
            None
        }
    }

    /// The event names to put after `event plain` (without the command word).
    pub(crate) fn subscription(&self) -> &str {
        &self.subscription
    }
}

/// The union of both lists in FreeSWITCH's syntax: plain names, then `CUSTOM` and its
/// subclasses last. `HEARTBEAT` is always included for liveness. A bare `CUSTOM` (or `ALL`)
/// subscribes to `ALL`, because FreeSWITCH hands a subclassed event only to a listener that
/// names its subclass or `ALL`; events are then filtered locally by [`Router::route`].
fn subscription(publish: &[String], push: &[String]) -> String {
    let items: Vec<&String> = publish.iter().chain(push).collect();
    if items.iter().any(|i| *i == "ALL" || *i == "CUSTOM") {
        return "ALL".to_owned();
    }
    let mut names: Vec<&str> = vec!["HEARTBEAT"];
    let mut subclasses: Vec<&str> = Vec::new();
    for item in items {
        match item.strip_prefix("CUSTOM::") {
            Some(sub) if !subclasses.contains(&sub) => subclasses.push(sub),
            Some(_) => {}
            None if !names.contains(&item.as_str()) => names.push(item),
            None => {}
        }
    }
    let mut out = names.join(" ");
    if !subclasses.is_empty() {
        out.push_str(" CUSTOM ");
        out.push_str(&subclasses.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        crate::config::parse_event_list(s)
    }

    fn router(publish: &str, push: &str) -> Router {
        let events = StreamTarget::new("e", 0, "events");
        let jobs = StreamTarget::new("j", 0, "jobs");
        Router::new(&list(publish), &list(push), events, jobs)
    }

    fn route(r: &Router, name: &str, subclass: &str, func: &str) -> Option<&'static str> {
        r.route(&meta(name, subclass, func)).map(|s| s.label)
    }

    fn meta(name: &str, subclass: &str, func: &str) -> EventMeta {
        EventMeta { name: name.into(), subclass: subclass.into(), calling_function: func.into(), ..Default::default() }
    }

    #[test]
    fn subscription_puts_custom_subclasses_last() {
        let r = router("BACKGROUND_JOB, DTMF", "CUSTOM::sofia::register,CHANNEL_ANSWER, DTMF");
        assert_eq!(r.subscription(), "HEARTBEAT BACKGROUND_JOB DTMF CHANNEL_ANSWER CUSTOM sofia::register");
    }

    #[test]
    fn bare_custom_subscribes_to_all_and_filters_locally() {
        let r = router("BACKGROUND_JOB", "CHANNEL_ANSWER,CUSTOM");
        assert_eq!(r.subscription(), "ALL");
        assert_eq!(route(&r, "CUSTOM", "conference::maintenance", ""), Some("events"));
        assert_eq!(route(&r, "CHANNEL_CREATE", "", ""), None);
    }

    #[test]
    fn publish_wins_and_background_job_needs_api_exec() {
        let r = router("BACKGROUND_JOB,DTMF", "DTMF,BACKGROUND_JOB,CUSTOM::a::b");
        assert_eq!(route(&r, "DTMF", "", ""), Some("jobs"));
        assert_eq!(route(&r, "BACKGROUND_JOB", "", "api_exec"), Some("jobs"));
        assert_eq!(route(&r, "BACKGROUND_JOB", "", "other"), Some("events"));
        assert_eq!(route(&r, "CUSTOM", "a::b", ""), Some("events"));
        assert_eq!(route(&r, "CUSTOM", "c::d", ""), None);
    }
}

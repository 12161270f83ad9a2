//! The files under `deploy/` that ops teams load as they are: the Grafana dashboard (valid
//! PromQL, filtered by instance, every metric it queries exported by a live agent) and the
//! Prometheus alert rules (`promtool check rules`, `promtool test rules` with a firing and a
//! quiet case for each rule, every metric they use exported).
//!
//! Needs `redis-server` and `promtool` (`scripts/install-deps.sh` installs them); a missing
//! tool fails the test that needs it.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool() -> Command {
    let path = support::find_on_path("promtool")
        .expect("promtool not found: install Debian's `prometheus` package (scripts/install-deps.sh does)");
    Command::new(path)
}

/// Runs promtool; panics with its output unless it succeeds.
fn promtool_ok(args: &[&str], dir: &Path) -> String {
    let out = promtool().args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

/// Keywords and aggregation operators (`sum by (le) (...)`: not followed by `(` directly).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// One metric selector in a PromQL expression: the name and its `{...}` matchers (empty when
/// it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    name: String,
    matchers: String,
}

/// Every metric selector in `expr`: identifiers that are not functions (followed by `(`),
/// keywords, label names (inside `{...}` or a `by (...)`-style list), durations, numbers or
/// strings.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let closing = |from: usize, open: char, close: char| {
        // Index just past the `close` matching the `open` at `from`, strings skipped.
        let mut depth = 0;
        let mut j = from;
        while j < chars.len() {
            match chars[j] {
                '"' | '\'' | '`' => {
                    let quote = chars[j];
                    j += 1;
                    while j < chars.len() && chars[j] != quote {
                        j += if chars[j] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {open}{close} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '[' {
            i = closing(i, '[', ']');
        } else if c == '{' {
            i = closing(i, '{', '}'); // matchers of a bare `{...}` selector
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            // Numbers, durations (5m), Grafana variables ($__rate_interval)
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let followed_by = chars.get(next).copied();
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by == Some('(') {
                    i = closing(next, '(', ')');
                }
            } else if KEYWORDS.contains(&word.as_str()) || followed_by == Some('(') {
                // a keyword or a function call
            } else if followed_by == Some('{') {
                let end = closing(next, '{', '}');
                out.push(Selector { name: word, matchers: chars[next + 1..end - 1].iter().collect() });
                i = end;
            } else {
                out.push(Selector { name: word, matchers: String::new() });
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_are_read_from_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (instance, le) (rate(eslstream_total_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) / on (instance) group_left (version) eslstream_build_info or vector(0) > bool 1 unless up offset 5m"#;
    let found = selectors(expr);
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["eslstream_total_latency_seconds_bucket", "eslstream_build_info", "up"]);
    assert_eq!(found[0].matchers, r#"instance=~"$instance""#);
    assert_eq!(
        selectors(r#"sum(x{a="b,c}"}) by (le)"#),
        [Selector { name: "x".into(), matchers: r#"a="b,c}""#.into() }]
    );
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&support::repo_file("deploy/grafana/eslstream.json")).expect("the dashboard is JSON")
}

/// The dashboard's expressions, with Grafana's variables replaced by values Prometheus takes.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$instance", ".*")
}

#[test]
fn dashboard_is_importable_and_every_panel_queries_by_instance() {
    let dash = dashboard();
    assert!(dash["id"].is_null(), "no id: Grafana assigns one on import");
    assert_eq!(dash["uid"], "eslstream");
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36, "a current schema");
    let vars = dash["templating"]["list"].as_array().expect("template variables");
    let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus", "of type prometheus");
    assert_eq!(ds["name"], "DS_PROMETHEUS");
    let instance = vars.iter().find(|v| v["name"] == "instance").expect("an instance variable");
    assert_eq!(instance["datasource"]["uid"], "${DS_PROMETHEUS}");
    assert_eq!(instance["multi"], true);
    assert_eq!(instance["includeAll"], true);

    let mut ids = BTreeSet::new();
    let mut queries = 0;
    let mut rows = Vec::new();
    for panel in panels(&dash) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {panel}");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel ids are unique: {title}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().expect("x"), grid["w"].as_u64().expect("w"));
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap_or(0) > 0, "{title}: fits the 24-column grid");
        if panel["type"] == "row" {
            rows.push(title);
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: the datasource variable");
        let targets =
            panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: the datasource variable");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: {expr} queries no metric");
            for s in found {
                assert!(
                    s.matchers.contains(r#"instance=~"$instance""#),
                    "{title}: {} is not filtered by $instance",
                    s.name
                );
            }
            queries += 1;
        }
    }
    assert!(rows.len() >= 5, "{rows:?}");
    println!("{} panels, {queries} queries, rows: {rows:?}", ids.len() - rows.len());
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses rule files: each query becomes a recording rule.
    let dash = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, panel) in panels(&dash).iter().enumerate() {
        for (j, target) in panel["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = as_promql(target["expr"].as_str().expect("expr"));
            rules.push_str(&format!(
                "      - record: dashboard:panel_{i}_{j}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("dashboard.yml"), rules).expect("write rules");
    promtool_ok(&["check", "rules", "dashboard.yml"], dir.path());
}

/// The `expr:` of every alert rule (one line each, as alerts.yml writes them).
fn alert_exprs(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = None;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_owned());
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let name = alert.clone().expect("expr after its alert");
            assert!(!expr.trim().is_empty() && expr.trim() != "|", "{name}: keep each expr on one line");
            out.push((name, expr.trim().to_owned()));
        }
    }
    out
}

#[test]
fn dashboard_and_alert_metrics_are_exported_by_a_live_agent() {
    let dash = dashboard();
    let mut names = BTreeSet::new();
    // Buckets a panel reads by their bound (`le="0.002"`): the histogram must have them.
    let mut buckets = BTreeSet::new();
    for panel in panels(&dash) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for s in selectors(target["expr"].as_str().expect("expr")) {
                if let Some((_, rest)) = s.matchers.split_once("le=\"") {
                    let bound = rest.split('"').next().unwrap_or_default().to_owned();
                    buckets.insert((s.name.clone(), bound));
                }
                names.insert(s.name);
            }
        }
    }
    for var in dash["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = var["definition"].as_str() {
            // label_values(<selector>, <label>)
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values");
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
            names.extend(selectors(selector).into_iter().map(|s| s.name));
        }
    }
    let dashboard_names = names.len();
    let alerts = support::repo_file("deploy/prometheus/alerts.yml");
    for (alert, expr) in alert_exprs(&alerts) {
        for s in selectors(&expr) {
            if s.name != "up" {
                // `up` is Prometheus' own, per target
                assert!(s.name.starts_with("eslstream_"), "{alert}: {} is not the agent's", s.name);
                names.insert(s.name);
            }
        }
    }
    assert!(dashboard_names >= 30, "the dashboard queries {dashboard_names} metrics: {names:?}");

    let mut live = support::metrics::LiveMetrics::start();
    let (missing, scrape) = live.missing(&names, Duration::from_secs(20));
    assert!(missing.is_empty(), "queried by the dashboard or the alerts but not on /metrics: {missing:?}");
    assert!(!buckets.is_empty(), "the dashboard reads the 2 ms bucket of the ingress's request time");
    for (name, bound) in &buckets {
        let bucket = format!("le=\"{bound}\"");
        assert!(
            scrape.lines().any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&bucket)),
            "the dashboard reads {name}{{{bucket}}}, which /metrics does not have"
        );
    }
    println!("{} metrics queried ({dashboard_names} by the dashboard), all exported: {names:?}", names.len());
    assert_eq!(live.agent.stop(Duration::from_secs(10)), 0);
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo_path("deploy/prometheus");
    let checked = promtool_ok(&["check", "rules", "alerts.yml"], &dir);
    println!("{checked}");
    let tested = promtool_ok(&["test", "rules", "alerts_test.yml"], &dir);
    println!("{tested}");

    // Each rule has a case where it fires and one where it stays quiet.
    let tests = support::repo_file("deploy/prometheus/alerts_test.yml");
    let alerts = alert_exprs(&support::repo_file("deploy/prometheus/alerts.yml"));
    assert!(alerts.len() >= 7, "{alerts:?}");
    for (alert, _) in &alerts {
        let cases: Vec<&str> =
            tests.split("alertname: ").skip(1).filter(|case| case.split_whitespace().next() == Some(alert)).collect();
        let quiet = cases.iter().filter(|c| c.lines().nth(1).is_some_and(|l| l.trim() == "exp_alerts: []")).count();
        let firing = cases.len() - quiet;
        assert!(quiet >= 1 && firing >= 1, "{alert}: {firing} firing and {quiet} quiet cases in alerts_test.yml");
    }
    // And the README's alert table says what each one means and what to do.
    let readme = support::repo_file("README.md");
    for (alert, _) in &alerts {
        assert!(readme.contains(&format!("| `{alert}` (")), "{alert} is not in the README's alert table");
    }
}

//! Reading one declared variable: its text (or its declared default) through a parser, an
//! error that names the variable, the value given (masked if secret) and what was expected,
//! and the effective value recorded, masked, for `check-config`. Also the value parsers and
//! the masks.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use super::vars::{Show, Var};
use super::ConfigError;

/// Reads declared variables out of a set of `NAME=value` pairs.
pub(crate) struct Reader<'a> {
    vars: &'a HashMap<String, String>,
    shown: RefCell<BTreeMap<&'static str, String>>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(vars: &'a HashMap<String, String>) -> Reader<'a> {
        Reader { vars, shown: RefCell::new(BTreeMap::new()) }
    }

    /// The value given, unless unset or blank.
    pub(crate) fn raw(&self, var: &Var) -> Option<&'a str> {
        self.set(var).filter(|s| !s.trim().is_empty())
    }

    /// The value given, even empty.
    pub(crate) fn set(&self, var: &Var) -> Option<&'a str> {
        self.vars.get(var.name).map(String::as_str)
    }

    /// Records `value` as `var`'s effective value, masked as its declaration says.
    pub(crate) fn show(&self, var: &Var, value: &str) {
        self.shown.borrow_mut().insert(var.name, masked(var, value));
    }

    /// The effective values recorded, masked.
    pub(crate) fn into_shown(self) -> BTreeMap<&'static str, String> {
        self.shown.into_inner()
    }

    /// The value given (or `default`, which must parse) through `parse`; `show` says how the
    /// result is shown.
    pub(crate) fn get_or<T>(
        &self,
        var: &Var,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
        show: impl Fn(&T) -> String,
    ) -> Result<T, ConfigError> {
        let value = match self.raw(var) {
            Some(text) => parse(text).ok_or_else(|| self.error(var, expected))?,
            None => parse(default)
                .unwrap_or_else(|| panic!("the declared default of {} ({default:?}) is not {expected}", var.name)),
        };
        self.show(var, &show(&value));
        Ok(value)
    }

    /// The value given, or the declared default, through `parse`.
    pub(crate) fn get<T: fmt::Display>(
        &self,
        var: &Var,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        self.get_or(var, var.default, expected, parse, T::to_string)
    }

    /// Text, trimmed; the declared default when unset.
    pub(crate) fn string(&self, var: &Var) -> String {
        let value = self.raw(var).map(str::trim).unwrap_or(var.default).to_owned();
        self.show(var, &value);
        value
    }

    /// Text, trimmed, when given.
    pub(crate) fn optional(&self, var: &Var) -> Option<String> {
        let value = self.raw(var).map(|s| s.trim().to_owned());
        self.show(var, value.as_deref().unwrap_or_default());
        value
    }

    pub(crate) fn flag(&self, var: &Var) -> Result<bool, ConfigError> {
        self.get(var, "true or false", parse_bool)
    }

    pub(crate) fn duration(&self, var: &Var) -> Result<Duration, ConfigError> {
        self.get_or(var, var.default, "a duration such as 250ms, 3s, 10m or 1h", parse_duration, |d| format!("{d:?}"))
    }

    pub(crate) fn positive_duration(&self, var: &Var) -> Result<Duration, ConfigError> {
        let d = self.duration(var)?;
        if d.is_zero() {
            return Err(self.error(var, "a duration greater than zero"));
        }
        Ok(d)
    }

    pub(crate) fn number<T>(&self, var: &Var, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        self.number_or(var, var.default, min, max)
    }

    pub(crate) fn number_or<T>(&self, var: &Var, default: &str, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Copy + fmt::Display,
    {
        let expected = format!("a whole number from {min} to {max}");
        let parse = |s: &str| s.trim().parse::<T>().ok().filter(|v| *v >= min && *v <= max);
        self.get_or(var, default, &expected, parse, T::to_string)
    }

    /// A size in bytes, at least `min`: `expected` names the forms, such as `512MiB`.
    pub(crate) fn bytes(&self, var: &Var, min: u64, expected: &str) -> Result<u64, ConfigError> {
        self.get(var, expected, |s| parse_bytes(s).filter(|b| *b >= min))
    }

    /// `var` holds something other than `expected`.
    pub(crate) fn error(&self, var: &Var, expected: &str) -> ConfigError {
        ConfigError {
            variable: var.name.to_owned(),
            value: masked(var, self.raw(var).unwrap_or_default()),
            expected: expected.to_owned(),
        }
    }
}

/// `value` as `var` may be shown.
fn masked(var: &Var, value: &str) -> String {
    match var.show {
        Show::Plain | Show::Ignored => value.to_owned(),
        Show::Secret => mask(value),
        Show::Url => mask_url(value),
        Show::Tokens => value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| format!("{}:********", t.split_once(':').map_or("", |(name, _)| name)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Parses a duration such as `250ms`, `3s`, `10m`, `1h` (also `1.5s`, `500us`; a bare `0`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1_000_000.0,
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a byte size: `1073741824`, `512MiB`, `1GiB`, `64KB`, `10M`.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Splits an event list: comma- or space-separated, trimmed, upper-cased except subclasses.
pub(crate) fn parse_event_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\t', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once("::") {
            Some((head, sub)) if head.eq_ignore_ascii_case("CUSTOM") => format!("CUSTOM::{sub}"),
            _ => s.to_ascii_uppercase(),
        })
        .collect()
}

/// `host:port` split into its parts (`[v6]:port` too).
pub(crate) fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `********` for a secret that is set.
pub(crate) fn mask(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        "********".into()
    }
}

/// Hides the password of a URL (`scheme://user:password@host...`) or of a libpq
/// `key=value` string (`password=...`).
pub(crate) fn mask_url(url: &str) -> String {
    if !url.contains("://") {
        return url
            .split_ascii_whitespace()
            .map(|t| if t.starts_with("password=") { "password=********" } else { t })
            .collect::<Vec<_>>()
            .join(" ");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{}{}:********{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

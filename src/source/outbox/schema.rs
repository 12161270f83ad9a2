//! The outbox table: its name, the SQL that creates it (`eslstream outbox init`), and the
//! start-up check that says exactly what is wrong with an existing one.
//!
//! Applications rely on six columns: `id bigserial primary key`, `stream text` (null: the
//! agent's `OUTBOX_STREAM`), `event_name text not null`, `ordering_key text`, `payload jsonb
//! not null`, `created_at timestamptz not null default now()`. The relay adds one of its own,
//! `published_at timestamptz` (set instead of deleting the row with `OUTBOX_KEEP=true`), and
//! needs `id`'s sequence to hand out ids one at a time (`CACHE 1`, the default: see
//! [`super::relay`] for why). A statement-level trigger `NOTIFY`s [`CHANNEL`] on every
//! insert, so the relay learns of a commit at once.

use std::fmt;

/// The channel the trigger notifies; the payload is the table's `schema.name`.
pub(crate) const CHANNEL: &str = "eslstream_outbox";
/// The trigger function's (and trigger's) name.
pub(crate) const NOTIFY_FUNCTION: &str = "eslstream_outbox_notify";

/// `table` or `schema.table`: plain identifiers only (letters, digits, `_`; at most 63 bytes
/// each; not starting with a digit), so they can be quoted safely into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub(crate) fn parse(text: &str) -> Option<TableName> {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && !s.as_bytes()[0].is_ascii_digit()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let (schema, name) = match text.trim().split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, text.trim()),
        };
        if !ident(name) || !schema.is_none_or(ident) {
            return None;
        }
        Some(TableName { schema: schema.map(str::to_owned), name: name.to_owned() })
    }

    /// The table as SQL: `"schema"."name"` or `"name"`.
    pub(crate) fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// The trigger function as SQL, in the table's schema.
    fn function_sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".{NOTIFY_FUNCTION}"),
            None => NOTIFY_FUNCTION.to_owned(),
        }
    }

    /// An identifier derived from the table's name (for its index), at most 63 bytes.
    fn derived(&self, suffix: &str) -> String {
        let mut base = self.name.clone();
        base.truncate(63 - suffix.len());
        format!("\"{base}{suffix}\"")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The SQL of `eslstream outbox init`: idempotent (safe to run again), in one transaction.
/// With `keep`, also the index the relay reads unpublished rows by.
pub(crate) fn init_sql(table: &TableName, keep: bool) -> String {
    let t = table.sql();
    let f = table.function_sql();
    let schema_guard = match &table.schema {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n"),
        None => String::new(),
    };
    let keep_index = if keep {
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {t} (id) WHERE published_at IS NULL;\n",
            table.derived("_unpublished")
        )
    } else {
        String::new()
    };
    format!(
        "BEGIN;
{schema_guard}CREATE TABLE IF NOT EXISTS {t} (
    id           bigserial PRIMARY KEY,
    stream       text,
    event_name   text NOT NULL,
    ordering_key text,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
{keep_index}CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$fn$;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND tgname = '{NOTIFY_FUNCTION}') THEN
        CREATE TRIGGER {NOTIFY_FUNCTION} AFTER INSERT ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {f}();
    END IF;
END
$do$;
COMMIT;
"
    )
}

/// A column the relay needs, with its type as `format_type` names it.
const COLUMNS: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("stream", "text"),
    ("event_name", "text"),
    ("ordering_key", "text"),
    ("payload", "jsonb"),
    ("created_at", "timestamp with time zone"),
];

/// What the relay learns of a table that passed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableInfo {
    /// `schema.name`, resolved by the server's `search_path`.
    pub resolved: String,
    /// The table's oid (to find the transactions writing to it in `pg_locks`).
    pub oid: u32,
    /// The `id` column's sequence, as `pg_get_serial_sequence` names it.
    pub sequence: String,
}

/// What is wrong with an outbox table, each problem in words that say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProblems(pub Vec<String>);

impl fmt::Display for SchemaProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))?;
        f.write_str(" (`eslstream outbox init` creates what is missing; `eslstream outbox init --print` shows the SQL)")
    }
}

impl std::error::Error for SchemaProblems {}

/// What the check found.
pub(crate) type CheckResult = Result<TableInfo, SchemaProblems>;

/// Checks that `table` exists with the columns and the trigger the relay needs.
pub(crate) async fn check(
    client: &tokio_postgres::Client,
    table: &TableName,
    keep: bool,
) -> Result<CheckResult, tokio_postgres::Error> {
    let found = client
        .query_opt(
            "SELECT c.oid, n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&table.sql()],
        )
        .await?;
    let Some(row) = found else {
        let db: String = client.query_one("SELECT current_database()", &[]).await?.get(0);
        return Ok(Err(SchemaProblems(vec![format!("table {table} does not exist in database {db}")])));
    };
    let oid: u32 = row.get(0);
    let resolved = format!("{}.{}", row.get::<_, String>(1), row.get::<_, String>(2));
    let kind: String = row.get(3);
    if kind != "r" && kind != "p" {
        return Ok(Err(SchemaProblems(vec![format!("{resolved} is not a table (relkind {kind})")])));
    }
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&oid],
        )
        .await?;
    let have: Vec<(String, String)> = columns.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut problems = Vec::new();
    let keep_column = keep.then_some(("published_at", "timestamp with time zone"));
    for (name, ty) in COLUMNS.iter().copied().chain(keep_column) {
        match have.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("{resolved} has no column {name} ({ty})")),
            Some((_, t)) if t != ty => problems.push(format!("{resolved}.{name} is {t}, not {ty}")),
            Some(_) => {}
        }
    }
    let trigger = client
        .query_opt(
            "SELECT t.tgenabled::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND p.proname = $2",
            &[&oid, &NOTIFY_FUNCTION],
        )
        .await?;
    let sequence = client
        .query_one(
            "SELECT s.seq::text, q.seqcache FROM (SELECT pg_get_serial_sequence($1, 'id') AS seq) s \
             LEFT JOIN pg_sequence q ON q.seqrelid = to_regclass(s.seq)",
            &[&table.sql()],
        )
        .await?;
    let (seq, cache): (Option<String>, Option<i64>) = (sequence.get(0), sequence.get(1));
    match (&seq, cache) {
        (None, _) if have.iter().any(|(n, _)| n == "id") => {
            problems.push(format!("{resolved}.id takes no value from a sequence (declare it bigserial)"))
        }
        (Some(seq), Some(cache)) if cache != 1 => problems.push(format!(
            "sequence {seq} of {resolved}.id has CACHE {cache}; the relay needs CACHE 1 (ALTER SEQUENCE {seq} CACHE 1)"
        )),
        _ => {}
    }
    match trigger {
        None => problems.push(format!(
            "{resolved} has no {NOTIFY_FUNCTION} trigger (without it the relay only polls every OUTBOX_POLL_INTERVAL)"
        )),
        Some(row) if row.get::<_, String>(0) == "D" => {
            problems.push(format!("the {NOTIFY_FUNCTION} trigger on {resolved} is disabled"))
        }
        Some(_) => {}
    }
    Ok(match (problems.is_empty(), seq) {
        (true, Some(sequence)) => Ok(TableInfo { resolved, oid, sequence }),
        _ => Err(SchemaProblems(problems)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        let t = TableName::parse("app.outbox").unwrap();
        assert_eq!(
            (t.schema.as_deref(), t.name.as_str(), t.sql()),
            (Some("app"), "outbox", "\"app\".\"outbox\"".into())
        );
        assert_eq!(TableName::parse("eslstream_outbox").unwrap().sql(), "\"eslstream_outbox\"");
        for bad in ["", ".", "a.", ".a", "a.b.c", "1abc", "a-b", "a\"b", "a;drop", &"x".repeat(64), "é"] {
            assert!(TableName::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn init_sql_names_the_table_everywhere_and_only_indexes_when_keeping() {
        let t = TableName::parse("app.outbox").unwrap();
        let sql = init_sql(&t, false);
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"app\".\"outbox\""));
        assert!(
            sql.contains("ON \"app\".\"outbox\" FOR EACH STATEMENT EXECUTE FUNCTION \"app\".eslstream_outbox_notify()")
        );
        assert!(!sql.contains("INDEX"));
        assert!(init_sql(&t, true).contains("CREATE INDEX IF NOT EXISTS \"outbox_unpublished\""));
    }

    proptest! {
        #[test]
        fn any_accepted_name_quotes_without_escaping(text in "\\PC{0,80}") {
            if let Some(t) = TableName::parse(&text) {
                let sql = t.sql();
                prop_assert_eq!(sql.matches('"').count(), if t.schema.is_some() { 4 } else { 2 });
                prop_assert!(!sql.contains(';') && !sql.contains('\'') && !sql.contains('$'));
            }
        }
    }
}

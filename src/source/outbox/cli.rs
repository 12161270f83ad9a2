//! `eslstream outbox init [--print]`: creates the outbox table, its trigger and function (or
//! prints the SQL for a DBA), idempotently, from `OUTBOX_DATABASE_URL`, `OUTBOX_TABLE` and
//! `OUTBOX_KEEP`.

use clap::{Args, Subcommand};

use crate::config::{parse_bool, Config};
use crate::source::outbox::connect::{describe, ConnectTarget};
use crate::source::outbox::schema::{self, TableName};

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create the outbox table, its trigger and trigger function (safe to run again).
    Init {
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
}

/// Runs the command; the process's exit code (0 done, 1 the database failed, 2 configuration).
pub fn run(args: &OutboxArgs, config: &Config) -> u8 {
    let OutboxCommand::Init { print } = args.command;
    // `--print` needs no database: the table and OUTBOX_KEEP may come from the environment alone.
    let (table_text, keep) = match &config.outbox {
        Some(o) => (o.table.clone(), o.keep),
        None => (
            std::env::var("OUTBOX_TABLE").unwrap_or_else(|_| "eslstream_outbox".into()),
            std::env::var("OUTBOX_KEEP").ok().and_then(|v| parse_bool(&v)).unwrap_or(false),
        ),
    };
    let Some(table) = TableName::parse(&table_text) else {
        eprintln!(
            "eslstream outbox: OUTBOX_TABLE={table_text:?} is not a table name such as eslstream_outbox or app.outbox"
        );
        return 2;
    };
    let sql = schema::init_sql(&table, keep);
    if print {
        print!("{sql}");
        return 0;
    }
    let Some(outbox) = &config.outbox else {
        eprintln!("eslstream outbox: OUTBOX_DATABASE_URL is not set (or use --print for the SQL)");
        return 2;
    };
    let target = match ConnectTarget::parse(&outbox.database_url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("eslstream outbox: OUTBOX_DATABASE_URL: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eslstream outbox: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        let session = match target.connect().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("eslstream outbox: cannot connect: {e}");
                return 1;
            }
        };
        if let Err(e) = session.client.batch_execute(&sql).await {
            eprintln!("eslstream outbox: init failed: {}", describe(&e));
            return 1;
        }
        match schema::check(&session.client, &table, keep).await {
            Ok(Ok(info)) => {
                println!(
                    "outbox table {} is ready (trigger {} notifies {})",
                    info.resolved,
                    schema::NOTIFY_FUNCTION,
                    schema::CHANNEL
                );
                0
            }
            Ok(Err(problems)) => {
                eprintln!("eslstream outbox: after init, {problems}");
                2
            }
            Err(e) => {
                eprintln!("eslstream outbox: cannot check the table: {}", describe(&e));
                1
            }
        }
    })
}

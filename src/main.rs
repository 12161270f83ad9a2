//! `eslstream`: the agent and its companion commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use eslstream::app::Agent;
use eslstream::config::Config;

#[derive(Parser)]
#[command(name = "eslstream", version, about = "FreeSWITCH event socket to Redis Streams, without losing an event")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// A fake FreeSWITCH event socket that plays realistic call traffic: runs the
    /// `eslstream-simulate` binary installed beside this one (`eslstream simulate --help`).
    #[command(disable_help_flag = true)]
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Load and validate the configuration, print the effective values.
    CheckConfig,
    /// Follow the streams the agent writes: one readable line per entry (or --json), with
    /// filters by call and event name; Ctrl-C to stop.
    Tail(eslstream::ops::tail::TailArgs),
    /// The PostgreSQL outbox: `outbox init` creates its table (or `--print`s the SQL).
    Outbox(eslstream::source::outbox::cli::OutboxArgs),
    /// Ask a running agent's /health (for container health checks without curl): prints the
    /// answer, exits 0 when healthy, 1 otherwise.
    Health {
        /// Defaults to http://127.0.0.1:$HEALTH_PORT/health (or the HEALTH_BIND address).
        #[arg(long)]
        url: Option<String>,
    },
}

/// `.env` (if present; the real environment wins) and the environment, checked.
fn load_config() -> Result<Config, ExitCode> {
    let _ = dotenvy::dotenv();
    eslstream::app::load_config(std::env::vars().collect()).map_err(|e| {
        eprintln!("eslstream: configuration error: {e}");
        ExitCode::from(2)
    })
}

fn run_agent() -> ExitCode {
    let config = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    eslstream::telemetry::logging::init(&config.log_level, config.log_format);
    for (name, why) in &config.ignored {
        tracing::warn!(variable = %name, "{name} is accepted for compatibility and ignored: {why}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eslstream: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let agent = match Agent::start(config) {
        Ok(agent) => agent,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(e.exit_code());
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "eslstream started");
    runtime.block_on(wait_for_signal());
    tracing::info!("signal received; shutting down");
    agent.stop();
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `eslstream simulate ...`: the simulator is its own binary, so the agent does not carry it;
/// this runs `eslstream-simulate` from this binary's directory (else from `PATH`) in place of
/// this process.
fn simulate(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name("eslstream-simulate"));
    let program = beside.filter(|p| p.is_file()).unwrap_or_else(|| "eslstream-simulate".into());
    let error = std::process::Command::new(&program).args(args).exec();
    eprintln!(
        "eslstream: cannot run {} ({error}): the simulator is the eslstream-simulate binary \
         (cargo build --release -p eslstream-simulate), installed beside eslstream",
        program.display()
    );
    ExitCode::from(1)
}

fn health_command(url: Option<String>) -> ExitCode {
    let _ = dotenvy::dotenv();
    let url = match url {
        Some(url) => Ok(url),
        None => eslstream::http::local_health_url(
            std::env::var("HEALTH_BIND").ok().as_deref(),
            std::env::var("HEALTH_PORT").ok().as_deref(),
        ),
    };
    match url.and_then(|url| eslstream::http::http_get(&url, std::time::Duration::from_secs(5))) {
        Ok((status, body)) => {
            println!("{body}");
            if status == 200 {
                ExitCode::SUCCESS
            } else {
                eprintln!("eslstream: health answered HTTP {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("eslstream health: {e}");
            ExitCode::from(1)
        }
    }
}

/// mimalloc instead of the system allocator: events are allocated by the reader and freed by
/// the writers, a pattern glibc's malloc pays for in consolidation (about 15% of the agent's
/// CPU under load, by perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_agent(),
        Command::Simulate { args } => simulate(args),
        Command::Health { url } => health_command(url),
        Command::Tail(args) => match load_config() {
            Ok(config) => ExitCode::from(eslstream::ops::tail::run(&args, &config)),
            Err(code) => code,
        },
        Command::Outbox(args) => match load_config() {
            Ok(config) => ExitCode::from(eslstream::source::outbox::cli::run(&args, &config)),
            Err(code) => code,
        },
        Command::CheckConfig => match load_config() {
            Ok(config) => {
                print!("{}", config.describe());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

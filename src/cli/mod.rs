//! The command line (SPEC §1): one file per subcommand group.
//!
//! Every command returns `Result<ExitCode, CliError>`; an error is printed as one line on
//! stderr (`gale: <what>: <why>`) and mapped to its exit code, never a backtrace.

mod blob;
mod cluster;
mod daemon;
mod health;
mod logs;
mod ops;
mod state;
mod topology;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::lifecycle::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "gale", version, about = "Storm-style node supervisor agent", propagate_version = true)]
pub struct Args {
    /// Config file [default: $GALE_CONFIG, else /etc/gale/gale.toml]
    #[arg(long, global = true, value_name = "PATH", env = "GALE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon in the foreground (systemd runs this)
    Run,
    /// Parse and validate the config; print the effective config (defaults filled) as TOML
    CheckConfig,
    /// Print, or follow, a worker's log on this host
    Logs {
        /// A port (digits only): that slot's log, under the topology that wrote it last; or a topology id: the logs of all its ports
        #[arg(value_name = "TOPOLOGY_ID|PORT")]
        target: String,
        /// Keep printing what is appended (a copy-truncate rotation is followed from the start of the file)
        #[arg(short, long)]
        follow: bool,
        /// Print the last N lines of each log
        #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
        lines: u64,
        /// The diagnostics runs' files instead: without a value, list them; with a command name, print its newest run whole; with a file name, print that file
        #[arg(long, value_name = "NAME|FILE", num_args = 0..=1, default_missing_value = "", conflicts_with = "follow")]
        diag: Option<String>,
    },
    /// The local state store
    #[command(subcommand)]
    State(StateCommand),
    /// What ZooKeeper says about the cluster
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Assignments in ZooKeeper: submit, kill, list, show
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Blobs in ZooKeeper's blobstore: put, list, rm
    #[command(subcommand)]
    Blob(BlobCommand),
    /// This host's node health checks, run here and now (works with the agent down)
    #[command(subcommand)]
    Health(HealthCommand),
    /// This host's agent: state, ZooKeeper session, slots, health, blob cache
    Status {
        /// Print the JSON document (the admin endpoint's /status) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Act on one of this host's workers (through the control socket)
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Stop every worker on this host gracefully and keep them stopped (survives agent restarts)
    Drain {
        /// Return only once no worker runs any more
        #[arg(long)]
        wait: bool,
    },
    /// Undo `gale drain`: assigned workers start again
    Undrain,
}

#[derive(Debug, Subcommand)]
pub(crate) enum HealthCommand {
    /// Run every script in health.script_dir once, print each result and time; exit 0 if healthy, 1 if not
    Check {
        /// Print one JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// Kill and relaunch the worker on PORT now (not counted as a failure)
    Restart { port: u16 },
    /// Forget PORT's earlier failures and end its backoff now
    ResetBackoff { port: u16 },
    /// Send signal SIG (QUIT, USR1, SIGUSR2, …) to the process group of the worker on PORT
    Signal {
        port: u16,
        #[arg(value_name = "SIG")]
        signal: String,
    },
    /// Run diagnostics command NAME ([diagnostics.commands]) against the worker on PORT; wait for it and say where its output is (`gale logs PORT --diag NAME` prints it)
    Diag { port: u16, name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlobCommand {
    /// Copy FILE into the store and publish it as the next version of KEY (SPEC §3.3)
    Put {
        key: String,
        file: PathBuf,
        /// An absolute directory every agent mounts at the same path, or an http(s):// base URL accepting PUT
        #[arg(long, value_name = "DIR_OR_URL")]
        store: String,
        /// How agents unpack it [default: guessed from FILE's name: .tar.gz/.tgz, .zip, else none]
        #[arg(long, value_parser = ["tar.gz", "zip"])]
        archive: Option<String>,
    },
    /// One line per blob: key, version, size, sha256 prefix, url
    List,
    /// Delete a blob's meta node; the stored copy is left in place
    Rm { key: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateCommand {
    /// Print every kept version of the local state with its keys; works with the daemon down
    Dump,
    /// Give this host's agent a new supervisor id (run with the agent stopped; docs/operations.md)
    ResetId {
        /// The new id [default: supervisor.id from the config if set, else a new UUID]
        #[arg(long, value_name = "NEW")]
        id: Option<String>,
        /// Stop the workers still running (SIGTERM, worker.shutdown_grace_secs, SIGKILL, their cgroups) and forget them
        #[arg(long, conflicts_with = "hand_over")]
        stop_workers: bool,
        /// Leave the workers running for the next agent to adopt under the new id (their cgroup parent is renamed)
        #[arg(long)]
        hand_over: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Live supervisors registered in ZooKeeper
    Supervisors {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Validate an assignment file (SPEC §3.2) and write it to ZooKeeper, creating or updating it
    Submit {
        /// The assignment, as JSON
        file: PathBuf,
        /// Replace `workers` with N free slots on live supervisors, spread across hosts
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
        auto_place: Option<u32>,
    },
    /// Delete a topology's assignment (its workers stop on every host)
    Kill { id: String },
    /// One line per topology: id, number of workers, supervisors
    List,
    /// Print a topology's assignment as pretty JSON
    Show { id: String },
}

/// A command's failure: the one-line message and the exit code it maps to.
#[derive(Debug)]
pub(crate) struct CliError {
    pub code: ExitCode,
    pub message: String,
}

impl CliError {
    pub(crate) fn new(code: ExitCode, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into() }
    }
}

impl From<config::ConfigError> for CliError {
    fn from(e: config::ConfigError) -> CliError {
        CliError::new(ExitCode::Config, e.to_string())
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn main(args: Args) -> ExitCode {
    let result = match &args.command {
        Command::Run => daemon::run(&config_path(&args)),
        Command::CheckConfig => check_config(&config_path(&args)),
        Command::Logs { target, follow, lines, diag: None } => logs::logs(&config_path(&args), target, *follow, *lines),
        Command::Logs { target, diag: Some(which), .. } => logs::diag(&config_path(&args), target, which),
        Command::State(StateCommand::Dump) => state::dump(&config_path(&args)),
        Command::State(StateCommand::ResetId { id, stop_workers, hand_over }) => {
            let leftovers = match (stop_workers, hand_over) {
                (true, _) => state::Leftovers::Stop,
                (false, true) => state::Leftovers::HandOver,
                (false, false) => state::Leftovers::Unspecified,
            };
            state::reset_id(&config_path(&args), id.as_deref(), leftovers)
        }
        Command::Cluster(ClusterCommand::Supervisors { json }) => cluster::supervisors(&config_path(&args), *json),
        Command::Topology(TopologyCommand::Submit { file, auto_place }) => {
            topology::submit(&config_path(&args), file, *auto_place)
        }
        Command::Topology(TopologyCommand::Kill { id }) => topology::kill(&config_path(&args), id),
        Command::Topology(TopologyCommand::List) => topology::list(&config_path(&args)),
        Command::Topology(TopologyCommand::Show { id }) => topology::show(&config_path(&args), id),
        Command::Blob(BlobCommand::Put { key, file, store, archive }) => {
            blob::put(&config_path(&args), key, file, store, archive.as_deref())
        }
        Command::Blob(BlobCommand::List) => blob::list(&config_path(&args)),
        Command::Blob(BlobCommand::Rm { key }) => blob::rm(&config_path(&args), key),
        Command::Health(HealthCommand::Check { json }) => health::check(&config_path(&args), *json),
        Command::Status { json } => ops::status(&config_path(&args), *json),
        Command::Worker(WorkerCommand::Restart { port }) => {
            ops::operate(&config_path(&args), crate::model::action::Operation::RestartWorker { port: *port })
        }
        Command::Worker(WorkerCommand::ResetBackoff { port }) => {
            ops::operate(&config_path(&args), crate::model::action::Operation::ResetBackoff { port: *port })
        }
        Command::Worker(WorkerCommand::Signal { port, signal }) => ops::operate(
            &config_path(&args),
            crate::model::action::Operation::SignalWorker { port: *port, signal: signal.clone() },
        ),
        Command::Worker(WorkerCommand::Diag { port, name }) => ops::operate(
            &config_path(&args),
            crate::model::action::Operation::Diag { port: *port, name: name.clone(), wait: true },
        ),
        Command::Drain { wait } => {
            ops::operate(&config_path(&args), crate::model::action::Operation::Drain { wait: *wait })
        }
        Command::Undrain => ops::operate(&config_path(&args), crate::model::action::Operation::Undrain),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gale: {}", err.message);
            err.code
        }
    }
}

fn config_path(args: &Args) -> PathBuf {
    args.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

pub(crate) fn load_config(path: &std::path::Path) -> Result<Config, CliError> {
    Ok(config::load(path)?)
}

fn check_config(path: &std::path::Path) -> Result<ExitCode, CliError> {
    let config = load_config(path)?;
    print!("{}", config.to_toml());
    Ok(ExitCode::Clean)
}

/// A ZooKeeper session for a client command, authenticated like the daemon (with auth on,
/// the agents' parent nodes only let that identity create).
pub(crate) async fn connect(config: &Config) -> Result<crate::cluster::zk::ZkClient, CliError> {
    use crate::cluster::zk;
    let opts = zk::ConnectOptions::from_config(config).map_err(|e| CliError::new(ExitCode::Config, e.to_string()))?;
    zk::connect_once(&opts).await.map_err(|e| CliError::new(ExitCode::Failure, format!("cannot reach zookeeper: {e}")))
}

/// Every child of `dir` as (name, path, data), sorted by name; a child that vanishes between
/// the listing and the read is skipped.
pub(crate) async fn read_all(
    client: &crate::cluster::zk::ZkClient,
    dir: &str,
) -> Result<Vec<(String, String, Vec<u8>)>, CliError> {
    let mut names = client.children(dir).await.map_err(failure)?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = format!("{dir}/{name}");
        if let Some((data, _)) = client.get(&path).await.map_err(failure)? {
            out.push((name, path, data));
        }
    }
    Ok(out)
}

/// A ZooKeeper error in a client command: a runtime failure (exit 1).
pub(crate) fn failure(e: crate::cluster::zk::ZkError) -> CliError {
    CliError::new(ExitCode::Failure, e.to_string())
}

/// A current-thread runtime for the short-lived client commands.
pub(crate) fn client_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(ExitCode::Failure, format!("cannot start the async runtime: {e}")))
}

//! `tenthbitd`: the daemon, and its admin subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;

use tenthbit::admin::Admin;
use tenthbit::config::{self, Config};
use tenthbit::router::acl::Flag;
use tenthbit::tls::pin::format_fingerprint;
use tracing::{error, info};

// mimalloc rather than glibc malloc: the per-message path allocates small,
// short-lived buffers, where glibc spent about a quarter of the server's CPU
// (consolidation, heap growth) in profiles of `tenthbit bench pairs`, and it
// kept argon2's scratch memory as resident arenas (RSS 140-215 MB after a
// bench run, 45 MB with mimalloc). Built with `no_thp`: with transparent huge
// pages, mimalloc's purged pages came back as 2 MiB zeroing faults, a quarter
// of the CPU in the same profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's: collects the calling thread's heap; with `force`, also
    /// purges (gives back to the system) every freed page of every thread
    /// that is waiting for its purge delay.
    fn mi_collect(force: bool);
}

/// Freed memory goes back to the system within about a second. mimalloc
/// purges a freed page after a delay, but only when some thread next does
/// an allocation that checks: runtime workers that went idle after a burst
/// of TLS handshakes kept the burst's pages for as long as they stayed idle
/// (chatbench's idle workload, alternating runs: 12.4-12.8 against 12.0 KiB
/// per connection). A purge delay of 0 gave 11.7, but it also purged the
/// pages busy connections use again at once, each then a page fault
/// (fanout: 16 K faults a run against 8 K). One forced collect a second
/// costs a busy server nothing it would notice.
fn purge_freed_memory_every_second() {
    let spawned = std::thread::Builder::new()
        .name("tenthbit-purge".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: no arguments to check and no state of ours
                // involved; mimalloc is the global allocator.
                unsafe { mi_collect(true) };
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to give freed memory back; going on without");
    }
}

/// The Tenthbit chat daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); without it the embedded defaults are used.
    #[arg(long, short, global = true, env = "TENTHBIT_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (repeatable); replaces `server.listen`.
    #[arg(long, global = true)]
    listen: Vec<SocketAddr>,
    /// Server name users see; replaces `server.name`.
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// PEM certificate chain; replaces `tls.cert_file`.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// PEM private key; replaces `tls.key_file`.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// State directory; replaces `server.data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log level or filter; replaces `log.level` (RUST_LOG still wins).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and exit (non-zero, naming the bad key, if invalid).
    CheckConfig,
    /// Print the embedded default configuration.
    Config,
    /// Manage accounts (works while the daemon runs).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage the server's ACL: who administers the server.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Inspect the mesh of nodes this node belongs to.
    #[command(subcommand)]
    Mesh(MeshCommand),
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// This node's version vector, state digest and links (from the running
    /// daemon; from the store alone when it is not running).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print this node's mesh certificate fingerprint (what its peers pin),
    /// generating the certificate first if it is missing and allowed.
    Fingerprint,
}

/// Passwords come from $TENTHBIT_PASSWORD, a prompt on a terminal, or the
/// first line of standard input; never from the command line.
#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Create an account.
    Add {
        /// Account name.
        name: String,
    },
    /// Set an account's password.
    Passwd {
        /// Account name.
        name: String,
    },
    /// Delete an account; its name stays reserved.
    Del {
        /// Account name.
        name: String,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Grant a server flag, `admin` (administer the server) or `create`
    /// (create topics), to an account name or to `*` (everyone).
    Grant {
        /// Account name, or `*`.
        subject: String,
        /// `admin` or `create`.
        #[arg(default_value = "admin")]
        flag: String,
    },
    /// Revoke a server flag.
    Revoke {
        /// Account name, or `*`.
        subject: String,
        /// `admin` or `create`.
        #[arg(default_value = "admin")]
        flag: String,
    },
    /// Show the server's ACL.
    Show,
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::from_toml(config::DEFAULT_TOML)?,
    };
    if !cli.listen.is_empty() {
        config.server.listen.clone_from(&cli.listen);
    }
    if let Some(name) = &cli.server_name {
        config.server.name.clone_from(name);
    }
    if let Some(cert) = &cli.cert {
        config.tls.cert_file.clone_from(cert);
    }
    if let Some(key) = &cli.key {
        config.tls.key_file.clone_from(key);
    }
    if let Some(dir) = &cli.data_dir {
        config.server.data_dir.clone_from(dir);
    }
    if let Some(level) = &cli.log_level {
        config.log.level.clone_from(level);
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Config) => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        Some(Command::CheckConfig) => check_config(&cli),
        Some(Command::Account(ref cmd)) => account(&cli, cmd),
        Some(Command::Admin(ref cmd)) => admin(&cli, cmd),
        Some(Command::Mesh(MeshCommand::Status { json })) => mesh_status(&cli, json),
        Some(Command::Mesh(MeshCommand::Fingerprint)) => mesh_fingerprint(&cli),
        Some(Command::Run) | None => {
            purge_freed_memory_every_second();
            run(&cli)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenthbitd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn account(cli: &Cli, cmd: &AccountCommand) -> Result<()> {
    let config = load_config(cli)?;
    match cmd {
        AccountCommand::Add { name } => {
            // The one command that may come before the daemon's first start.
            let password = read_password(true)?;
            let (mut admin, created) = Admin::create(&config)?;
            if created {
                eprintln!(
                    "tenthbitd: no store at {}: created a new one",
                    config.server.data_dir.display()
                );
            }
            let account = admin.add(name, &password)?;
            println!("created account {} ({})", account.name, account.id);
        }
        AccountCommand::Passwd { name } => {
            let mut admin = Admin::open(&config)?;
            let password = read_password(true)?;
            admin.passwd(name, &password)?;
            println!("password changed for {name}");
        }
        AccountCommand::Del { name } => {
            Admin::open(&config)?.delete(name)?;
            println!("deleted account {name}");
        }
        AccountCommand::List => {
            for (a, server_flags) in Admin::open(&config)?.list()? {
                let mut flags: Vec<&str> = server_flags.iter().map(|f| f.as_str()).collect();
                if a.disabled {
                    flags.push("disabled");
                }
                if a.deleted {
                    flags.push("deleted");
                }
                println!("{}\t{}\t{}", a.name, a.id, flags.join(","));
            }
        }
    }
    Ok(())
}

fn admin(cli: &Cli, cmd: &AdminCommand) -> Result<()> {
    let config = load_config(cli)?;
    let mut admin = Admin::open(&config)?;
    let names = |flags: &[Flag]| {
        flags
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    match cmd {
        AdminCommand::Grant { subject, flag } => {
            admin.set_server_flag(subject, flag, true)?;
            println!("granted {flag} to {subject}");
        }
        AdminCommand::Revoke { subject, flag } => {
            admin.set_server_flag(subject, flag, false)?;
            println!("revoked {flag} from {subject}");
        }
        AdminCommand::Show => {
            println!("*\t{}", names(&admin.everyone_flags()?));
            for (a, flags) in admin.list()? {
                if !flags.is_empty() && !a.deleted {
                    println!("{}\t{}", a.name, names(&flags));
                }
            }
        }
    }
    Ok(())
}

fn mesh_fingerprint(cli: &Cli) -> Result<()> {
    let config = load_config(cli)?;
    let m = &config.mesh;
    let id = tenthbit::tls::load_identity(
        &m.cert_file,
        &m.key_file,
        config.tls.self_signed,
        &config.server.node,
    )
    .map_err(|e| e.missing_cert_fix(tenthbit::mesh::MISSING_CERT_FIX))?;
    println!("{}", format_fingerprint(&id.fingerprint));
    Ok(())
}

fn mesh_status(cli: &Cli, json: bool) -> Result<()> {
    let config = load_config(cli)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(tenthbit::mesh::status::query(&config.server.data_dir)) {
        Ok(status) if json => println!("{}", serde_json::to_string_pretty(&status)?),
        Ok(status) => print!("{}", tenthbit::mesh::status::render(&status)),
        Err(e) => {
            // Not running (or the mesh is off): what the store alone says.
            let admin = Admin::open(&config)?;
            let (vv, digest) = admin.replica_state()?;
            if json {
                let v = serde_json::json!({"node": config.server.node, "running": false, "vv": vv, "digest": digest});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("node {} (daemon not answering: {e})", config.server.node);
                println!("state digest {digest}");
                println!("version vector:");
                for (origin, seq) in &vv.0 {
                    println!("  {origin:<40} {seq}");
                }
            }
        }
    }
    Ok(())
}

fn read_password(confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var("TENTHBIT_PASSWORD") {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ").context("reading the password")?;
        if confirm {
            let again = rpassword::prompt_password("again: ").context("reading the password")?;
            if again != first {
                anyhow::bail!("the passwords differ");
            }
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn check_config(cli: &Cli) -> Result<()> {
    let config = load_config(cli)?;
    let (cert, key) = (&config.tls.cert_file, &config.tls.key_file);
    if cert.exists() || key.exists() || !config.tls.self_signed {
        // Load (never generate) the pair, so a bad file fails here, not at start.
        let mut tls = config.tls.clone();
        tls.self_signed = false;
        tenthbit::tls::server_config(&tls, &config.server.name, config.web.enabled)?;
    }
    println!("configuration ok");
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    let config = load_config(cli)?;
    tenthbit::telemetry::init(&config.log.level).map_err(anyhow::Error::msg)?;
    // One descriptor per connection: use what the hard limit allows.
    let fds = tenthbit::procfs::raise_fd_limit();
    tracing::debug!(open_files = fds, "open-file limit");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads (mesh dials' name lookups, file work) end after
        // a second idle, not tokio's ten: what a burst starts, with stacks
        // and allocator heaps, goes soon. Password hashes have threads of
        // their own (`password.rs`).
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<()> {
    let server = match tenthbit::start(config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start");
            return Err(e.into());
        }
    };
    let fingerprint = format_fingerprint(&server.fingerprint());
    info!(sha256 = %fingerprint, file = %config.tls.cert_file.display(), "certificate");
    for addr in server.local_addrs() {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let target = if addr.is_ipv6() && !addr.ip().is_unspecified() {
            format!("[{host}]:{}", addr.port())
        } else {
            format!("{host}:{}", addr.port())
        };
        info!(command = %format!("openssl s_client -connect {target} -quiet"), "connect with");
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let stop = server.shutdown_token();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    info!(signal, "shutdown requested");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    server.wait().await;
    Ok(())
}

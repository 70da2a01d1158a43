//! `tenthbit`: the client. For now it connects, sends each line typed on
//! stdin as it is, and prints every packet the server sends.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tenthbit::client::{Client, Options};
use tenthbit::tls::pin::parse_fingerprint;
use tenthbit::tls::{Alpn, Trust};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The Tenthbit client.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect, send stdin lines as packets, print the server's packets.
    Connect {
        /// HOST[:PORT] (port 10817 by default).
        target: String,
        /// Negotiate `10bit-gzip/0.1`.
        #[arg(long)]
        gzip: bool,
        /// Trust the server whose certificate has this SHA-256 fingerprint
        /// (as tenthbitd prints it at start).
        #[arg(long, conflicts_with = "ca")]
        fingerprint: Option<String>,
        /// Trust servers whose certificate chains to the CA(s) in this PEM file.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Name to verify and send as SNI (defaults to the host).
        #[arg(long)]
        server_name: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenthbit: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenthbit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Command::Connect {
        target,
        gzip,
        fingerprint,
        ca,
        server_name,
    } = cli.command;
    let trust = match (fingerprint, ca) {
        (Some(fp), _) => Trust::Fingerprint(
            parse_fingerprint(&fp)
                .context("--fingerprint must be 64 hex digits, colons allowed")?,
        ),
        (None, Some(ca)) => Trust::CaFile(ca),
        (None, None) => bail!("say how to trust the server: --fingerprint SHA256 or --ca FILE"),
    };
    let (host, addr) = split_target(&target);
    let opts = Options {
        trust,
        alpn: if gzip {
            vec![Alpn::Gzip]
        } else {
            vec![Alpn::Plain]
        },
        server_name: server_name.unwrap_or(host),
        max_line_bytes: 16 * 1024 * 1024,
    };
    let mut client = Client::connect(&addr, &opts)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = client.recv_line() => match line? {
                Some(line) => {
                    stdout.write_all(&line).await?;
                    stdout.write_all(b"\n").await?;
                    stdout.flush().await?;
                }
                None => return Ok(()),
            },
            input = stdin.next_line(), if stdin_open => match input? {
                Some(mut text) => {
                    text.push('\n');
                    client.send_raw(text.as_bytes()).await?;
                }
                None => {
                    // End of input: close our side, print what is still
                    // coming. The server may have closed already (after a
                    // `quit`), so a failed finish is not an error.
                    stdin_open = false;
                    let _ = client.finish().await;
                }
            },
        }
    }
}

/// `host[:port]` → (host for SNI, address to dial).
fn split_target(target: &str) -> (String, String) {
    if let Some(rest) = target.strip_prefix('[') {
        if let Some((host, port)) = rest.split_once("]:") {
            return (host.to_owned(), format!("[{host}]:{port}"));
        }
        let host = rest.trim_end_matches(']');
        return (host.to_owned(), format!("[{host}]:10817"));
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host.to_owned(), format!("{host}:{port}")),
        _ => (target.to_owned(), format!("{target}:10817")),
    }
}

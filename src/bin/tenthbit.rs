//! `tenthbit`: the client. `connect` sends each line typed on stdin as it
//! is and prints every packet the server sends; `bench` measures a server.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tenthbit::client::known::{KnownServers, Trusted};
use tenthbit::client::{Client, Options};
use tenthbit::proto::Packet;
use tenthbit::tls::pin::{format_fingerprint, parse_fingerprint};
use tenthbit::tls::{Alpn, Trust};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// The same allocator as the daemon: `tenthbit bench` is a load generator
// whose receivers allocate per packet, and it should not be the bottleneck.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Tenthbit client.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach and trust a server (shared by every subcommand).
#[derive(clap::Args, Debug, Clone)]
struct ServerArgs {
    /// Trust the server whose certificate has this SHA-256 fingerprint
    /// (as tenthbitd prints it at start). Without this or --ca: trust on
    /// first use, remembered in ~/.config/tenthbit/known_servers
    /// (or $TENTHBIT_KNOWN_SERVERS).
    #[arg(long, conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust servers whose certificate chains to the CA(s) in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name to verify and send as SNI (defaults to the host).
    #[arg(long)]
    server_name: Option<String>,
    /// Negotiate `10bit-gzip/0.1`.
    #[arg(long)]
    gzip: bool,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// S subscribers on one topic, P publishers, M messages each.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per publisher.
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Messages per second per publisher (default: as fast as possible).
        #[arg(long)]
        rate: Option<u32>,
        /// Keep history on the benchmark's topic.
        #[arg(long)]
        history: bool,
    },
    /// K pairs, each on its own topic, all sending at once.
    Pairs {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Messages per sender.
        #[arg(long, default_value_t = 1_000)]
        messages: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long)]
        history: bool,
        /// Both members of a pair send and receive on one connection, as
        /// chatbench's pairs do (otherwise one sends, the other receives).
        #[arg(long)]
        both_ways: bool,
        /// Bytes per write, at least (chatbench: 16384); 0: 32 messages.
        #[arg(long, default_value_t = 0)]
        batch_bytes: usize,
    },
    /// C logged-in connections held open.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections set up at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each connection registers its own account and logs in with a
        /// password (chatbench's pattern) instead of one account's tickets.
        #[arg(long)]
        distinct: bool,
    },
    /// A storm of password logins while one user pings.
    Login {
        #[arg(long, default_value_t = 200)]
        logins: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

/// Mesh workloads: nodes of one server started in this process.
#[derive(Subcommand, Debug)]
enum MeshWorkload {
    /// Ring-5 split in two, events written on both sides, healed: time
    /// until every node holds the same state.
    Heal {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Events written on each side while split.
        #[arg(long, default_value_t = 10_000)]
        events: u64,
    },
    /// A node restarted this many events behind: catch-up speed.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the mesh: nodes started in this process on loopback (no
    /// running server needed).
    BenchMesh {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        workload: MeshWorkload,
    },
    /// Measure a running server over real TLS (see the README's Performance section).
    Bench {
        /// HOST[:PORT] (port 10817 by default).
        target: String,
        #[command(flatten)]
        server: ServerArgs,
        /// The server's pid, to report its CPU time and memory from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Other nodes of the server (a mesh, or a NATS cluster), HOST:PORT,
        /// comma-separated: receivers are spread over all nodes, senders stay
        /// on TARGET.
        #[arg(long, value_delimiter = ',')]
        spread: Vec<String>,
        /// Their pids: CPU time and memory are summed over every node.
        #[arg(long, value_delimiter = ',')]
        spread_pids: Vec<u32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Speak NATS's text protocol to a nats-server instead (fanout and
        /// pairs), for side-by-side runs.
        #[arg(long)]
        nats: bool,
        #[command(subcommand)]
        workload: Workload,
    },
    /// Send one message to a topic and exit: 0 sent, 2 could not connect,
    /// 3 login failed, 4 the server refused (its error code on stderr).
    /// The password comes from $TENTHBIT_PASSWORD or --password-file.
    Send {
        /// HOST[:PORT] (port 10817 by default).
        target: String,
        /// The topic's name or UUID (joined first if need be).
        topic: String,
        /// The message text (sent as `ex.body`).
        message: String,
        /// Account name.
        #[arg(long, short)]
        user: String,
        /// Read the password from the first line of this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// JSON lines on stdin are sent as they are; every packet the server
    /// sends is printed, one per line.
    Raw {
        /// HOST[:PORT] (port 10817 by default).
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The interactive client (line editing, history, slash commands;
    /// /help lists them). With stdin not a terminal, the same as `raw`.
    Connect {
        /// HOST[:PORT] (port 10817 by default).
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Time the message log's index of kept messages, as chatbench's pairs
    /// with history make them, on a new store (no server, no wire, no log
    /// write: the index is what bounds history on).
    BenchStore {
        /// Directory for the new store; must not hold one.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 400_000)]
        messages: u64,
        /// Topics, each with one sender.
        #[arg(long, default_value_t = 200)]
        topics: usize,
        /// Records per index transaction (the store thread's cap under
        /// load).
        #[arg(long, default_value_t = 16_384)]
        group: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time message search on a store filled directly (no server): one
    /// topic of N kept messages, Q two-word queries.
    BenchSearch {
        /// Directory of the store; filled on the first run, reused after.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 1_000)]
        queries: usize,
        /// Distinct words in the generated text.
        #[arg(long, default_value_t = 20_000)]
        vocabulary: usize,
        /// Results per page.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Index matches examined per page (`history.search_scan`).
        #[arg(long, default_value_t = 5_000)]
        scan: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("tenthbit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Raw { target, server } => {
            connect(&target, &server).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Connect { target, server } => {
            // A person at a terminal gets the interactive client; a pipe
            // gets raw JSON lines.
            if std::io::stdin().is_terminal() {
                interactive(&target, &server)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            } else {
                connect(&target, &server).await.map(|()| ExitCode::SUCCESS)
            }
        }
        Command::Send {
            target,
            topic,
            message,
            user,
            password_file,
            server,
        } => {
            send(
                &target,
                &server,
                &user,
                password_file.as_deref(),
                &topic,
                &message,
            )
            .await
        }
        Command::BenchMesh { json, workload } => {
            let report = match workload {
                MeshWorkload::Heal { runs, events } => {
                    tenthbit::bench::mesh::heal(runs, events).await?
                }
                MeshWorkload::Catchup { events } => tenthbit::bench::mesh::catchup(events).await?,
            };
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            target,
            server,
            server_pid,
            spread,
            spread_pids,
            json,
            nats,
            workload,
        } => {
            let pids = (server_pid, spread_pids);
            bench(&target, &server, pids, spread, json, nats, workload).await
        }
        .map(|()| ExitCode::SUCCESS),
        Command::BenchStore {
            dir,
            messages,
            topics,
            group,
            json,
        } => {
            if dir.join(tenthbit::store::DB_FILE).exists() {
                anyhow::bail!(
                    "{} already holds a store: give a new directory",
                    dir.display()
                );
            }
            let load = tenthbit::bench::store::KeepLoad {
                topics,
                messages,
                group,
            };
            store_bench(dir, json, move |dir| {
                tenthbit::bench::store::keep(dir, load)
            })
            .await
        }
        Command::BenchSearch {
            dir,
            messages,
            queries,
            vocabulary,
            limit,
            scan,
            json,
        } => {
            let load = tenthbit::bench::search::SearchLoad {
                messages,
                queries,
                vocabulary: vocabulary.max(1),
                limit: limit.max(1),
                scan: scan.max(1),
            };
            store_bench(dir, json, move |dir| {
                tenthbit::bench::search::search(dir, load)
            })
            .await
        }
    }
}

/// Where to connect, how to trust the server, and the connection trust on
/// first use already made (used first, so that finding out whom to trust
/// does not cost the server a connection it logs as dropped).
struct Prepared {
    addr: String,
    opts: Options,
    probe: Option<Client>,
}

impl Prepared {
    /// The connection made while deciding trust, else a new one.
    async fn client(&mut self) -> Result<Client> {
        match self.probe.take() {
            Some(c) => Ok(c),
            None => Client::connect(&self.addr, &self.opts)
                .await
                .with_context(|| format!("connecting to {}", self.addr)),
        }
    }

    /// Where to connect and how, once any probe connection is closed cleanly.
    async fn into_options(mut self) -> (String, Options) {
        if let Some(c) = self.probe.take() {
            c.close(std::time::Duration::from_secs(5)).await;
        }
        (self.addr, self.opts)
    }
}

/// Where to connect and how to trust the server. Without `--fingerprint`
/// or `--ca`, trust on first use: the certificate remembered for the server
/// in the known-servers file, or on first contact whatever it presents (which
/// is then remembered, and said on stderr).
async fn options(target: &str, server: &ServerArgs) -> Result<Prepared> {
    let (host, addr) = split_target(target);
    let mut opts = Options {
        trust: Trust::Fingerprint([0; 32]),
        alpn: if server.gzip {
            vec![Alpn::Gzip]
        } else {
            vec![Alpn::Plain]
        },
        server_name: server.server_name.clone().unwrap_or(host),
        max_line_bytes: 16 * 1024 * 1024,
        connect_timeout: tenthbit::client::CONNECT_TIMEOUT,
        max_kept_aside_bytes: tenthbit::client::MAX_KEPT_ASIDE_BYTES,
    };
    let mut probe = None;
    opts.trust = match (&server.fingerprint, &server.ca) {
        (Some(fp), _) => Trust::Fingerprint(
            parse_fingerprint(fp).context("--fingerprint must be 64 hex digits, colons allowed")?,
        ),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => {
            let path = KnownServers::default_path().context(
                "no known-servers file: set HOME or TENTHBIT_KNOWN_SERVERS, or pass --fingerprint",
            )?;
            let known = KnownServers::at(path);
            let (client, trusted) = known.connect(&addr, &opts).await?;
            probe = Some(client);
            let fp = match trusted {
                Trusted::Known(fp) => fp,
                Trusted::FirstUse(fp) => {
                    eprintln!(
                        "tenthbit: first connection to {addr}: trusting its certificate, SHA-256 {}\n\
                         tenthbit: remembered in {}; a different certificate will be refused",
                        format_fingerprint(&fp),
                        known.path().display()
                    );
                    fp
                }
            };
            Trust::Fingerprint(fp)
        }
    };
    Ok(Prepared { addr, opts, probe })
}

async fn bench(
    target: &str,
    server: &ServerArgs,
    (server_pid, spread_pids): (Option<u32>, Vec<u32>),
    spread: Vec<String>,
    json: bool,
    nats: bool,
    workload: Workload,
) -> Result<()> {
    use tenthbit::bench;
    let (addr, options) = options(target, server).await?.into_options().await;
    let t = bench::Target {
        addr,
        options,
        server_pid,
        spread,
        spread_pids,
    };
    let report = match workload {
        Workload::Fanout {
            subscribers,
            publishers,
            messages,
            size,
            rate,
            history,
        } => {
            let load = bench::Load {
                messages,
                size,
                rate,
                history,
                batch_bytes: 0,
            };
            if nats {
                bench::nats::fanout(&t, subscribers, publishers, load).await?
            } else {
                bench::fanout(&t, subscribers, publishers, load).await?
            }
        }
        Workload::Pairs {
            pairs,
            messages,
            size,
            history,
            both_ways,
            batch_bytes,
        } => {
            let load = bench::Load {
                messages,
                size,
                rate: None,
                history,
                batch_bytes,
            };
            if nats && both_ways {
                bail!("--both-ways is for tenthbit only")
            } else if nats {
                bench::nats::pairs(&t, pairs, load).await?
            } else {
                bench::pairs(&t, pairs, load, both_ways).await?
            }
        }
        Workload::Idle { .. } | Workload::Login { .. } if nats => {
            bail!("--nats runs the fanout and pairs workloads only")
        }
        Workload::Idle {
            connections,
            concurrency,
            distinct,
        } => bench::idle(&t, connections, concurrency, distinct).await?,
        Workload::Login {
            logins,
            concurrency,
        } => bench::login(&t, logins, concurrency).await?,
    };
    print_report(&report, json)
}

/// Prints a workload's report, as text or as one line of JSON.
fn print_report(report: &tenthbit::bench::Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Runs a workload on a store in `dir` (made if missing), off the async
/// runtime, and prints its report.
async fn store_bench(
    dir: PathBuf,
    json: bool,
    run: impl FnOnce(&std::path::Path) -> Result<tenthbit::bench::Report, tenthbit::store::Error>
    + Send
    + 'static,
) -> Result<ExitCode> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let report = tokio::task::spawn_blocking(move || run(&dir)).await??;
    print_report(&report, json)?;
    Ok(ExitCode::SUCCESS)
}

async fn connect(target: &str, server: &ServerArgs) -> Result<()> {
    let mut client = options(target, server).await?.client().await?;
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

/// What the line-editor thread hands over.
enum Input {
    Line(String),
    /// A `/login` or `/register` line, and the password read for it
    /// without echo.
    WithPassword(String, String),
    End,
}

async fn interactive(target: &str, server: &ServerArgs) -> Result<()> {
    use tenthbit::client::cli::{Action, State, clock};
    let mut prepared = options(target, server).await?;
    let addr = prepared.addr.clone();
    let client = prepared.client().await?;
    let (mut rd, mut wr) = client.into_split();
    let color = std::io::stdout().is_terminal();
    let mut state = State::default();
    let paint = |line: String, code: &str| {
        if color {
            format!("\x1b[{code}m{line}\x1b[0m")
        } else {
            line
        }
    };
    // The first packet (`welcome`), then the hint, printed before the line
    // editor starts: printed through it, the two raced, and the hint could
    // land inside the welcome line or be lost.
    match rd.recv_timeout(std::time::Duration::from_secs(30)).await {
        Ok(p) => println!("{}", paint(state.render(&p, &clock(p.ts)), "0")),
        Err(e) => return Err(e).context("waiting for the server's welcome"),
    }
    println!("connected; /help lists the commands");
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let history = KnownServers::default_path().and_then(|p| p.parent().map(|d| d.join("history")));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut printer = editor
        .create_external_printer()
        .context("starting the line editor")?;
    let (tx, mut inputs) = tokio::sync::mpsc::channel::<Input>(16);
    let prompt = format!("{addr}> ");
    let editor_thread = std::thread::spawn(move || {
        loop {
            let input = match editor.readline(&prompt) {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if line.starts_with("/login ") || line.starts_with("/register ") {
                        match rpassword::prompt_password("password: ") {
                            Ok(pw) => Input::WithPassword(line, pw),
                            Err(_) => Input::End,
                        }
                    } else {
                        Input::Line(line)
                    }
                }
                Err(_) => Input::End,
            };
            // After /quit (or end of input) this thread stops reading, so the
            // terminal is restored and the program can exit at once.
            let end = match &input {
                Input::End => true,
                Input::Line(l) => matches!(l.trim(), "/quit" | "/exit"),
                Input::WithPassword(..) => false,
            };
            if tx.blocking_send(input).is_err() || end {
                break;
            }
        }
        // Appended, not saved over: several sessions at once each add their
        // own lines instead of the last to exit replacing the others'.
        if let Some(h) = &history {
            let _ = editor.append_history(h);
        }
    });
    use rustyline::ExternalPrinter as _;
    // Whether the user ended the session (the editor thread then stops by
    // itself) or the server did (the editor still waits for a line).
    let mut user_ended = false;
    loop {
        tokio::select! {
            packet = rd.recv() => match packet? {
                Some(p) => {
                    if p.op == "ping" {
                        let pong = Packet::request("pong").with("for", p.id.clone().unwrap_or_default());
                        wr.send(&pong).await?;
                        continue;
                    }
                    let line = state.render(&p, &clock(p.ts));
                    let code = match p.op.as_str() {
                        "error" | "bye" => "31",
                        "join" | "leave" | "delete" => "2",
                        _ => "0",
                    };
                    let _ = printer.print(paint(line, code));
                }
                None => break,
            },
            input = inputs.recv() => {
                let (line, password) = match input {
                    Some(Input::Line(l)) => (l, None),
                    Some(Input::WithPassword(l, pw)) => (l, Some(pw)),
                    Some(Input::End) | None => {
                        user_ended = true;
                        let _ = wr.send(&Packet::request("quit")).await;
                        break;
                    }
                };
                match state.parse(&line) {
                    Ok(Action::Send(p)) => {
                        if p.op == "join" {
                            // Plain lines go to the topic joined last.
                            state.current = None;
                        }
                        wr.send(&p).await?;
                    }
                    Ok(Action::AskPassword { op, username }) => {
                        let mut p = Packet::request(op).with("username", username);
                        if op == "auth" {
                            p = p.with("method", "password");
                        }
                        wr.send(&p.with("password", password.unwrap_or_default())).await?;
                    }
                    Ok(Action::Say(text)) if !text.is_empty() => {
                        let _ = printer.print(text);
                    }
                    Ok(Action::Say(_)) => {}
                    Ok(Action::Quit) => {
                        user_ended = true;
                        let _ = wr.send(&Packet::request("quit")).await;
                        break;
                    }
                    Err(e) => {
                        let _ = printer.print(paint(e, "33"));
                    }
                }
            }
        }
    }
    if !user_ended {
        // The server ended the session while the editor waits for a line.
        let _ = printer.print("connection closed; press Enter to leave".to_owned());
    }
    drop(inputs);
    let _ = tokio::task::spawn_blocking(move || editor_thread.join()).await;
    Ok(())
}

/// Exit codes of `tenthbit send`, for scripts.
const EXIT_CONNECT: u8 = 2;
const EXIT_LOGIN: u8 = 3;
const EXIT_REFUSED: u8 = 4;

async fn send(
    target: &str,
    server: &ServerArgs,
    user: &str,
    password_file: Option<&std::path::Path>,
    topic: &str,
    message: &str,
) -> Result<ExitCode> {
    let password = match password_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => std::env::var("TENTHBIT_PASSWORD")
            .context("set TENTHBIT_PASSWORD or pass --password-file (never the password itself)")?,
    };
    let wait = std::time::Duration::from_secs(30);
    let refused = |p: &Packet, code: u8| {
        eprintln!(
            "tenthbit: {}: {}",
            p.ex_str("code").unwrap_or("error"),
            p.ex_str("message").unwrap_or("")
        );
        Ok(ExitCode::from(code))
    };
    let connected = async {
        let mut c = options(target, server).await?.client().await?;
        c.recv_timeout(wait).await?;
        anyhow::Ok(c)
    };
    let mut c = match connected.await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tenthbit: {e:#}");
            return Ok(ExitCode::from(EXIT_CONNECT));
        }
    };
    let auth = Packet::request("auth")
        .with("method", "password")
        .with("username", user)
        .with("password", password);
    let p = c.request(auth, wait).await?;
    if p.op != "ack" {
        return refused(&p, EXIT_LOGIN);
    }
    let mut join = Packet::request("join");
    join.topic = Some(topic.to_owned());
    let p = c.request(join, wait).await?;
    if p.op != "meta" {
        return refused(&p, EXIT_REFUSED);
    }
    let mut msg = Packet::request("send").with("body", message);
    msg.topic = p.topic.clone();
    let p = c.request(msg, wait).await?;
    if p.op != "ack" {
        return refused(&p, EXIT_REFUSED);
    }
    println!("{}", p.ex_str("id").unwrap_or_default());
    let _ = c.request(Packet::request("quit"), wait).await;
    Ok(ExitCode::SUCCESS)
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

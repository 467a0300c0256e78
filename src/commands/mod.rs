//! What each subcommand does: `serve`, `check`, `certs dev`.
//!
//! Commands write their results to standard output and their logs to standard
//! error; they return an error instead of exiting, and `main` turns it into the
//! exit code.

mod approvals;
mod receipts;

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{CertsCommand, Cli, Command, KeysCommand, PolicyCommand, ServeArgs, TokenCommand};
use crate::config::{Config, ConfigError};
use crate::kernel::policy::{Policy, PolicyError, testfile};
use crate::kernel::token;
use crate::proxy::reload::{self, Reloader};
use crate::proxy::{ServeError, Server};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Certificates could not be written.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
    /// A key could not be made or read.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A token could not be issued or did not verify.
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// A policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The async runtime or standard output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Message(String),
}

/// Runs the command the command line names.
pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(&args),
        Command::Policy(PolicyCommand::Check(args)) => policy_check(&args.file),
        Command::Policy(PolicyCommand::Test(args)) => policy_test(&args.files),
        Command::Policy(PolicyCommand::Explain(args)) => policy_explain(&args),
        Command::Keys(command) => keys(command),
        Command::Token(command) => tokens(command),
        Command::Receipts(command) => receipts::run(command),
        Command::Approvals(command) => approvals::run(command),
        Command::Certs(CertsCommand::Dev(args)) => {
            let written = crate::certs::write_dev(&args.dir, args.force)?;
            let mut out = std::io::stdout().lock();
            for path in written {
                writeln!(out, "wrote {}", path.display())?;
            }
            writeln!(
                out,
                "serve with: tollgate serve --tls-cert {} --tls-key {}",
                args.dir.join(crate::certs::SERVER_CERT).display(),
                args.dir.join(crate::certs::SERVER_KEY).display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve(args: &ServeArgs) -> Result<ExitCode, CommandError> {
    let config = Config::load(args)?;
    runtime()?.block_on(async move {
        if let Some(file) = &config.file {
            tracing::info!(file = %file.display(), "configuration loaded");
        }
        let upstream = config.upstream.to_string();
        if config.govern.mode == crate::cli::Mode::Relay {
            tracing::warn!(
                "mode = relay: tool calls are NOT governed, decided or recorded; use this for measurement and debugging only"
            );
        }
        let server = Server::bind(config).await?;
        // Reloads run until shutdown begins. Both are set up before the server
        // says it listens: from then on a SIGHUP must reload, never end the
        // process (its default action), and a file change must be seen.
        let reloader = server.reloader();
        let (stop, stopping) = tokio::sync::watch::channel(());
        let until_stop = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            // Resolves when the sender is dropped.
            while rx.changed().await.is_ok() {}
        };
        let hangups = reload_on_hangup(reloader.clone(), until_stop(stopping.clone()));
        let watcher = tokio::spawn(reloader.watch(reload::POLL_INTERVAL, until_stop(stopping)));
        tracing::info!(upstream = %upstream, "listening on {}", server.url());
        server
            .run(async move {
                shutdown_signal().await;
                drop(stop);
            })
            .await;
        for task in hangups.into_iter().chain([watcher]) {
            if let Err(error) = task.await {
                tracing::warn!(%error, "policy reload task failed");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Listens for SIGHUP and, on each, reloads the policy until `stop` resolves.
/// The listener is in place when this returns; `None` if it cannot be (then
/// only a file change reloads).
#[cfg(unix)]
fn reload_on_hangup(
    reloader: Reloader,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    use crate::proxy::reload::Trigger;
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the policy reloads only when its file changes");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            tracing::info!("SIGHUP received");
            let reloader = reloader.clone();
            // The outcome is logged by the reload itself.
            let reload = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Signal));
            if let Err(error) = reload.await {
                tracing::error!(%error, "policy reload failed; keeping the previous policy");
            }
        }
    }))
}

/// No SIGHUP here: only a file change reloads.
#[cfg(not(unix))]
fn reload_on_hangup(
    _reloader: Reloader,
    _stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    None
}

fn check(args: &ServeArgs) -> Result<ExitCode, CommandError> {
    let config = Config::load(args)?;
    if let Some(files) = &config.tls {
        crate::proxy::tls::server_config(files).map_err(ServeError::from)?;
    }
    // What serve would load, without opening the receipt log or making a key.
    let govern = &config.govern;
    let policy = crate::gateway::load_policy(&govern.policy)?;
    let tools = govern
        .http_tools
        .iter()
        .cloned()
        .map(crate::tools::http::HttpTool::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::Message(format!("tools.http: {e}")))?;
    if let Some(key) = &govern.signing_key {
        crate::keys::read_signing(key)?;
    }
    for key in &govern.token_keys {
        crate::keys::read_verifying(key)?;
    }
    let mut out = std::io::stdout().lock();
    let file = config.file.as_ref().map_or_else(
        || "(none; built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    writeln!(out, "configuration OK")?;
    writeln!(out, "  config file:   {file}")?;
    writeln!(out, "  listen:        {}", config.listen)?;
    writeln!(
        out,
        "  tls:           {}",
        if config.tls.is_some() { "on" } else { "off" }
    )?;
    writeln!(out, "  upstream:      {}", config.upstream)?;
    writeln!(
        out,
        "  max body:      {} bytes",
        config.limits.max_body_bytes
    )?;
    writeln!(
        out,
        "  max headers:   {} bytes, {} headers",
        config.limits.max_header_bytes, config.limits.max_headers
    )?;
    let t = &config.timeouts;
    writeln!(
        out,
        "  timeouts:      header read {:?}, connect {:?}, first byte {:?}, idle {:?}, shutdown grace {:?}",
        t.header_read, t.connect, t.first_byte, t.idle, t.shutdown_grace
    )?;
    writeln!(
        out,
        "  policy:        {} (hash {})",
        govern.policy,
        policy.hash()
    )?;
    let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
    writeln!(out, "  mode:          {}", lower(&govern.mode))?;
    writeln!(out, "  auth:          {}", lower(&govern.auth))?;
    writeln!(out, "  receipts:      {}", govern.receipts.display())?;
    writeln!(
        out,
        "  group wait:    {} (receipts of calls in streams)",
        humantime::format_duration(govern.receipt_group_wait)
    )?;
    let names: Vec<&str> = tools.iter().map(|t| t.spec().name.as_str()).collect();
    writeln!(
        out,
        "  tools:         {}",
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(", ")
        }
    )?;
    writeln!(out, "  max rounds:    {}", govern.max_rounds)?;
    writeln!(
        out,
        "  remembers:     {} turns, {} bytes, for {}",
        govern.remember_turns,
        govern.remember_bytes,
        humantime::format_duration(govern.remember_for)
    )?;
    Ok(ExitCode::SUCCESS)
}

fn keys(command: KeysCommand) -> Result<ExitCode, CommandError> {
    let mut out = std::io::stdout().lock();
    let (key, note) = match command {
        KeysCommand::Generate { out: path, force } => {
            let key = crate::keys::generate()?;
            crate::keys::write_signing(&path, &key, force)?;
            (key, format!("wrote {}", path.display()))
        }
        KeysCommand::Public { key } => (crate::keys::read_signing(&key)?, String::new()),
    };
    if !note.is_empty() {
        writeln!(out, "{note}")?;
    }
    let public = key.verifying_key();
    writeln!(out, "key id: {}", token::key_id(&public))?;
    write!(out, "{}", crate::keys::public_pem(&public))?;
    Ok(ExitCode::SUCCESS)
}

fn tokens(command: TokenCommand) -> Result<ExitCode, CommandError> {
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Issue {
            agent,
            tools,
            ttl,
            audience,
            key,
        } => {
            let key = crate::keys::read_signing(&key)?;
            let issued = token::issue(
                &key,
                &agent,
                &tools,
                &audience,
                ttl,
                std::time::SystemTime::now(),
            )?;
            writeln!(out, "{issued}")?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Inspect {
            token: text,
            public_keys,
            audience,
        } => {
            let (claims, _, _) = token::decode_unverified(&text)?;
            let pretty = serde_json::to_string_pretty(&claims).unwrap_or_default();
            writeln!(out, "{pretty}")?;
            if public_keys.is_empty() {
                writeln!(out, "signature: not checked (no --public-key given)")?;
                return Ok(ExitCode::SUCCESS);
            }
            let keys = public_keys
                .iter()
                .map(|p| crate::keys::read_verifying(p))
                .collect::<Result<Vec<_>, _>>()?;
            let verifier = token::Verifier::new(keys, &audience);
            match verifier.verify(&text, std::time::SystemTime::now()) {
                Ok(_) => {
                    writeln!(out, "verified: yes")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    writeln!(out, "verified: no ({}: {error})", error.code())?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// A policy file, or a bundled policy by name when no such file exists.
fn load_policy(file: &str) -> Result<Policy, PolicyError> {
    let path = std::path::Path::new(file);
    if !path.exists() && crate::kernel::policy::resolve::bundled(file).is_some() {
        Policy::bundled(file)
    } else {
        Policy::load(path)
    }
}

fn policy_explain(args: &crate::cli::PolicyExplainArgs) -> Result<ExitCode, CommandError> {
    let kernel = crate::kernel::Kernel::new(load_policy(&args.file)?);
    let call = crate::kernel::Call {
        agent_id: "explain",
        scope: None,
        tool: &args.tool,
        arguments: &args.args,
        has_side_effects: args.side_effects,
    };
    let d = kernel.decide(&call, crate::kernel::Now::current());
    let mut out = std::io::stdout().lock();
    if args.json {
        let trace: Vec<serde_json::Value> = d
            .trace()
            .iter()
            .map(|t| serde_json::json!({"check": t.check, "outcome": t.outcome}))
            .collect();
        let value = serde_json::json!({
            "decision": d.outcome().as_str(),
            "code": d.code(),
            "matched_rule": d.matched_rule(),
            "message": d.message(),
            "policy_hash": d.policy_hash(),
            "parameters": d.parameters(),
            "parameters_hash": d.parameters_hash(),
            "trace": trace,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "decision:     {}", d.outcome().as_str())?;
        writeln!(out, "code:         {}", d.code())?;
        writeln!(out, "matched rule: {}", d.matched_rule().unwrap_or("-"))?;
        writeln!(out, "message:      {}", d.message())?;
        writeln!(out, "policy hash:  {}", d.policy_hash())?;
        writeln!(out, "trace:")?;
        for t in d.trace() {
            writeln!(out, "  {:<40} {}", t.check, t.outcome)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_check(file: &str) -> Result<ExitCode, CommandError> {
    let policy = load_policy(file)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "policy OK: {file}")?;
    if let Some(name) = &policy.document().name {
        writeln!(out, "  name:        {name}")?;
    }
    writeln!(out, "  policy_hash: {}", policy.hash())?;
    Ok(ExitCode::SUCCESS)
}

fn policy_test(files: &[std::path::PathBuf]) -> Result<ExitCode, CommandError> {
    let mut out = std::io::stdout().lock();
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files {
        let name = file.display().to_string();
        let results = std::fs::read_to_string(file)
            .map_err(|source| PolicyError::Read {
                path: file.clone(),
                source,
            })
            .and_then(|text| testfile::run(&text, &name));
        match results {
            Err(error) => {
                failed += 1;
                writeln!(out, "FAIL {name}: {error}")?;
            }
            Ok(cases) => {
                for case in cases {
                    match &case.failure {
                        None => {
                            passed += 1;
                            writeln!(out, "pass {name}: {}", case.description)?;
                        }
                        Some(why) => {
                            failed += 1;
                            writeln!(out, "FAIL {name}: {}: {why}", case.description)?;
                        }
                    }
                }
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server")
            }
        }
    }
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::info!("SIGINT received");
    }
}
